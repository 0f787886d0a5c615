"""Retrieval: global and ASMK indexes, search, spatial-verification reranking.

Submodules are imported on use (FAISS and ASMK are optional extras)::

    from delfi.retrieval.index import GlobalIndex
    from delfi.retrieval.asmk import ASMKIndex
    from delfi.retrieval.rerank import rerank
    from delfi.retrieval.storage import load_index
"""
