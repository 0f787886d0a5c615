"""PCA (and whitening) of local descriptors, as DELF does after extraction (``docs/ALGORITHMS.md`` s. 1).

Fitting streams descriptors batch by batch: one pass accumulates, in float64, the sample count, the sum
and the sum of outer products of the (shifted) descriptors, so memory is O(D^2) whatever the number of
descriptors. The covariance is then diagonalised with `numpy.linalg.eigh`.

Applying: ``y = (x - mean) @ components[:dims].T``; optional whitening divides by
``sqrt(eigenvalues[:dims] + eps)``; optional L2 renormalisation of the rows. TF DELF renormalises and
does not whiten (the defaults); DeLF-pytorch whitens and does not renormalise.

File format (``format = "delfi-pca"``, ``format_version = 1``), HDF5 (``.h5``, the default) or ``.npz``:
float64 arrays ``mean`` (D,), ``components`` (D, D) (rows = principal axes, decreasing eigenvalue) and
``eigenvalues`` (D,); attrs ``dims`` (the number of dimensions the fit was made for), ``input_dim``,
``n_samples``, ``ddof``, ``source`` (JSON: what the PCA was fitted on) and ``delfi_version``. No
timestamps: the same fit gives the same bytes, so `pca_sha256` identifies the PCA.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "PCA",
    "PCAFileError",
    "fit_pca_streaming",
    "fit_pca_from_store",
    "apply_pca",
    "save_pca",
    "load_pca",
    "pca_sha256",
    "FORMAT",
    "FORMAT_VERSION",
]

FORMAT = "delfi-pca"
FORMAT_VERSION = 1
_ARRAYS = ("mean", "components", "eigenvalues")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURE = b"PK\x03\x04"


class PCAFileError(ValueError):
    """A PCA file that exists but cannot be read as one (the message names the file)."""


@dataclass
class PCA:
    """A fitted PCA of D-dimensional descriptors.

    Attributes:
        mean: (D,) float64 mean of the training descriptors.
        components: (D, D) float64, row i = the i-th principal axis (unit length), by decreasing
            eigenvalue. Sign convention: each row's largest-magnitude entry is positive.
        eigenvalues: (D,) float64 covariance eigenvalues (variances along the rows), decreasing, >= 0.
        n_samples: number of descriptors the fit saw.
        dims: the number of output dimensions the PCA is meant for (recorded in files), or None.
        ddof: the covariance divisor was ``n_samples - ddof``.
        source: what the PCA was fitted on (store path, model, sampling settings; JSON-serialisable).
    """

    mean: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray
    n_samples: int = 0
    dims: int | None = None
    ddof: int = 1
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float64)
        self.components = np.asarray(self.components, dtype=np.float64)
        self.eigenvalues = np.asarray(self.eigenvalues, dtype=np.float64)
        self.n_samples, self.ddof = int(self.n_samples), int(self.ddof)
        d = self.mean.shape[0] if self.mean.ndim == 1 else -1
        if d < 1 or self.components.shape != (d, d) or self.eigenvalues.shape != (d,):
            raise ValueError(
                f"PCA needs mean (D,), components (D, D) and eigenvalues (D,), got {self.mean.shape}, "
                f"{self.components.shape} and {self.eigenvalues.shape}"
            )
        if self.dims is not None:
            self.dims = int(self.dims)
            if not 1 <= self.dims <= d:
                raise ValueError(f"PCA dims must be in [1, {d}], got {self.dims}")

    @property
    def input_dim(self) -> int:
        """D, the descriptor dimension the PCA expects."""
        return int(self.mean.shape[0])

    def explained_variance_ratio(self, dims: int | None = None) -> float:
        """Fraction of the total variance kept by the first ``dims`` components (default `dims` or D)."""
        dims = self._dims(dims)
        total = float(self.eigenvalues.sum())
        return float(self.eigenvalues[:dims].sum() / total) if total > 0 else 1.0

    def _dims(self, dims: int | None) -> int:
        dims = (self.dims or self.input_dim) if dims is None else int(dims)
        if not 1 <= dims <= self.input_dim:
            raise ValueError(f"dims must be in [1, {self.input_dim}], got {dims}")
        return dims


def _as_float64(batch: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(batch, Tensor):
        batch = batch.detach().to("cpu", torch.float64).numpy()
    return np.asarray(batch, dtype=np.float64)


def _fix_signs(components: np.ndarray) -> np.ndarray:
    """Flip rows so that each one's largest-magnitude entry is positive (eigh's signs are arbitrary)."""
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(components.shape[0]), idx])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


def fit_pca_streaming(batches: Iterable[np.ndarray | Tensor], *, ddof: int = 1,
                      source: dict[str, Any] | None = None, dims: int | None = None) -> PCA:
    """Fit a PCA in ONE pass over ``batches`` of descriptors, in float64.

    Accumulates the count, the sum and the sum of outer products of ``x - shift`` (the shift is the
    first batch's mean, which keeps ``sum xx^T - n mean mean^T`` free of cancellation when the mean is
    large). Only one batch is in memory at a time.

    Args:
        batches: iterable of (n_i, D) arrays or tensors (any float dtype; empty batches are skipped).
        ddof: covariance divisor ``n - ddof`` (1: unbiased, as `numpy.cov`; 0: maximum likelihood).
        source: recorded in `PCA.source`.
        dims: recorded in `PCA.dims`.

    Returns:
        The `PCA` (components by decreasing eigenvalue, eigenvalues clipped at 0).

    Raises:
        ValueError: a batch is not 2-D or holds NaN or infinite values, the dimensions disagree, or
            there are at most ``ddof`` samples.
    """
    n = 0
    shift = total = outer = None
    for i, batch in enumerate(batches):
        x = _as_float64(batch)
        if x.ndim != 2:
            raise ValueError(f"batch {i}: descriptors must be (n, D), got shape {x.shape}")
        if x.shape[0] == 0:
            continue
        if not np.isfinite(x).all():
            raise ValueError(f"batch {i}: NaN or infinite descriptor values")
        if shift is None:
            shift = x.mean(axis=0)
            total = np.zeros_like(shift)
            outer = np.zeros((shift.shape[0], shift.shape[0]))
        elif x.shape[1] != shift.shape[0]:
            raise ValueError(f"batch {i}: descriptor dimension {x.shape[1]} differs from {shift.shape[0]}")
        xc = x - shift
        total += xc.sum(axis=0)
        outer += xc.T @ xc
        n += x.shape[0]
    if shift is None or n <= ddof:
        raise ValueError(f"PCA needs more than {ddof} descriptors, got {n}")
    mean_c = total / n
    cov = (outer - n * np.outer(mean_c, mean_c)) / (n - ddof)
    cov = (cov + cov.T) / 2.0
    eigenvalues, vectors = np.linalg.eigh(cov)  # ascending, columns
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues = np.clip(eigenvalues[order], 0.0, None)
    components = _fix_signs(vectors[:, order].T)
    return PCA(mean=shift + mean_c, components=np.ascontiguousarray(components), eigenvalues=eigenvalues,
               n_samples=n, dims=dims, ddof=ddof, source=dict(source or {}))


def fit_pca_from_store(
    path: str | os.PathLike,
    max_per_image: int | None = None,
    max_images: int | None = None,
    seed: int = 0,
    *,
    dims: int | None = None,
    progress: Callable[[str], None] | None = None,
    on_failure: Callable[[str, str], None] | None = None,
) -> PCA:
    """Fit a PCA on the descriptors of a `delfi.io.features.FeatureStore`, reading one entry at a time.

    Args:
        path: the feature store (``.h5``).
        max_per_image: use at most this many descriptors per image (a random subset), None: all.
        max_images: use at most this many images (a random subset), None: all.
        seed: seeds the random subsets (one `numpy.random.default_rng(seed)`, images drawn first).
        dims: recorded in `PCA.dims`.
        progress: called with each entry name after it is read.
        on_failure: called with (entry name, reason) for an entry that cannot be read or holds NaN
            or infinite values; the entry is skipped. Without it such an entry raises ValueError.

    Raises:
        FileNotFoundError: no store at ``path``. ValueError: an empty store, no usable descriptors,
        descriptors of different dimensions, or (without ``on_failure``) a bad entry, naming the
        store and the entry.
    """
    from delfi.io.features import FeatureStore

    for name, value in (("max_per_image", max_per_image), ("max_images", max_images)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1 or None, got {value}")
    rng = np.random.default_rng(seed)
    with FeatureStore(path, "r") as store:
        names = store.names()
        if max_images is not None and max_images < len(names):
            keep = np.sort(rng.choice(len(names), size=max_images, replace=False))
            names = [names[i] for i in keep]
        attrs = store.attrs
        used = {"images": 0, "failed": 0}

        def skip(name: str, reason: str) -> None:
            used["failed"] += 1
            if on_failure is None:
                raise ValueError(reason)
            on_failure(name, reason)

        def batches():
            for name in names:
                try:
                    descriptors = store.get(name).descriptors
                except (KeyError, ValueError) as exc:  # missing / bad entry (the store names it)
                    reason = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
                    skip(name, reason or f"{path}: {name!r} cannot be read")
                    continue
                if descriptors.ndim != 2 or not bool(torch.isfinite(descriptors).all()):
                    skip(name, f"feature store {path}: {name!r} has NaN or infinite descriptor values"
                         if descriptors.ndim == 2 else f"feature store {path}: {name!r} has descriptors of shape "
                         f"{tuple(descriptors.shape)}, expected (n, D)")
                    continue
                if max_per_image is not None and descriptors.shape[0] > max_per_image:
                    keep = np.sort(rng.choice(descriptors.shape[0], size=max_per_image, replace=False))
                    descriptors = descriptors[torch.from_numpy(keep)]
                used["images"] += 1
                yield descriptors
                if progress is not None:
                    progress(name)

        source = {
            "features": str(path),
            "model": attrs.get("model"),
            "weights_sha256": attrs.get("weights_sha256"),
            "max_per_image": max_per_image,
            "max_images": max_images,
            "seed": int(seed),
        }
        try:
            pca = fit_pca_streaming(batches(), source=source, dims=dims)
        except ValueError as exc:
            if str(exc).startswith("feature store "):  # a bad entry, already named
                raise
            failed = f" ({used['failed']} entr{'y' if used['failed'] == 1 else 'ies'} skipped)" if used["failed"] else ""
            raise ValueError(f"feature store {path}: {exc}{failed}") from None
        pca.source["images"] = used["images"]
        return pca


def apply_pca(
    x: np.ndarray | Tensor,
    pca: PCA,
    dims: int | None = 40,
    whiten: bool = False,
    renormalise: bool = True,
    eps: float = 1e-12,
) -> np.ndarray | Tensor:
    """Project descriptors: ``(x - mean) @ components[:dims].T`` [/ sqrt(eigenvalues + eps)] [L2-normalise].

    Args:
        x: (N, D) array or tensor.
        pca: the fitted `PCA`.
        dims: output dimension (None: ``pca.dims``, else D).
        whiten: divide each output coordinate by ``sqrt(eigenvalue + eps)`` (DeLF-pytorch).
        renormalise: L2-normalise the rows afterwards (TF DELF); rows of norm < eps are left as they are.
        eps: whitening and normalisation guard.

    Returns:
        (N, dims), the same kind as ``x``: numpy computed in float64 and returned in x's float dtype
        (float64 for integer input); tensors stay on their device, in float32 (float64 if x is).
    """
    dims = pca._dims(dims)
    components, mean = pca.components[:dims], pca.mean
    scale = 1.0 / np.sqrt(pca.eigenvalues[:dims] + eps) if whiten else None
    if isinstance(x, Tensor):
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        xt = x.to(dtype)
        if xt.ndim != 2 or xt.shape[1] != pca.input_dim:
            raise ValueError(f"x must be (N, {pca.input_dim}), got {tuple(x.shape)}")
        as_t = lambda a: torch.as_tensor(a, dtype=dtype, device=x.device)  # noqa: E731
        y = (xt - as_t(mean)) @ as_t(components).T
        if scale is not None:
            y = y * as_t(scale)
        if renormalise:
            y = y / y.norm(dim=1, keepdim=True).clamp(min=eps)
        return y
    xa = np.asarray(x)
    out_dtype = xa.dtype if np.issubdtype(xa.dtype, np.floating) else np.float64
    xa = xa.astype(np.float64, copy=False)
    if xa.ndim != 2 or xa.shape[1] != pca.input_dim:
        raise ValueError(f"x must be (N, {pca.input_dim}), got {xa.shape}")
    y = (xa - mean) @ components.T
    if scale is not None:
        y = y * scale
    if renormalise:
        y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), eps)
    return y.astype(out_dtype, copy=False)


def _attrs(pca: PCA) -> dict[str, Any]:
    from delfi import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "delfi_version": __version__,
        "dims": int(pca.dims or pca.input_dim),
        "input_dim": pca.input_dim,
        "n_samples": pca.n_samples,
        "ddof": pca.ddof,
        "source": json.dumps(pca.source, sort_keys=True, default=str),
    }


def save_pca(pca: PCA, path: str | os.PathLike) -> Path:
    """Write ``pca`` to ``path`` (``.npz`` by suffix, else HDF5), atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    attrs = _attrs(pca)
    arrays = {name: np.ascontiguousarray(getattr(pca, name), dtype=np.float64) for name in _ARRAYS}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if path.suffix.lower() == ".npz":
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays, attrs=np.array(json.dumps(attrs, sort_keys=True)))
        else:
            import h5py

            with h5py.File(tmp, "w", track_order=True) as f:
                for name, value in arrays.items():
                    f.create_dataset(name, data=value, track_times=False)
                for key, value in attrs.items():
                    f.attrs[key] = value
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _read_h5(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    import h5py

    with h5py.File(path, "r") as f:
        missing = [name for name in _ARRAYS if name not in f or not isinstance(f[name], h5py.Dataset)]
        if missing:
            raise PCAFileError(f"PCA file {path} lacks the dataset(s) {', '.join(missing)}")
        arrays = {name: np.asarray(f[name][()]) for name in _ARRAYS}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    return arrays, attrs


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(path, allow_pickle=False) as z:
        missing = [name for name in (*_ARRAYS, "attrs") if name not in z.files]
        if missing:
            raise PCAFileError(f"PCA file {path} lacks the array(s) {', '.join(missing)}")
        arrays = {name: np.asarray(z[name]) for name in _ARRAYS}
        try:
            attrs = json.loads(str(z["attrs"][()]))
        except (ValueError, TypeError) as exc:
            raise PCAFileError(f"PCA file {path}: unreadable attrs ({exc})") from None
    if not isinstance(attrs, dict):
        raise PCAFileError(f"PCA file {path}: attrs must be a JSON object")
    return arrays, attrs


def load_pca(path: str | os.PathLike) -> PCA:
    """Read a PCA written by `save_pca` (HDF5 or npz, told apart by content).

    Raises:
        FileNotFoundError: no file at ``path``. PCAFileError: the file is not a valid delfi PCA file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PCA file {path} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(8)
    try:
        if head == _HDF5_SIGNATURE:
            arrays, attrs = _read_h5(path)
        elif head.startswith(_ZIP_SIGNATURE):
            arrays, attrs = _read_npz(path)
        else:
            raise PCAFileError(f"PCA file {path} is neither HDF5 nor npz")
    except PCAFileError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise PCAFileError(f"PCA file {path} cannot be read: {exc}") from None
    if attrs.get("format") != FORMAT:
        raise PCAFileError(f"PCA file {path} is not a {FORMAT} file (format={attrs.get('format')!r})")
    version = attrs.get("format_version", -1)
    if isinstance(version, (bool, np.bool_)) or not isinstance(version, (int, np.integer)):
        raise PCAFileError(f"PCA file {path}: format_version {version!r} is not an integer")
    if int(version) > FORMAT_VERSION:
        raise PCAFileError(
            f"PCA file {path} has format_version {attrs.get('format_version')}, newer than this delfi "
            f"reads ({FORMAT_VERSION})"
        )
    try:
        source = json.loads(attrs.get("source", "{}"))
        pca = PCA(
            mean=arrays["mean"],
            components=arrays["components"],
            eigenvalues=arrays["eigenvalues"],
            n_samples=int(attrs.get("n_samples", 0)),
            dims=int(attrs["dims"]) if "dims" in attrs else None,
            ddof=int(attrs.get("ddof", 1)),
            source=source if isinstance(source, dict) else {"source": source},
        )
    except (ValueError, TypeError) as exc:
        raise PCAFileError(f"PCA file {path} is malformed: {exc}") from None
    if not (np.all(np.isfinite(pca.mean)) and np.all(np.isfinite(pca.components))
            and np.all(np.isfinite(pca.eigenvalues))):
        raise PCAFileError(f"PCA file {path} holds non-finite values")
    return pca


def pca_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of the PCA file (record it next to features projected with it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PCA file {path} does not exist")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
