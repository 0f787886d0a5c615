"""Known model weights: where they come from, where they are cached, and how to fetch them.

delfi never downloads anything implicitly. `resolve_weights` turns a weights name or a file path into a
local file (or raises an error that says exactly how to get it); `download_weights` fetches a known
checkpoint into the cache, verifying its sha256 on the fly and moving it into place atomically.

The cache lives in ``$DELFI_HOME/weights`` (``~/.cache/delfi/weights`` when ``DELFI_HOME`` is unset).
Downloads go to each entry's official URL unless ``DELFI_WEIGHTS_MIRROR`` is set, in which case the
file is fetched from ``<mirror>/<filename>`` (an ``http(s)://`` or ``file://`` URL, or a local folder).
Both variables are read at call time, never at import time.

To add weights, append a `WeightsInfo` to `_ENTRIES` (the helpers below keep a family's URL and
licence in one place). An entry normally records the file's full sha256; torchvision's checkpoints
are only known by the first 8 hex digits that torch hub puts in their names
(``<arch>-<prefix>.pth``), so such entries set ``sha256_is_prefix=True`` and a download is accepted
when its digest starts with that prefix (the full digest is printed after the download).
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:  # rich is only needed when something is printed
    from rich.console import Console

__all__ = [
    "WeightsInfo",
    "KNOWN_WEIGHTS",
    "list_weights",
    "get_weights_info",
    "delfi_home",
    "weights_dir",
    "cached_path",
    "download_url",
    "sha256_file",
    "weights_sha256",
    "known_weights_by_sha256",
    "WeightsError",
    "UnknownWeightsError",
    "WeightsNotFoundError",
    "ChecksumError",
    "DownloadError",
    "resolve_weights",
    "download_weights",
]

HOME_ENV = "DELFI_HOME"
"""Environment variable overriding delfi's home folder (default ``~/.cache/delfi``)."""

MIRROR_ENV = "DELFI_WEIGHTS_MIRROR"
"""Environment variable naming a mirror that serves the weights files by filename."""

_CHUNK_SIZE = 1 << 20


@dataclass(frozen=True)
class WeightsInfo:
    """One known checkpoint.

    Attributes:
        name: the name users type, e.g. ``"r2d2-wasf-n16"``.
        filename: the file's name in the cache and on mirrors, e.g. ``"r2d2_WASF_N16.pt"``.
        url: the official download URL.
        sha256: hex sha256 of the file; downloads are verified against it. With
            `sha256_is_prefix`, only the first hex digits of it (at least 8).
        preset: the delfi preset these weights belong to, or ``""`` for a backbone that no preset
            loads directly.
        licence: short licence text, shown before every download.
        source: where the weights come from, e.g. ``"naver/r2d2"``.
        description: one line about what the weights are.
        sha256_is_prefix: `sha256` is a prefix of the file's digest, not the full digest (e.g.
            torch hub's ``<arch>-<8 hex digits>.pth`` files, whose full digest is not published).
        embedded: the file ships inside the delfi package (``delfi/models/embedded/<filename>``):
            it is always there, nothing is downloaded, and `cached_path` is that file.
        recipe: how the weights were made, for weights delfi trained itself: the command (the full
            recipe is in the repository's ``recipes/`` folder).
    """

    name: str
    filename: str
    url: str
    sha256: str
    preset: str
    licence: str
    source: str
    description: str
    sha256_is_prefix: bool = False
    embedded: bool = False
    recipe: str = ""

    def sha256_matches(self, digest: str) -> bool:
        """Whether a file's hex sha256 `digest` is the expected one (starts with it, for a prefix)."""
        digest = digest.strip().lower()
        expected = self.sha256.lower()
        if self.sha256_is_prefix:
            return digest.startswith(expected)
        return digest == expected

    @property
    def sha256_text(self) -> str:
        """The expected sha256 for messages: the full digest, or e.g. ``"0676ba61… (prefix)"``."""
        if self.sha256_is_prefix:
            return f"{self.sha256}… (prefix)"
        return self.sha256


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------

_R2D2_SOURCE = "naver/r2d2"
_R2D2_LICENCE = "CC BY-NC-SA 3.0 (non-commercial use only)"
_R2D2_BASE_URL = "https://github.com/naver/r2d2/raw/master/models"


def _r2d2(name: str, filename: str, sha256: str, preset: str, description: str) -> WeightsInfo:
    """An official R2D2 checkpoint (same source, licence and URL layout for all of them)."""
    return WeightsInfo(
        name=name,
        filename=filename,
        url=f"{_R2D2_BASE_URL}/{filename}",
        sha256=sha256,
        preset=preset,
        licence=_R2D2_LICENCE,
        source=_R2D2_SOURCE,
        description=description,
    )


_TORCHVISION_SOURCE = "pytorch/vision"
_TORCHVISION_LICENCE = "BSD-3-Clause (torchvision); trained on ImageNet-1k (see its terms of use)"
_TORCHVISION_BASE_URL = "https://download.pytorch.org/models"


def _torchvision(name: str, filename: str, description: str) -> WeightsInfo:
    """A torchvision checkpoint named ``<arch>-<first 8 hex digits of its sha256>.pth`` (torch hub's
    convention); only that prefix of the digest is known, so it is what downloads are checked against."""
    stem = filename.rsplit(".", 1)[0]
    return WeightsInfo(
        name=name,
        filename=filename,
        url=f"{_TORCHVISION_BASE_URL}/{filename}",
        sha256=stem.rsplit("-", 1)[-1],
        preset="",
        licence=_TORCHVISION_LICENCE,
        source=_TORCHVISION_SOURCE,
        description=description,
        sha256_is_prefix=True,
    )


DEFAULT_WEIGHTS = "delfi-lite"
"""delfi's own default local-feature model (embedded in the package; the ``delfi-lite`` preset)."""

_DELFI_LICENCE = "Apache-2.0 (trained by delfi from scratch on public-domain / CC0 photos)"


def _embedded(name: str, filename: str, sha256: str, preset: str, description: str, recipe: str) -> WeightsInfo:
    """Weights delfi trained itself and ships inside the package (no URL: nothing to download)."""
    return WeightsInfo(
        name=name,
        filename=filename,
        url="",
        sha256=sha256,
        preset=preset,
        licence=_DELFI_LICENCE,
        source="delfi",
        description=description,
        embedded=True,
        recipe=recipe,
    )


_ENTRIES: tuple[WeightsInfo, ...] = (
    _embedded(
        DEFAULT_WEIGHTS,
        "delfi-lite.pt",
        "13e35e7be875a3bd4063321e980fb766e4a5037a6811b0ef87a71050013d908c",
        "delfi-lite",
        "Fast-R2D2 layout, half the channels, 64-D descriptors: HPatches / EVD numbers in the README",
        "python recipes/default_model/train.py --out RUN",
    ),
    _r2d2(
        "r2d2-waf-n16",
        "r2d2_WAF_N16.pt",
        "27cebd6608317b35198a76f60f87492110dee3e88ca382586a729dadb1a16b90",
        "r2d2",
        "R2D2 trained on Web + Aachen + optical Flow pairs, N=16 "
        "(most paper experiments; HPatches MMA@3 0.686)",
    ),
    _r2d2(
        "r2d2-wasf-n16",
        "r2d2_WASF_N16.pt",
        "9ae90e02a9a133d100ca7aeaa32f4d4d7736a6dd222a530a25c8f7da5e508528",
        "r2d2",
        "+ Aachen day-night Synthetic pairs; the paper's localisation model (MMA@3 0.721)",
    ),
    _r2d2(
        "r2d2-wasf-n8-big",
        "r2d2_WASF_N8_big.pt",
        "597dc13998e211e827c550bdc8f76dbb4aca32747846f96962c9168586cec418",
        "r2d2-n8-big",
        "mchan=6, N=8: denser keypoints",
    ),
    _r2d2(
        "faster2d2-wasf-n16",
        "faster2d2_WASF_N16.pt",
        "217daa3a166bfe9bf2b68c05c1607a09dd4d552ae1bbeda885479d504eefc14b",
        "faster2d2",
        "Fast-R2D2 variant of r2d2-wasf-n16",
    ),
    _torchvision(
        "resnet50-imagenet",
        "resnet50-0676ba61.pth",
        "ResNet-50 ImageNet-1k (torchvision V1, top-1 76.13): DELF/DELG backbone",
    ),
    _torchvision(
        "resnet101-imagenet",
        "resnet101-63fe2227.pth",
        "ResNet-101 ImageNet-1k (torchvision V1, top-1 77.37)",
    ),
)


_HEX = frozenset("0123456789abcdef")


def _check_sha256(info: WeightsInfo) -> None:
    """Refuse a malformed sha256: 64 hex digits, or for a prefix 8 to 63 found in the filename."""
    digits = info.sha256
    is_hex = bool(digits) and set(digits) <= _HEX
    if info.sha256_is_prefix:
        if not (is_hex and 8 <= len(digits) <= 63):
            raise ValueError(
                f"weights {info.name!r}: a sha256 prefix must be 8 to 63 lowercase hex digits, "
                f"got {digits!r}"
            )
        if digits not in info.filename:
            raise ValueError(
                f"weights {info.name!r}: the filename {info.filename!r} does not contain its "
                f"sha256 prefix {digits!r}"
            )
    elif not (is_hex and len(digits) == 64):
        raise ValueError(
            f"weights {info.name!r}: the sha256 must be 64 lowercase hex digits, got {digits!r}"
        )


def _index(entries: Iterable[WeightsInfo]) -> dict[str, WeightsInfo]:
    """Index entries by name, refusing duplicate names or filenames (they share one cache folder)
    and malformed checksums (see `_check_sha256`)."""
    table: dict[str, WeightsInfo] = {}
    filenames: set[str] = set()
    for info in entries:
        _check_sha256(info)
        if info.name in table:
            raise ValueError(f"duplicate weights name {info.name!r}")
        if info.filename in filenames:
            raise ValueError(f"duplicate weights filename {info.filename!r}")
        table[info.name] = info
        filenames.add(info.filename)
    return table


KNOWN_WEIGHTS: dict[str, WeightsInfo] = _index(_ENTRIES)
"""All known weights, by name, in table order."""


def list_weights() -> list[WeightsInfo]:
    """All known weights, in table order."""
    return list(KNOWN_WEIGHTS.values())


def get_weights_info(name: str) -> WeightsInfo:
    """The entry called `name` (case-insensitive).

    Raises:
        UnknownWeightsError: no entry has that name; the message lists the known names.
    """
    info = _lookup(name)
    if info is None:
        raise UnknownWeightsError(f"Unknown weights name {name!r}. {_known_names_sentence(name)}")
    return info


def _lookup(name: str) -> WeightsInfo | None:
    info = KNOWN_WEIGHTS.get(name)
    if info is None:
        lowered = name.strip().lower()
        info = next((i for i in KNOWN_WEIGHTS.values() if i.name.lower() == lowered), None)
    return info


def _known_names_sentence(query: str | None = None) -> str:
    names = list(KNOWN_WEIGHTS)
    sentence = f"Known weights: {', '.join(names)}."
    if query:
        close = difflib.get_close_matches(query.lower(), names, n=1)
        if close:
            sentence = f"Did you mean {close[0]!r}? " + sentence
    return sentence + " Run `delfi weights list` for details."


# --------------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------------


def delfi_home() -> Path:
    """delfi's home folder: ``$DELFI_HOME`` if set, else ``~/.cache/delfi`` (read at each call)."""
    value = os.environ.get(HOME_ENV, "").strip()
    if value:
        return Path(value).expanduser()
    return Path.home() / ".cache" / "delfi"


def weights_dir() -> Path:
    """The weights cache folder, ``delfi_home() / "weights"`` (not created here)."""
    return delfi_home() / "weights"


def embedded_dir() -> Path:
    """The package folder of the embedded weights (``delfi/models/embedded``)."""
    return Path(__file__).resolve().parent / "embedded"


def cached_path(info: WeightsInfo) -> Path:
    """Where `info`'s file lives (whether or not it is there): the cache, or for embedded weights
    the file inside the package."""
    if info.embedded:
        return embedded_dir() / info.filename
    return weights_dir() / info.filename


def download_url(info: WeightsInfo) -> str:
    """The URL `download_weights` fetches `info` from.

    This is ``info.url`` unless ``$DELFI_WEIGHTS_MIRROR`` is set, in which case it is
    ``<mirror>/<filename>``; a mirror given as a local folder (no ``scheme://``) becomes a
    ``file://`` URL.
    """
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return info.url
    if "://" not in mirror:
        mirror = Path(mirror).expanduser().resolve().as_uri()
    return f"{mirror.rstrip('/')}/{info.filename}"


def sha256_file(path: str | os.PathLike[str], chunk_size: int = _CHUNK_SIZE) -> str:
    """Hex sha256 of a file, read in chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class WeightsError(Exception):
    """Base class of the weights errors; messages are complete sentences a user can act on."""


class UnknownWeightsError(WeightsError, LookupError):
    """Neither a known weights name nor an existing file; the message lists the known names."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """Known weights that are not in the cache; the message says how to get them."""

    @classmethod
    def for_weights(cls, info: WeightsInfo) -> WeightsNotFoundError:
        """The error for `info`: names the cached path, the sha256, the URL and the command."""
        return cls(_not_found_message(info))


class ChecksumError(WeightsError):
    """A downloaded file's sha256 differs from the table's; the file was discarded."""


class DownloadError(WeightsError):
    """A download failed (network, HTTP or disk); the message says how to install the file by hand."""


def _manual_install_hint(info: WeightsInfo) -> str:
    """Sentences naming the exact file to place, where, its sha256 and its URL."""
    target = cached_path(info)
    mirror_url = download_url(info)
    hint = (
        f"To install the file by hand, download {info.url} and save it as {target} "
        f"(file {info.filename}, sha256 {info.sha256_text})."
    )
    if mirror_url != info.url:
        hint += f" The mirror set in {MIRROR_ENV} serves it at {mirror_url}."
    return hint


def _not_found_message(info: WeightsInfo) -> str:
    if info.embedded:
        return (
            f"Weights {info.name!r} ship inside the delfi package, but {cached_path(info)} is missing: "
            f"the installation is incomplete; reinstall delfi."
        )
    return (
        f"Weights {info.name!r} are not in the cache ({cached_path(info)} does not exist). "
        f"Download them with `delfi weights download {info.name}`. "
        + _manual_install_hint(info)
    )


# --------------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------------


def _looks_like_path(text: str) -> bool:
    """Whether a string that is not a known name was probably meant as a file path."""
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return any(s in text for s in seps) or text.startswith("~") or Path(text).suffix != ""


def resolve_weights(name_or_path: str | os.PathLike[str]) -> tuple[Path, WeightsInfo | None]:
    """Turn a weights name or a file path into a local file.

    * An existing file: ``(path, info)``, where `info` is the known entry whose filename matches the
      file's name, else ``None``. The file's hash is not checked here.
    * A known name (case-insensitive): its cached file, with its entry. The cached file is trusted
      (`download_weights` verified it when it put it there).

    Raises:
        WeightsNotFoundError: a known name whose file is not cached; the message names the full path
            to place the file at, its sha256, its URL and the download command.
        UnknownWeightsError: anything else (a path that does not exist, a directory, an unknown
            name); the message lists the known names.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        info = next((i for i in KNOWN_WEIGHTS.values() if i.filename == path.name), None)
        return path, info
    if path.is_dir():
        raise UnknownWeightsError(
            f"{path} is a directory, not a weights file. Give a checkpoint file or a known weights "
            f"name. {_known_names_sentence()}"
        )
    if not isinstance(name_or_path, os.PathLike):
        info = _lookup(text)
        if info is not None:
            cached = cached_path(info)
            if cached.is_file():
                return cached, info
            raise WeightsNotFoundError.for_weights(info)
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(text):
        raise UnknownWeightsError(
            f"No such file: {path}. Give an existing checkpoint file or a known weights name. "
            f"{_known_names_sentence()}"
        )
    raise UnknownWeightsError(
        f"{text!r} is neither a known weights name nor an existing file. {_known_names_sentence(text)}"
    )


# --------------------------------------------------------------------------------------------------
# Identity: the same weights, however they are named
# --------------------------------------------------------------------------------------------------

_DIGESTS: dict[tuple[str, int, int], str] = {}
"""sha256 of files already hashed in this process, by (resolved path, size, mtime in ns)."""


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        digest = _DIGESTS[key] = sha256_file(path)
    return digest


def weights_sha256(name_or_path: str | os.PathLike[str]) -> str:
    """The full hex sha256 of the weights `name_or_path` names, whatever the spelling.

    A known name and a path to the same file (the cached copy, a copy elsewhere, a symlink) give the
    same digest. The cached file of a known entry with a full digest is trusted (`download_weights`
    verified it) and not read; any other file is hashed (once per process while it is unchanged).

    Raises:
        WeightsError: as `resolve_weights` (unknown name, missing file, weights not cached).
    """
    path, info = resolve_weights(name_or_path)
    if info is not None and not info.sha256_is_prefix:
        try:
            trusted = path.resolve() == cached_path(info).resolve()
        except OSError:
            trusted = False
        if trusted:
            return info.sha256
    return _file_digest(path)


def known_weights_by_sha256(digest: str) -> WeightsInfo | None:
    """The known entry whose file has the hex sha256 `digest` (a prefix entry matches on its prefix)."""
    return next((i for i in KNOWN_WEIGHTS.values() if i.sha256_matches(digest)), None)


# --------------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------------


def _default_console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def _print_licence_notice(console: Console, info: WeightsInfo, url: str) -> None:
    from rich.markup import escape

    console.print(
        f"Downloading [bold]{escape(info.name)}[/bold] ({escape(info.filename)}) from "
        f"{escape(info.source)}.\n"
        f"Licence: {escape(info.licence)}. By using these weights you accept their licence.\n"
        f"URL: {escape(url)}",
        soft_wrap=True,
        highlight=False,
    )


def _content_length(response: object) -> int | None:
    headers = getattr(response, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        length = int(value) if value is not None else None
    except ValueError:
        return None
    return length if length is not None and length >= 0 else None


def _stream_to_file(
    response: IO[bytes],
    out: IO[bytes],
    digest: hashlib._Hash,
    advance: Callable[[int], None],
) -> int:
    """Copy `response` into `out` chunk by chunk, updating `digest`; returns the bytes copied."""
    copied = 0
    while chunk := response.read(_CHUNK_SIZE):
        out.write(chunk)
        digest.update(chunk)
        copied += len(chunk)
        advance(len(chunk))
    return copied


def _failure_reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP error {exc.code} ({exc.reason})"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return f"timed out after {timeout:g} s"
        return str(reason) or type(reason).__name__
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, http.client.IncompleteRead):
        return f"the connection closed early ({len(exc.partial)} bytes received)"
    return str(exc) or type(exc).__name__


def download_weights(
    name: str | WeightsInfo,
    *,
    force: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
    console: Console | None = None,
) -> Path:
    """Download known weights into the cache and return the cached file's path.

    If the cached file already has the right sha256 (and not `force`) nothing is downloaded.
    Otherwise the licence notice is printed, the file is streamed into ``<filename>.part-<pid>``
    next to its final place while its sha256 is computed, and on a match it is moved into place
    with `os.replace` (atomic: the final name never holds a partial file). The temporary file is
    removed on any failure, including KeyboardInterrupt.

    Args:
        name: a known weights name or a `WeightsInfo` (which need not be in the table).
        force: download even if a verified copy is cached.
        progress: show a Rich progress bar (bytes, rate, ETA).
        timeout: socket timeout in seconds, for connecting and for each read.
        console: where the notice and the progress bar go (default: a console on stderr).

    Raises:
        UnknownWeightsError: `name` is not a known weights name.
        ChecksumError: the downloaded file's sha256 does not match; nothing is left behind.
        DownloadError: network, HTTP or disk failure; the message says how to install by hand.
    """
    info = name if isinstance(name, WeightsInfo) else get_weights_info(name)
    target = cached_path(info)
    if info.embedded:
        if target.is_file():
            return target
        raise WeightsNotFoundError.for_weights(info)
    if console is None:
        console = _default_console()

    if target.is_file() and not force:
        if info.sha256_matches(sha256_file(target)):
            return target
        console.print(
            f"The cached file {target} does not match the expected sha256; downloading it again.",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )

    url = download_url(info)
    _print_licence_notice(console, info, url)

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"Could not create the weights folder {target.parent} ({exc}). Set {HOME_ENV} to a "
            f"writable folder. " + _manual_install_hint(info)
        ) from exc

    tmp = target.with_name(f"{info.filename}.part-{os.getpid()}")
    try:
        digest = hashlib.sha256()
        try:
            request = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
            with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
                total = _content_length(response)
                if progress:
                    from rich.progress import (
                        BarColumn,
                        DownloadColumn,
                        Progress,
                        TextColumn,
                        TimeRemainingColumn,
                        TransferSpeedColumn,
                    )

                    with Progress(
                        TextColumn("[bold]{task.description}"),
                        BarColumn(),
                        DownloadColumn(),
                        TransferSpeedColumn(),
                        TimeRemainingColumn(),
                        console=console,
                    ) as bar:
                        task = bar.add_task(info.filename, total=total)
                        _stream_to_file(response, out, digest, lambda n: bar.advance(task, n))
                else:
                    _stream_to_file(response, out, digest, lambda n: None)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()  # an HTTPError holds the open response
            raise DownloadError(
                f"Downloading weights {info.name!r} from {url} failed: "
                f"{_failure_reason(exc, timeout)}. " + _manual_install_hint(info)
            ) from exc

        actual = digest.hexdigest()
        if not info.sha256_matches(actual):
            expected = (
                f"a sha256 starting with {info.sha256}"
                if info.sha256_is_prefix
                else f"sha256 {info.sha256}"
            )
            raise ChecksumError(
                f"The file downloaded from {url} has sha256 {actual}, but weights {info.name!r} "
                f"must have {expected}; it was discarded. The download may be corrupt or "
                f"the server may serve a different file: try again, or check the source "
                f"({MIRROR_ENV} if you use a mirror)."
            )
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise DownloadError(
                f"Downloading weights {info.name!r} succeeded but moving it to {target} failed "
                f"({exc}). " + _manual_install_hint(info)
            ) from exc
        if info.sha256_is_prefix:
            console.print(
                f"Verified {info.filename}: its sha256 {actual} starts with {info.sha256}.",
                soft_wrap=True,
                highlight=False,
                markup=False,
            )
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return target


def _user_agent() -> str:
    from delfi import __version__

    return f"delfi/{__version__} (+weights download)"
