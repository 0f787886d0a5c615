"""Global-descriptor indexes: nearest database images by inner product (cosine on L2-normalised vectors).

Kinds (``GlobalIndex.KINDS``):

* ``exact``: the database as a float32 matrix; search is a chunked torch matmul + top-k, then the
  candidates are re-scored in float64, so results do not depend on the batch size and ties go to the
  lower id. Needs no FAISS. Memory N x D x 4 bytes (1M x 512: 2 GB); time linear in N (1M x 512 on
  2 CPU cores: ~9 ms per query in batches of 1000, ~130 ms for a single query). The reference.
* ``flat``: ``faiss.IndexFlatIP``: the results of ``exact`` (float32 scores, ties in FAISS order),
  the same memory. Needs ``pip install "delfi[index]"``.
* ``ivfpq``: FAISS IVF-PQ with inner product: ``nlist`` coarse k-means cells, residuals coded by a
  product quantiser of ``m`` sub-vectors x ``nbits`` bits; a search scans ``nprobe`` cells. Approximate,
  needs training (`build` does it). PQ codes alone (``refine=0``) take N x (m * nbits / 8 + 8) bytes but
  rank the close neighbours of a query only roughly, at any nprobe. ``refine > 0`` re-scores
  ``refine * k`` IVF-PQ candidates with a second copy of the vectors (`faiss.IndexRefine`) stored as
  ``refine_type``: ``"flat"`` float32 (`faiss.IndexRefineFlat`, + N x D x 4 bytes: as much memory as
  ``exact``), ``"fp16"`` (+ N x D x 2) or ``"sq8"`` 8-bit scalar quantiser (+ N x D, the default).

  Measured by ``benchmarks/retrieval_speed.py`` (1M x 512 synthetic clustered, 1000 queries, 2 CPU
  cores, nlist 1024, nprobe 32; recall@100 against ``exact``, which takes ~9 ms per query batched):

  ===============================  ===========  ============  ===========
  setting                          memory       ms per query  recall@100
  ===============================  ===========  ============  ===========
  PQ64, refine 0                   75 MB        0.75          0.73
  PQ128, refine 0                  139 MB       1.4           0.85
  PQ256, refine 0                  267 MB       3.4           0.94
  PQ64, refine 4, flat             2.1 GB       0.8           0.97
  PQ64, refine 4, fp16             1.1 GB       0.9           0.97
  PQ64, refine 4, sq8 (default)    0.59 GB      0.8           0.965
  PQ64, refine 2, sq8              0.59 GB      0.8           0.93
  ===============================  ===========  ============  ===========

  Use ``ivfpq`` from about a million images on, or when single queries must be fast (``exact``:
  ~130 ms for one query against 1M x 512); ``refine=0`` with a large ``m`` when memory is tight.
  Recall depends on the data: check it on your own descriptors against ``exact``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from delfi.retrieval.arrays import as_matrix
from delfi.retrieval.settings import IndexSettingsError, check_index_settings
from delfi.retrieval.storage import (
    IndexFormatError,
    index_file,
    read_index_meta,
    read_names,
    write_index_dir,
)

__all__ = ["GlobalIndex"]

_SCORE_BUDGET = 1 << 26  # float32 scores held per exact-search chunk (256 MB)
_REFINE = {"flat": "RFlat", "fp16": "Refine(SQfp16)", "sq8": "Refine(SQ8)"}  # refine_type -> factory


def _faiss():
    try:
        import faiss
    except ImportError as exc:
        raise ImportError('the "flat" and "ivfpq" index kinds need FAISS: pip install "delfi[index]"') from exc
    return faiss


def _ivfpq(index):
    """The IndexIVFPQ of a FAISS index: itself, or the base of an IndexRefine (owned by it)."""
    return _faiss().downcast_index(index.base_index) if hasattr(index, "base_index") else index


def _top_rows(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` columns of each row of ``s`` (B, C), sorted by (score desc, column asc)."""
    v, i = torch.topk(s, min(k + 1, s.shape[1]), dim=1)
    i = i[:, :k].contiguous()
    if v.shape[1] > k:  # the (k+1)-th equal to the k-th: a tie across the cut (duplicate vectors)
        tied = (v[:, k] == v[:, k - 1]).nonzero().squeeze(1)
        if len(tied):  # the lower columns win
            i[tied] = torch.sort(s[tied], dim=1, descending=True, stable=True).indices[:, :k]
    i = torch.sort(i, dim=1).values
    v = s.gather(1, i)
    order = torch.sort(v, dim=1, descending=True, stable=True).indices
    return v.gather(1, order), i.gather(1, order)


class GlobalIndex:
    """A searchable set of named global descriptors.

    Args:
        dim: descriptor dimension D.
        kind: ``"exact"``, ``"flat"`` or ``"ivfpq"`` (see the module docstring).
        nlist, m, nbits: IVF-PQ cells, PQ sub-vectors (must divide ``dim``) and bits per code.
        nprobe: IVF-PQ cells scanned per query (default for `search`).
        refine: IVF-PQ only; > 0 re-scores ``refine * k`` PQ candidates with a second copy of every
            vector; 0 keeps only the PQ codes (less memory, lower recall).
        refine_type: that copy: ``"flat"`` (float32, `faiss.IndexRefineFlat`, + N x D x 4 bytes),
            ``"fp16"`` (+ N x D x 2) or ``"sq8"`` (8-bit scalar quantiser, + N x D bytes).
        seed: k-means / PQ training seed.
    """

    KINDS = ("exact", "flat", "ivfpq")

    def __init__(self, dim: int, kind: str = "exact", *, nlist: int = 1024, m: int = 64, nbits: int = 8,
                 nprobe: int = 32, refine: int = 4, refine_type: str = "sq8", seed: int = 0) -> None:  # fmt: skip
        if kind not in self.KINDS:
            raise ValueError(f"unknown index kind {kind!r}; choose one of {self.KINDS}")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if kind == "ivfpq":
            check_index_settings(kind, {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": nprobe, "refine": refine,
                                        "refine_type": refine_type, "seed": seed})
            if dim % m:
                raise ValueError(f"m={m} PQ sub-vectors must divide the dimension {dim}")
        self._dim, self._kind = int(dim), kind
        self.params = {"nlist": int(nlist), "m": int(m), "nbits": int(nbits), "nprobe": int(nprobe),
                       "refine": int(refine), "refine_type": refine_type, "seed": int(seed)}  # fmt: skip
        self._names: list[str] = []
        self._name_set: set[str] = set()
        self._vectors = np.zeros((0, self._dim), np.float32)  # exact only
        self._index = None  # the FAISS index (flat, ivfpq)
        if kind == "flat":
            self._index = _faiss().IndexFlatIP(self._dim)
        elif kind == "ivfpq":
            faiss = _faiss()
            spec = f"IVF{nlist},PQ{m}x{nbits}" + (f",{_REFINE[refine_type]}" if refine else "")
            self._index = faiss.index_factory(self._dim, spec, faiss.METRIC_INNER_PRODUCT)  # most derived type
            self._base = _ivfpq(self._index)
            self._base.cp.seed = self._base.pq.cp.seed = int(seed)
            self._base.do_polysemous_training = False  # the factory's default: minutes of training, unused

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def names(self) -> list[str]:
        """Database names in id order (a copy)."""
        return list(self._names)

    @property
    def is_trained(self) -> bool:
        return self._index is None or bool(self._index.is_trained)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        extra = "" if self._kind == "exact" else f", {self.params}"
        return f"GlobalIndex(dim={self._dim}, kind={self._kind!r}, n={len(self)}{extra})"

    def memory_bytes(self) -> int:
        """Bytes held by the vectors / codes (names not counted)."""
        n, d, p = len(self), self._dim, self.params
        if self._kind != "ivfpq":
            return n * d * 4
        codes = n * (self._base.code_size + 8)  # PQ code + int64 id per vector
        tables = p["nlist"] * d * 4 + (1 << p["nbits"]) * d * 4  # coarse centroids + PQ codebooks
        refine = {"flat": 4, "fp16": 2, "sq8": 1}[p["refine_type"]] * n * d if p["refine"] else 0
        return codes + tables + refine

    @classmethod
    def build(cls, vectors: Any, names: Sequence[str], kind: str = "exact", *, train_vectors: Any = None,
              **params: Any) -> GlobalIndex:  # fmt: skip
        """An index of ``vectors`` (N, D) named ``names`` (N); IVF-PQ is trained on ``train_vectors`` or,
        when None, on a seeded random sample of ``vectors`` (at most max(64 * nlist, 65536) of them).

        Raises:
            IndexSettingsError: a setting in ``params`` unknown for ``kind`` or of a wrong type.
        """
        check_index_settings(kind, params)
        vectors = as_matrix(vectors, "vectors")
        index = cls(vectors.shape[1], kind, **params)
        if not index.is_trained:
            index.train(index.training_sample(vectors) if train_vectors is None else train_vectors)
        index.add(vectors, names)
        return index

    def training_sample(self, vectors: np.ndarray) -> np.ndarray:
        """The rows `build` trains on: all, or a seeded random max(64 * nlist, 65536) of them."""
        cap = max(64 * self.params["nlist"], 65536)
        if len(vectors) <= cap:
            return vectors
        rng = np.random.default_rng(self.params["seed"])
        return vectors[np.sort(rng.choice(len(vectors), cap, replace=False))]

    def train(self, vectors: Any) -> None:
        """Train IVF-PQ (coarse k-means and PQ codebooks) on ``vectors`` (T, D); nothing to do for the
        other kinds. Needs T >= max(nlist, 2**nbits); FAISS recommends >= 39 * nlist."""
        vectors = as_matrix(vectors, "training vectors", self._dim)
        if self._kind != "ivfpq":
            return
        need = max(self.params["nlist"], 1 << self.params["nbits"])
        if len(vectors) < need:
            raise ValueError(f"IVF-PQ with nlist={self.params['nlist']}, nbits={self.params['nbits']} needs at least "
                             f"{need} training vectors (FAISS recommends >= {39 * need}), got {len(vectors)}; use kind=exact "
                             "or flat for small databases, or lower nlist / nbits")  # fmt: skip
        self._index.train(vectors)

    def add(self, vectors: Any, names: Sequence[str]) -> None:
        """Append ``vectors`` (N, D) with their ``names`` (N, unique in the whole index); ids continue
        from ``len(self)``."""
        vectors = as_matrix(vectors, "vectors", self._dim)
        names = [str(n) for n in names]
        if len(names) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors but {len(names)} names")
        counts = Counter(names)
        dup = sorted(n for n, c in counts.items() if c > 1 or n in self._name_set)
        if dup:
            raise ValueError(f"duplicate names ({len(dup)}): {', '.join(map(repr, dup[:10]))}"
                             f"{' ...' if len(dup) > 10 else ''}")  # fmt: skip
        if not self.is_trained:
            raise ValueError("the IVF-PQ index is not trained: call train() first (or use GlobalIndex.build)")
        if self._index is None:
            self._vectors = np.concatenate([self._vectors, vectors]) if len(self._vectors) else vectors.copy()
        else:
            self._index.add(vectors)
        self._names.extend(names)
        self._name_set.update(names)

    def search(self, queries: Any, k: int, *, batch_size: int = 1024,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """The ``k`` best database vectors of each query by inner product.

        Args:
            queries: (Q, D) float32, numpy or torch.
            k: results per query; beyond ``len(self)`` the rows are padded with id -1, score -inf.
            batch_size: queries searched at once (bounds memory; results do not depend on it).
            nprobe: IVF-PQ cells to scan (default ``params["nprobe"]``, capped at nlist); ignored by
                the other kinds.

        Returns:
            scores (Q, k) float32, descending, and ids (Q, k) int64 (indexes into `names`).
            ``exact`` breaks ties by the lower id. IVF-PQ may return fewer than k results (-1 / -inf)
            when the scanned cells hold fewer vectors.
        """
        q = as_matrix(queries, "queries", self._dim)
        if int(k) < 1 or batch_size < 1:
            raise ValueError(f"k and batch_size must be positive, got k={k}, batch_size={batch_size}")
        if not self.is_trained:
            raise ValueError("the IVF-PQ index is not trained: call train() and add() before searching")
        k = int(k)
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        kk = min(k, len(self))
        if kk == 0:
            return scores, ids
        params = self._faiss_params(nprobe)
        for start in range(0, len(q), batch_size):
            batch = q[start : start + batch_size]
            if self._index is None:
                s, i = self._search_exact(batch, kk)
            else:
                s, i = self._index.search(batch, kk, params=params)
                s[i < 0] = -np.inf
            scores[start : start + len(batch), :kk], ids[start : start + len(batch), :kk] = s, i
        bad = (ids >= 0) & ~np.isfinite(scores)
        if bad.any():  # only a loaded FAISS file can hold non-finite vectors (add() refuses them)
            names = sorted({self._names[i] for i in ids[bad]})
            raise ValueError(f"the index holds non-finite vectors (for {', '.join(map(repr, names[:5]))}"
                             f"{' ...' if len(names) > 5 else ''}): rebuild it")
        return scores, ids

    def _faiss_params(self, nprobe: int | None):
        if self._kind != "ivfpq":
            return None
        faiss = _faiss()
        nprobe = self.params["nprobe"] if nprobe is None else int(nprobe)
        if nprobe < 1:
            raise ValueError(f"nprobe must be positive, got {nprobe}")
        ivf = faiss.SearchParametersIVF(nprobe=min(nprobe, self.params["nlist"]))
        if not self.params["refine"]:
            return ivf
        return faiss.IndexRefineSearchParameters(k_factor=float(self.params["refine"]), base_index_params=ivf)

    def _search_exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of (B, D) queries, 1 <= k <= N. BLAS matmul results differ in the last bits with
        the batch shape, so the matmul only selects k + margin candidates (by score, then lower id);
        these are re-scored in float64 (exact products, one fixed summation order) and sorted by
        (score desc, id asc). Equal vectors get equal scores, so ties go to the lower id."""
        x, qt = torch.from_numpy(self._vectors), torch.from_numpy(q)
        n = len(x)
        kc = min(n, k + max(16, k // 4))
        chunk = max(4096, _SCORE_BUDGET // len(q))
        best_s = best_i = None
        for start in range(0, n, chunk):
            s, i = _top_rows(qt @ x[start : start + chunk].T, min(kc, chunk, n - start))
            i += start
            if best_s is not None:  # both sorted by (score desc, id asc), new ids larger: a stable sort merges
                s, i = torch.cat([best_s, s], 1), torch.cat([best_i, i], 1)
                order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :kc]
                s, i = s.gather(1, order), i.gather(1, order)
            best_s, best_i = s, i
        cand = best_i.numpy()
        exact = np.empty(cand.shape, np.float64)
        q64 = q.astype(np.float64)
        for start in range(0, len(q), 64):  # bounded memory: 64 x kc x D float64
            rows = slice(start, start + 64)
            exact[rows] = np.einsum("bkd,bd->bk", self._vectors[cand[rows]].astype(np.float64), q64[rows])
        order = np.lexsort((cand, -exact), axis=1)[:, :k]
        return np.take_along_axis(exact, order, 1).astype(np.float32), np.take_along_axis(cand, order, 1)

    def save(self, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
        """Write the index directory (``names.txt``, ``vectors.npy`` or ``index.faiss``, ``meta.json``).

        An existing delfi index at ``path`` is replaced when ``overwrite``; anything else there is
        refused (`delfi.retrieval.storage.IndexPathError`)."""

        def write_files(tmp: Path) -> None:
            if self._index is None:
                np.save(tmp / "vectors.npy", self._vectors, allow_pickle=False)
            else:
                _faiss().write_index(self._index, str(tmp / "index.faiss"))

        config = {"metric": "inner_product", **self.params}
        return write_index_dir(path, self._kind, self._dim, self._names, config, write_files, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, *, verify: bool = True, meta: dict[str, Any] | None = None) -> GlobalIndex:
        """Read an index directory written by `save` (checksums verified unless ``verify=False``;
        ``meta``: an already read ``meta.json``).

        Raises:
            IndexFormatError: naming the file that is missing, corrupted or inconsistent.
        """
        root = Path(path)
        meta = read_index_meta(root, verify=verify) if meta is None else meta
        kind, dim, count = meta["kind"], int(meta["dim"]), int(meta["count"])
        if kind not in cls.KINDS:
            raise IndexFormatError(f"{root / 'meta.json'}: kind {kind!r} is not a global index kind {cls.KINDS}")
        params = {key: meta["config"][key] for key in ("nlist", "m", "nbits", "nprobe", "refine", "refine_type", "seed")
                  if key in meta["config"]}  # fmt: skip
        try:
            index = cls(dim, kind, **(params if kind == "ivfpq" else {}))
        except (IndexSettingsError, TypeError) as exc:
            raise IndexFormatError(f"{root / 'meta.json'}: bad config ({exc})") from None
        except ValueError as exc:
            raise IndexFormatError(f"{root / 'meta.json'}: {exc}") from None
        names = read_names(root, count)
        own = "vectors.npy" if kind == "exact" else "index.faiss"
        if own not in meta["files"]:
            raise IndexFormatError(f"{root / 'meta.json'}: 'files' does not list {own}")
        file = index_file(root, own)
        if not file.is_file():
            raise IndexFormatError(f"{file}: missing")
        if kind == "exact":
            try:
                vectors = np.load(file, allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise IndexFormatError(f"{file}: not a readable .npy file ({exc})") from None
            if vectors.dtype != np.float32 or vectors.shape != (count, dim):
                raise IndexFormatError(f"{file}: {vectors.dtype} {vectors.shape}, meta.json says float32 "
                                       f"({count}, {dim})")  # fmt: skip
            bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
            if len(bad):
                shown = ", ".join(repr(names[i]) for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
                raise IndexFormatError(f"{file}: NaN or infinite values in the vectors of {len(bad)} image(s) "
                                       f"({shown}): rebuild the index")
            index._vectors = np.ascontiguousarray(vectors)
        else:
            faiss = _faiss()
            try:
                loaded = faiss.read_index(str(file))
            except (RuntimeError, OSError) as exc:
                raise IndexFormatError(f"{file}: FAISS cannot read it ({str(exc).strip().splitlines()[-1]})") from None
            if loaded.ntotal != count or loaded.d != dim:
                raise IndexFormatError(f"{file}: {loaded.ntotal} vectors of dim {loaded.d}, meta.json says "
                                       f"{count} of dim {dim}")  # fmt: skip
            index._index = loaded  # already the most derived type; a downcast proxy would not own it
            if kind == "ivfpq":
                index._base = _ivfpq(index._index)
        index._names, index._name_set = names, set(names)
        return index
