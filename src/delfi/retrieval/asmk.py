"""ASMK (Aggregated Selective Match Kernel) over local descriptors, built on the authors' package.

ASMK (Tolias et al., ICCV 2013; the HOW / ECCV 2020 variant of Tolias, Jenicek and Chum) is a
bag-of-words image representation: a k-means codebook quantizes every local descriptor to its
nearest visual word(s); per image and word the residuals ``x - centroid`` are summed into one
vector, which is L2-normalised or (``binary``) reduced to its sign bits. Two images are compared
word by word, only on the words they share: ``sigma(s) = s**alpha if s >= threshold else 0`` of the
residual similarity ``s`` (cosine, or ``1 - 2 h`` for the normalised Hamming distance ``h`` of the
bit vectors), weighted by idf when enabled, summed and normalised by ``sqrt(sum of the word weights
of each image)``. An inverted file keeps, per word, the database images' aggregated vectors.

The codebook, kernel and inverted file are those of ``asmk`` (https://github.com/jenicek/asmk), with
two changes:

* **Hamming padding fix.** ``asmk.hamming`` packs the sign bits into uint32 words and divides the
  Hamming distance by the *padded* bit count ``P = 32 * ceil(D / 32)``. The padding bits are zero
  in every vector, so for ``D = 40`` (DELF's PCA dimension) two opposite vectors get ``h = 40/64 =
  0.625`` instead of 1, similarity -0.25 instead of -1, and the threshold and the ``alpha`` power
  act on wrong values. Our kernel divides by the true ``D`` (``h_true = h_padded * P / D``). For
  ``D`` a multiple of 32 nothing changes: the package's code path runs unmodified.
* **No pickle.** The package saves state with pickle; this index saves the centroids and the
  inverted file as ``.npy`` arrays (posting lists concatenated in word order, with offsets) and
  the settings in ``meta.json``, and loads them with ``allow_pickle=False``.

Database images without descriptors are allowed: they match nothing, score 0 and rank after every
image with the same score (with ``similarity_threshold >= 0`` scores are never negative).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from functools import cache
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from delfi.retrieval.arrays import as_matrix
from delfi.retrieval.settings import check_index_settings
from delfi.retrieval.storage import (
    IndexFormatError,
    index_file,
    read_index_meta,
    read_names,
    write_index_dir,
)

__all__ = ["ASMKIndex"]

KIND = "asmk"
_PARAMS = ("codebook_size", "binary", "alpha", "similarity_threshold", "multiple_assignment_db",
           "multiple_assignment_query", "use_idf", "seed")
_FILES = ("codebook.npy", "ivf_vecs.npy", "ivf_image_ids.npy", "ivf_offsets.npy", "ivf_idf.npy",
          "ivf_norm_factor.npy")


@cache
def _asmk() -> SimpleNamespace:
    """Import asmk / faiss on first use and define the subclasses that need them."""
    try:
        import faiss
        from asmk import codebook, functional, hamming, index, inverted_file, kernel
    except ImportError as exc:
        raise ImportError(f'ASMK needs the asmk and faiss packages: pip install "delfi[asmk]" ({exc})') from exc

    class SeededFaissL2Index(index.FaissL2Index):
        """The package's CPU k-means (10 iterations) with a fixed seed."""

        def __init__(self, seed: int):
            self.seed = int(seed)

        def cluster(self, points, k, **index_kwargs):
            flat = self._faiss_index_flat(points.shape[1], **index_kwargs)
            clus = faiss.Clustering(points.shape[1], k)
            clus.verbose = False
            clus.niter = 10
            clus.seed = self.seed
            clus.train(np.ascontiguousarray(points, dtype=np.float32), flat)
            return faiss.vector_float_to_array(clus.centroids).reshape(clus.k, clus.d)

    class TrueHammingKernel(kernel.ASMKKernel):
        """ASMKKernel whose binary similarity uses the Hamming distance normalised by the true D."""

        def __init__(self, codebook, *, binary: bool, dim: int):
            super().__init__(codebook, binary=binary)
            self.dim = int(dim)

        def similarity(self, qvec, vecs, image_ids, *, alpha, similarity_threshold):
            if not self.binary or self.dim % 32 == 0:
                return super().similarity(qvec, vecs, image_ids, alpha=alpha,
                                          similarity_threshold=similarity_threshold)
            # hamming_cdist_packed's `normalization` replaces the padded bit count 32 * n_words
            norm_hdist = hamming.hamming_cdist_packed(qvec.reshape(1, -1), vecs, float(self.dim))
            sim = -2 * norm_hdist.squeeze(0) + 1
            return functional.asmk_kernel(sim, image_ids, alpha=alpha, similarity_threshold=similarity_threshold)

    return SimpleNamespace(Codebook=codebook.Codebook, IVF=inverted_file.IVF, Kernel=TrueHammingKernel,
                           IndexFactory=SeededFaissL2Index)


class ASMKIndex:
    """An ASMK index over the local descriptors of database images (see the module docstring).

    Args:
        dim: descriptor dimension D.
        codebook_size: visual words K (k-means centroids).
        binary: binarise the aggregated residuals (Hamming similarity) instead of L2-normalising.
        alpha: similarity exponent of the selective kernel.
        similarity_threshold: residual similarities below it are dropped.
        multiple_assignment_db: nearest words per database descriptor.
        multiple_assignment_query: nearest words per query descriptor.
        use_idf: weight words by ``log(N / n_word) ** 2``.
        seed: k-means seed.

    The defaults are the ECCV 2020 HOW settings of the asmk repository
    (``examples/params/_eccv20_how.yml``): 65536 words, binary, alpha 3, threshold 0, multiple
    assignment 1 (database) / 5 (query), no idf.
    """

    def __init__(self, dim: int, *, codebook_size: int = 65536, binary: bool = True, alpha: float = 3.0,
                 similarity_threshold: float = 0.0, multiple_assignment_db: int = 1,
                 multiple_assignment_query: int = 5, use_idf: bool = False, seed: int = 0):
        check_index_settings(KIND, {"codebook_size": codebook_size, "binary": binary, "alpha": alpha,
                                    "similarity_threshold": similarity_threshold,
                                    "multiple_assignment_db": multiple_assignment_db,
                                    "multiple_assignment_query": multiple_assignment_query, "use_idf": use_idf,
                                    "seed": seed})
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        for name, ma in (("multiple_assignment_db", multiple_assignment_db),
                         ("multiple_assignment_query", multiple_assignment_query)):
            if not 1 <= int(ma) <= int(codebook_size):
                raise ValueError(f"{name} must be in [1, codebook_size={codebook_size}], got {ma}")
        self._dim = int(dim)
        self.codebook_size = int(codebook_size)
        self.binary = bool(binary)
        self.alpha = float(alpha)
        self.similarity_threshold = float(similarity_threshold)
        self.multiple_assignment_db = int(multiple_assignment_db)
        self.multiple_assignment_query = int(multiple_assignment_query)
        self.use_idf = bool(use_idf)
        self.seed = int(seed)
        self._codebook = self._kernel = self._ivf = None
        self._names: list[str] = []
        self._empty = np.zeros(0, dtype=bool)  # per database image: no descriptors

    @property
    def config(self) -> dict[str, Any]:
        """The settings (the constructor's keyword arguments)."""
        return {name: getattr(self, name) for name in _PARAMS}

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def names(self) -> list[str]:
        """Database names in id order."""
        return list(self._names)

    @property
    def is_trained(self) -> bool:
        return self._codebook is not None

    @property
    def centroids(self) -> np.ndarray:
        """The codebook, (codebook_size, dim) float32 (a copy)."""
        self._require_trained("centroids")
        return self._codebook.centroids.copy()

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"ASMKIndex(dim={self.dim}, images={len(self)}, trained={self.is_trained}, {self.config})"

    def _require_trained(self, what: str) -> None:
        if not self.is_trained:
            raise RuntimeError(f"ASMKIndex.{what}: the codebook is not trained; call train() first")

    def _set_codebook(self, centroids: np.ndarray) -> None:
        m = _asmk()
        cdb = m.Codebook(m.IndexFactory(self.seed), size=self.codebook_size)
        cdb.index(np.ascontiguousarray(centroids, dtype=np.float32))
        self._codebook = cdb
        self._kernel = m.Kernel(cdb, binary=self.binary, dim=self.dim)

    def train(self, descriptors: Any) -> None:
        """Train the codebook by k-means (FAISS, 10 iterations, ``seed``; deterministic).

        Args:
            descriptors: (N, D) sample of local descriptors, N >= codebook_size (FAISS subsamples
                to 256 per word and warns below 39 per word).
        """
        if len(self):
            raise RuntimeError("ASMKIndex.train: the index already holds images; build a new index to retrain")
        x = as_matrix(descriptors, "training descriptors", self.dim)
        if x.shape[0] < self.codebook_size:
            raise ValueError(f"training needs at least codebook_size={self.codebook_size} descriptors, "
                             f"got {x.shape[0]}")
        m = _asmk()
        centroids = m.IndexFactory(self.seed).cluster(x, self.codebook_size)
        self._set_codebook(centroids)
        self._ivf = m.IVF.initialize_empty(use_idf=self.use_idf, codebook_size=self.codebook_size)

    def add(self, descriptors_per_image: Sequence[Any], names: Sequence[str]) -> None:
        """Add database images; ids continue after the images already added.

        Args:
            descriptors_per_image: one (n_i, D) array per image (n_i may be 0).
            names: one name per image (non-empty, single line).
        """
        self._require_trained("add")
        descriptors_per_image, names = list(descriptors_per_image), [str(n) for n in names]
        if len(descriptors_per_image) != len(names):
            raise ValueError(f"got {len(descriptors_per_image)} descriptor arrays but {len(names)} names")
        mats = [as_matrix(d, f"image {n!r}", self.dim) for d, n in zip(descriptors_per_image, names)]
        for n in names:
            if not n or "\n" in n or "\r" in n:
                raise ValueError(f"index names must be non-empty and on one line, got {n!r}")
        start, counts = len(self._names), np.array([len(a) for a in mats], dtype=np.int64)
        ivf = self._ivf
        if counts.sum():
            des = np.concatenate(mats)
            imids = np.repeat(np.arange(start, start + len(mats), dtype=np.int64), counts)
            quantized = self._codebook.quantize(des, imids, multiple_assignment=self.multiple_assignment_db)
            agg_des, agg_words, agg_imids = self._kernel.aggregate(*quantized)
            ivf.params["use_idf"] = False  # idf and norms are recomputed below (vectorised, all words)
            try:
                ivf.add(agg_des, agg_words, agg_imids.copy())  # IVF.add shifts image_ids in place
            finally:
                ivf.params["use_idf"] = self.use_idf
        total = start + len(mats)
        ivf.norm_factor = np.concatenate((np.asarray(ivf.norm_factor, dtype=np.float64),
                                          np.zeros(total - len(ivf.norm_factor))))
        ivf.n_images = np.int64(total)
        if self.use_idf:
            self._recompute_idf()
        self._names.extend(names)
        self._empty = np.concatenate((self._empty, counts == 0))

    def _recompute_idf(self) -> None:
        """idf = log(N / n_word)**2 for non-empty words (1 for empty ones) and the image norms, as
        ``IVF.add`` computes them (same order of summation, so the same bits)."""
        ivf = self._ivf
        nz = ivf.counts > 0
        ivf.idf[nz] = np.log(ivf.n_images / ivf.counts[nz].astype(np.float64)) ** 2
        _, imids, offsets = self._flat_ivf(vecs=False)
        weights = np.repeat(ivf.idf, np.diff(offsets))
        ivf.norm_factor = np.bincount(imids, weights=weights, minlength=int(ivf.n_images)).astype(np.float64)

    def _flat_ivf(self, vecs: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """Posting lists concatenated in word order: (vecs (M, W), image_ids (M,), offsets (K+1,))."""
        ivf = self._ivf
        offsets = np.concatenate(([0], np.cumsum(ivf.counts, dtype=np.int64)))
        words = np.flatnonzero(ivf.counts)
        imids = [ivf.ivf_image_ids[w][: ivf.counts[w]] for w in words]
        imids = np.concatenate(imids).astype(np.int64) if len(words) else np.zeros(0, np.int64)
        out_vecs = None
        if vecs:
            width, dtype = (math.ceil(self.dim / 32), np.uint32) if self.binary else (self.dim, np.float32)
            parts = [ivf.ivf_vecs[w][: ivf.counts[w]] for w in words]
            out_vecs = np.concatenate(parts).astype(dtype) if parts else np.zeros((0, width), dtype)
        return out_vecs, imids, offsets

    def search(self, descriptors_per_query: Sequence[Any], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best database images for each query.

        Args:
            descriptors_per_query: one (n_q, D) array per query image.
            k: results per query.

        Returns:
            ``(scores, ids)``: (Q, k) float32 in descending order and (Q, k) int64; rows are padded
            with -inf / -1 past the database size, and a query without descriptors gets only padding.
        """
        self._require_trained("search")
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = list(descriptors_per_query)
        k, n = int(k), len(self)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        mats = [as_matrix(q, f"query {i}", self.dim) for i, q in enumerate(queries)]
        take = min(k, n)
        ident = np.arange(n)

        def similarity(*x):
            return self._kernel.similarity(*x, alpha=self.alpha, similarity_threshold=self.similarity_threshold)

        for qi, x in enumerate(mats):
            if not len(x) or not n:
                continue
            _, words = self._codebook.quantize(x, multiple_assignment=self.multiple_assignment_query)
            ades, uwords = self._kernel.aggregate_image(x, words)
            with np.errstate(divide="ignore", invalid="ignore"):
                ranks, sc = self._ivf.search(ades, uwords, similarity_func=similarity, topk=None)
            full = np.zeros(n, dtype=np.float64)
            full[ranks] = sc
            full[~np.isfinite(full)] = 0.0  # 0/0 when every shared word has idf 0
            order = np.lexsort((ident, self._empty, -full))[:take]
            scores[qi, :take] = full[order]
            ids[qi, :take] = order
        return scores, ids

    def save(self, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
        """Write the index directory (kind ``"asmk"``, see `delfi.retrieval.storage`); returns its path.

        An existing delfi index at ``path`` is replaced when ``overwrite``; anything else there is
        refused (`delfi.retrieval.storage.IndexPathError`)."""
        self._require_trained("save")
        vecs, imids, offsets = self._flat_ivf()
        ivf = self._ivf
        arrays = {"codebook.npy": self._codebook.centroids.astype(np.float32), "ivf_vecs.npy": vecs,
                  "ivf_image_ids.npy": imids, "ivf_offsets.npy": offsets,
                  "ivf_idf.npy": np.asarray(ivf.idf, dtype=np.float32),
                  "ivf_norm_factor.npy": np.asarray(ivf.norm_factor, dtype=np.float64)}

        def write(tmp: Path) -> None:
            for name, arr in arrays.items():
                np.save(tmp / name, np.ascontiguousarray(arr), allow_pickle=False)

        config = {**self.config, "hamming_normalization": "true_dim" if self.binary else None,
                  "empty_images": int(self._empty.sum()), "vectors": len(imids)}
        return write_index_dir(path, KIND, self.dim, self._names, config, write, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, *, verify: bool = True, meta: dict[str, Any] | None = None) -> ASMKIndex:
        """Load an index written by `save` (checksums checked when ``verify``).

        Raises:
            IndexFormatError: naming the file that is missing, corrupted or inconsistent.
        """
        root = Path(path)
        meta = read_index_meta(root, verify=verify) if meta is None else meta
        if meta.get("kind") != KIND:
            raise IndexFormatError(f"{root / 'meta.json'}: kind is {meta.get('kind')!r}, not {KIND!r}")
        try:
            index = cls(int(meta["dim"]), **{p: meta["config"][p] for p in _PARAMS})
        except KeyError as exc:
            raise IndexFormatError(f"{root / 'meta.json'}: the asmk setting {exc} is missing from 'config'") from None
        except (TypeError, ValueError) as exc:
            raise IndexFormatError(f"{root / 'meta.json'}: bad asmk config ({exc})") from None
        names = read_names(root, int(meta["count"]))
        arr = {}
        for name in _FILES:
            if name not in meta["files"]:
                raise IndexFormatError(f"{root / 'meta.json'}: 'files' does not list {name}")
            file = index_file(root, name)
            if not file.is_file():
                raise IndexFormatError(f"{file}: missing")
            try:
                arr[name] = np.load(file, allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise IndexFormatError(f"{file}: not a readable .npy array ({exc})") from None
        K, D, n = index.codebook_size, index.dim, len(names)
        width, vdtype = (math.ceil(D / 32), np.uint32) if index.binary else (D, np.float32)
        cdb, vecs, imids = arr["codebook.npy"], arr["ivf_vecs.npy"], arr["ivf_image_ids.npy"]
        offsets, idf, norm = arr["ivf_offsets.npy"], arr["ivf_idf.npy"], arr["ivf_norm_factor.npy"]
        m = len(imids)
        checks = [("codebook.npy", cdb.shape == (K, D) and cdb.dtype == np.float32, f"({K}, {D}) float32"),
                  ("ivf_vecs.npy", vecs.shape == (m, width) and vecs.dtype == vdtype,
                   f"({m}, {width}) {vdtype.__name__}"),
                  ("ivf_image_ids.npy", imids.ndim == 1 and imids.dtype == np.int64
                   and (m == 0 or (imids.min() >= 0 and imids.max() < n)), f"(M,) int64 in [0, {n})"),
                  ("ivf_offsets.npy", offsets.shape == (K + 1,) and offsets.dtype == np.int64 and offsets[0] == 0
                   and offsets[-1] == m and (np.diff(offsets) >= 0).all(), f"({K + 1},) int64 from 0 to {m}"),
                  ("ivf_idf.npy", idf.shape == (K,) and idf.dtype == np.float32, f"({K},) float32"),
                  ("ivf_norm_factor.npy", norm.shape == (n,) and norm.dtype == np.float64, f"({n},) float64")]
        for name, ok, expected in checks:
            if not ok:
                a = arr[name]
                raise IndexFormatError(f"{root / name}: expected {expected}, got {a.shape} {a.dtype}")
        for name in ("codebook.npy", "ivf_vecs.npy", "ivf_idf.npy", "ivf_norm_factor.npy"):
            if arr[name].dtype.kind == "f" and not np.isfinite(arr[name]).all():
                raise IndexFormatError(f"{root / name}: NaN or infinite values: rebuild the index")
        index._set_codebook(cdb)
        counts = np.diff(offsets).astype(np.int32)
        ivf_vecs = [vecs[a:b] if b > a else None for a, b in pairwise(offsets)]
        ivf_imids = [imids[a:b] if b > a else None for a, b in pairwise(offsets)]
        index._ivf = _asmk().IVF(norm_factor=norm, n_images=np.int64(n), ivf_vecs=ivf_vecs, ivf_image_ids=ivf_imids,
                                 counts=counts, idf=idf, imid_offset=0, use_idf=index.use_idf)
        index._names = names
        index._empty = np.bincount(imids, minlength=n) == 0
        return index
