"""The weights manager, with downloads tested for real against a server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import pytest
from rich.console import Console

from delfi.models import weights as w
from delfi.models.weights import (
    KNOWN_WEIGHTS,
    ChecksumError,
    DownloadError,
    UnknownWeightsError,
    WeightsError,
    WeightsInfo,
    WeightsNotFoundError,
)


# --------------------------------------------------------------------------------------------------
# A local file server
# --------------------------------------------------------------------------------------------------


@dataclass
class LocalServer:
    root: Path
    url: str
    requests: list[str] = field(default_factory=list)

    def count(self, filename: str) -> int:
        return sum(1 for r in self.requests if r.rstrip("/").endswith("/" + filename))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
    """Serve tmp_path/"srv" over HTTP on 127.0.0.1; ``/nolength/<f>`` omits Content-Length."""
    root = tmp_path / "srv"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            requests.append(self.path)
            if self.path.startswith("/nolength/"):
                data = (root / self.path.removeprefix("/nolength/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True
                return
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield LocalServer(root=root, url=f"http://127.0.0.1:{httpd.server_address[1]}", requests=requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def payload(server: LocalServer) -> tuple[WeightsInfo, bytes]:
    """A random file on the server and a WeightsInfo pointing at it."""
    data = os.urandom(300_000)
    (server.root / "toy_weights.pt").write_bytes(data)
    info = WeightsInfo(
        name="toy-weights",
        filename="toy_weights.pt",
        url=f"{server.url}/toy_weights.pt",
        sha256=hashlib.sha256(data).hexdigest(),
        preset="toy",
        licence="Toy licence 1.0",
        source="delfi/tests",
        description="random bytes",
    )
    return info, data


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=300)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights_dir_entries() -> list[str]:
    d = w.weights_dir()
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# --------------------------------------------------------------------------------------------------
# Table and locations
# --------------------------------------------------------------------------------------------------


def test_table_has_the_r2d2_checkpoints_and_torchvision_backbones() -> None:
    names = [i.name for i in w.list_weights()]
    assert names == [
        "delfi-lite",
        "r2d2-waf-n16",
        "r2d2-wasf-n16",
        "r2d2-wasf-n8-big",
        "faster2d2-wasf-n16",
        "resnet50-imagenet",
        "resnet101-imagenet",
    ]
    for info in w.list_weights():
        assert KNOWN_WEIGHTS[info.name] is info
        if info.source == "delfi":
            assert info.embedded and info.url == "" and info.recipe and "Apache-2.0" in info.licence
        elif info.source == "naver/r2d2":
            assert not info.sha256_is_prefix
            assert re.fullmatch(r"[0-9a-f]{64}", info.sha256)
            assert info.sha256_text == info.sha256
            assert info.url == f"https://github.com/naver/r2d2/raw/master/models/{info.filename}"
            assert "non-commercial" in info.licence
        else:
            assert info.source == "pytorch/vision"
            assert info.sha256_is_prefix
            assert re.fullmatch(r"[0-9a-f]{8}", info.sha256)
            assert info.filename.endswith(f"-{info.sha256}.pth")  # torch hub's naming convention
            assert info.url == f"https://download.pytorch.org/models/{info.filename}"
            assert info.preset == ""
            assert "BSD-3-Clause" in info.licence and "ImageNet" in info.licence
    assert KNOWN_WEIGHTS["r2d2-wasf-n16"].sha256.startswith("9ae90e02")
    assert KNOWN_WEIGHTS["r2d2-wasf-n8-big"].preset == "r2d2-n8-big"
    assert KNOWN_WEIGHTS["faster2d2-wasf-n16"].preset == "faster2d2"
    r50 = KNOWN_WEIGHTS["resnet50-imagenet"]
    assert (r50.filename, r50.sha256) == ("resnet50-0676ba61.pth", "0676ba61")
    assert r50.sha256_text == "0676ba61… (prefix)"
    r101 = KNOWN_WEIGHTS["resnet101-imagenet"]
    assert (r101.filename, r101.sha256) == ("resnet101-63fe2227.pth", "63fe2227")


def test_sha256_matches() -> None:
    full = KNOWN_WEIGHTS["r2d2-wasf-n16"]
    assert full.sha256_matches(full.sha256)
    assert full.sha256_matches(full.sha256.upper())
    assert not full.sha256_matches(full.sha256[:8])
    assert not full.sha256_matches(full.sha256[:-1] + "0")
    prefix = KNOWN_WEIGHTS["resnet50-imagenet"]
    assert prefix.sha256_matches("0676ba61" + "0" * 56)
    assert prefix.sha256_matches("0676ba61" + "f" * 56)
    assert not prefix.sha256_matches("0676ba60" + "0" * 56)
    assert not prefix.sha256_matches("")


def test_table_checks_checksums() -> None:
    full = KNOWN_WEIGHTS["r2d2-waf-n16"]
    for bad in ("", "0" * 63, "0" * 65, "g" * 64, "A" * 64):
        with pytest.raises(ValueError, match="64 lowercase hex digits"):
            w._index([replace(full, sha256=bad)])
    prefix = KNOWN_WEIGHTS["resnet50-imagenet"]
    for bad in ("0676ba6", "", "0676ba6z", "0" * 64):
        with pytest.raises(ValueError, match="8 to 63"):
            w._index([replace(prefix, sha256=bad, filename=f"resnet50-{bad}.pth")])
    with pytest.raises(ValueError, match="does not contain"):
        w._index([replace(prefix, sha256="0676ba62")])
    longer = replace(prefix, sha256="0676ba61ab", filename="resnet50-0676ba61ab.pth")
    assert w._index([longer, full]) == {longer.name: longer, full.name: full}


def test_table_rejects_duplicates() -> None:
    info = KNOWN_WEIGHTS["r2d2-waf-n16"]
    with pytest.raises(ValueError, match="duplicate weights name"):
        w._index([info, info])
    with pytest.raises(ValueError, match="duplicate weights filename"):
        w._index([info, replace(info, name="other")])


def test_home_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DELFI_HOME", str(tmp_path / "a"))
    assert w.weights_dir() == tmp_path / "a" / "weights"
    monkeypatch.setenv("DELFI_HOME", str(tmp_path / "b"))
    info = KNOWN_WEIGHTS["r2d2-wasf-n16"]
    assert w.cached_path(info) == tmp_path / "b" / "weights" / "r2d2_WASF_N16.pt"
    monkeypatch.delenv("DELFI_HOME")
    assert w.delfi_home() == Path.home() / ".cache" / "delfi"


def test_download_url_uses_mirror(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    info = KNOWN_WEIGHTS["r2d2-wasf-n16"]
    monkeypatch.delenv("DELFI_WEIGHTS_MIRROR", raising=False)
    assert w.download_url(info) == info.url
    monkeypatch.setenv("DELFI_WEIGHTS_MIRROR", "http://mirror.example/models/")
    assert w.download_url(info) == "http://mirror.example/models/r2d2_WASF_N16.pt"
    monkeypatch.setenv("DELFI_WEIGHTS_MIRROR", str(tmp_path))
    assert w.download_url(info) == (tmp_path / "r2d2_WASF_N16.pt").resolve().as_uri()


def test_sha256_file(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert w.sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert w.sha256_file(str(path), chunk_size=1000) == hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------------


def test_download_verifies_and_caches(server: LocalServer, payload: tuple[WeightsInfo, bytes]) -> None:
    info, data = payload
    out = io.StringIO()
    path = w.download_weights(info, console=Console(file=out, width=300), progress=False)
    assert path == w.cached_path(info) == w.weights_dir() / "toy_weights.pt"
    assert path.read_bytes() == data
    assert w.sha256_file(path) == info.sha256
    assert _weights_dir_entries() == ["toy_weights.pt"]  # no .part left behind
    notice = out.getvalue()
    assert "toy-weights" in notice and "delfi/tests" in notice and "Toy licence 1.0" in notice
    assert server.count("toy_weights.pt") == 1


def test_second_download_is_a_cache_hit(server: LocalServer, payload: tuple[WeightsInfo, bytes]) -> None:
    info, _ = payload
    first = w.download_weights(info, console=_quiet(), progress=False)
    out = io.StringIO()
    second = w.download_weights(info, console=Console(file=out), progress=False)
    assert first == second
    assert server.count("toy_weights.pt") == 1
    assert out.getvalue() == ""  # no licence notice when nothing is downloaded
    w.download_weights(info, console=_quiet(), progress=False, force=True)
    assert server.count("toy_weights.pt") == 2


def test_corrupt_cached_file_is_replaced(server: LocalServer, payload: tuple[WeightsInfo, bytes]) -> None:
    info, data = payload
    target = w.cached_path(info)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the weights")
    path = w.download_weights(info, console=_quiet(), progress=False)
    assert path.read_bytes() == data
    assert server.count("toy_weights.pt") == 1


def test_download_with_progress_bar_and_no_content_length(
    server: LocalServer, payload: tuple[WeightsInfo, bytes]
) -> None:
    info, data = payload
    for url in (info.url, f"{server.url}/nolength/toy_weights.pt"):
        out = io.StringIO()
        console = Console(file=out, force_terminal=True, width=120)
        path = w.download_weights(replace(info, url=url), console=console, progress=True, force=True)
        assert path.read_bytes() == data
        assert "toy_weights.pt" in out.getvalue()
    assert server.count("toy_weights.pt") == 2


def test_download_through_mirror(
    server: LocalServer, payload: tuple[WeightsInfo, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    info, data = payload
    monkeypatch.setenv("DELFI_WEIGHTS_MIRROR", server.url + "/")
    # The official URL is unreachable; only the mirror can serve the file.
    unreachable = replace(info, url=f"http://127.0.0.1:{_free_port()}/toy_weights.pt")
    path = w.download_weights(unreachable, console=_quiet(), progress=False, timeout=5)
    assert path.read_bytes() == data
    assert server.requests == ["/toy_weights.pt"]


def test_download_known_name_through_mirror(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A known name whose mirrored file does not match the table: ChecksumError, nothing cached."""
    (server.root / "r2d2_WAF_N16.pt").write_bytes(b"an impostor")
    monkeypatch.setenv("DELFI_WEIGHTS_MIRROR", server.url)
    with pytest.raises(ChecksumError) as err:
        w.download_weights("r2d2-waf-n16", console=_quiet(), progress=False)
    assert KNOWN_WEIGHTS["r2d2-waf-n16"].sha256 in str(err.value)
    assert f"{server.url}/r2d2_WAF_N16.pt" in str(err.value)
    assert _weights_dir_entries() == []


def test_checksum_mismatch_leaves_nothing(server: LocalServer, payload: tuple[WeightsInfo, bytes]) -> None:
    info, data = payload
    bad = replace(info, sha256="0" * 64)
    with pytest.raises(ChecksumError) as err:
        w.download_weights(bad, console=_quiet(), progress=False)
    message = str(err.value)
    assert "0" * 64 in message  # expected
    assert hashlib.sha256(data).hexdigest() in message  # actual
    assert info.url in message
    assert _weights_dir_entries() == []
    assert not w.cached_path(info).exists()


def _prefix_info(server: LocalServer, data: bytes, prefix: str) -> WeightsInfo:
    """A torch-hub-style entry for `data` on the server, expecting sha256 prefix `prefix`."""
    filename = f"toynet-{prefix}.pth"
    (server.root / filename).write_bytes(data)
    return WeightsInfo(
        name="toynet-imagenet",
        filename=filename,
        url=f"{server.url}/{filename}",
        sha256=prefix,
        preset="",
        licence="Toy licence 2.0",
        source="delfi/tests",
        description="random bytes named the torch hub way",
        sha256_is_prefix=True,
    )


def test_prefix_entry_accepts_a_matching_digest(server: LocalServer) -> None:
    data = os.urandom(200_000)
    full = hashlib.sha256(data).hexdigest()
    info = _prefix_info(server, data, full[:8])
    w._index([info])  # a well-formed entry
    out = io.StringIO()
    path = w.download_weights(info, console=Console(file=out, width=300), progress=False)
    assert path == w.cached_path(info)
    assert path.read_bytes() == data
    assert _weights_dir_entries() == [info.filename]
    assert full in out.getvalue()  # the full digest is printed once known
    # The cached file is verified against the prefix too: a cache hit, no second request.
    again = io.StringIO()
    assert w.download_weights(info, console=Console(file=again), progress=False) == path
    assert again.getvalue() == ""
    assert server.count(info.filename) == 1


def test_prefix_entry_rejects_another_digest(server: LocalServer) -> None:
    data = os.urandom(200_000)
    full = hashlib.sha256(data).hexdigest()
    wrong = format((int(full[:8], 16) + 1) % 16**8, "08x")
    info = _prefix_info(server, data, wrong)
    with pytest.raises(ChecksumError) as err:
        w.download_weights(info, console=_quiet(), progress=False)
    message = str(err.value)
    assert f"a sha256 starting with {wrong}" in message
    assert full in message  # actual
    assert info.url in message
    assert _weights_dir_entries() == []
    # A corrupt cached file is not trusted either: it is downloaded again and rejected.
    target = w.cached_path(info)
    target.write_bytes(data)
    with pytest.raises(ChecksumError):
        w.download_weights(info, console=_quiet(), progress=False)
    assert server.count(info.filename) == 2


def test_prefix_entry_messages_show_the_prefix() -> None:
    info = KNOWN_WEIGHTS["resnet50-imagenet"]
    with pytest.raises(WeightsNotFoundError) as err:
        w.resolve_weights("resnet50-imagenet")
    message = str(err.value)
    assert "sha256 0676ba61… (prefix)" in message
    assert str(w.cached_path(info)) in message
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
    assert "delfi weights download resnet50-imagenet" in message


def test_http_404_is_a_download_error(server: LocalServer, payload: tuple[WeightsInfo, bytes]) -> None:
    info, _ = payload
    missing = replace(info, filename="missing.pt", url=f"{server.url}/missing.pt")
    with pytest.raises(DownloadError) as err:
        w.download_weights(missing, console=_quiet(), progress=False)
    message = str(err.value)
    assert "404" in message
    assert str(w.cached_path(missing)) in message
    assert missing.sha256 in message
    assert missing.url in message
    assert _weights_dir_entries() == []


def test_unreachable_server_is_a_download_error(payload: tuple[WeightsInfo, bytes]) -> None:
    info, _ = payload
    closed = replace(info, url=f"http://127.0.0.1:{_free_port()}/toy_weights.pt")
    with pytest.raises(DownloadError) as err:
        w.download_weights(closed, console=_quiet(), progress=False, timeout=5)
    assert "failed" in str(err.value)
    assert str(w.cached_path(info)) in str(err.value)
    assert _weights_dir_entries() == []


def test_silent_server_times_out(payload: tuple[WeightsInfo, bytes]) -> None:
    info, _ = payload
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        silent = replace(info, url=f"http://127.0.0.1:{port}/toy_weights.pt")
        with pytest.raises(DownloadError, match="timed out"):
            w.download_weights(silent, console=_quiet(), progress=False, timeout=0.3)
    assert _weights_dir_entries() == []


def test_interrupt_removes_partial_file(
    server: LocalServer, payload: tuple[WeightsInfo, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    info, _ = payload
    seen: list[Path] = []

    def interrupted(response, out, digest, advance):  # type: ignore[no-untyped-def]
        out.write(response.read(1000))
        out.flush()
        seen.extend(w.weights_dir().iterdir())
        raise KeyboardInterrupt

    monkeypatch.setattr(w, "_stream_to_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        w.download_weights(info, console=_quiet(), progress=False)
    assert [p.name for p in seen] == [f"toy_weights.pt.part-{os.getpid()}"]
    assert _weights_dir_entries() == []


def test_download_unknown_name() -> None:
    with pytest.raises(UnknownWeightsError, match="r2d2-wasf-n16"):
        w.download_weights("no-such-weights", console=_quiet())


# --------------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------------


def test_resolve_existing_path(tmp_path: Path) -> None:
    plain = tmp_path / "my_model.pt"
    plain.write_bytes(b"x")
    assert w.resolve_weights(plain) == (plain, None)
    assert w.resolve_weights(str(plain)) == (plain, None)
    known = tmp_path / "r2d2_WASF_N16.pt"
    known.write_bytes(b"x")
    assert w.resolve_weights(known) == (known, KNOWN_WEIGHTS["r2d2-wasf-n16"])


def test_resolve_cached_known_name() -> None:
    info = KNOWN_WEIGHTS["r2d2-wasf-n8-big"]
    target = w.cached_path(info)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert w.resolve_weights("r2d2-wasf-n8-big") == (target, info)
    assert w.resolve_weights("R2D2-WASF-N8-BIG") == (target, info)


def test_resolve_missing_known_name() -> None:
    info = KNOWN_WEIGHTS["r2d2-wasf-n16"]
    with pytest.raises(WeightsNotFoundError) as err:
        w.resolve_weights("r2d2-wasf-n16")
    message = str(err.value)
    assert str(w.cached_path(info)) in message
    assert "delfi weights download r2d2-wasf-n16" in message
    assert info.sha256 in message
    assert info.url in message
    assert isinstance(err.value, WeightsError) and isinstance(err.value, FileNotFoundError)


def test_resolve_unknown_name() -> None:
    with pytest.raises(UnknownWeightsError) as err:
        w.resolve_weights("r2d2-wasf-n17")
    message = str(err.value)
    for name in KNOWN_WEIGHTS:
        assert name in message
    assert "Did you mean 'r2d2-wasf-n16'?" in message


def test_resolve_missing_path(tmp_path: Path) -> None:
    for missing in (tmp_path / "nope.pt", str(tmp_path / "nope.pt"), "nope.pt"):
        with pytest.raises(UnknownWeightsError) as err:
            w.resolve_weights(missing)
        assert "No such file" in str(err.value)
        assert "r2d2-wasf-n16" in str(err.value)
    with pytest.raises(UnknownWeightsError, match="is a directory"):
        w.resolve_weights(tmp_path)



# --------------------------------------------------------------------------------------------------
# weights_sha256: one identity per content, however the weights are named
# --------------------------------------------------------------------------------------------------


def test_weights_sha256_by_path_copy_link_and_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(4096)
    digest = hashlib.sha256(data).hexdigest()
    info = WeightsInfo(name="toy-weights", filename="toy_weights.pt", url="http://example.invalid/toy_weights.pt",
                       sha256=digest, preset="toy", licence="test", source="tests", description="random bytes")
    monkeypatch.setitem(KNOWN_WEIGHTS, info.name, info)
    monkeypatch.setenv("DELFI_HOME", str(tmp_path / "home"))
    cached = w.cached_path(info)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data)
    copy = tmp_path / "elsewhere" / "renamed.bin"
    copy.parent.mkdir()
    copy.write_bytes(data)
    link = tmp_path / "link.pt"
    link.symlink_to(copy)
    assert {w.weights_sha256(x) for x in ("toy-weights", "TOY-WEIGHTS", cached, copy, link, str(link))} == {digest}
    assert w.known_weights_by_sha256(digest) is info
    # a file that merely has a known file name is hashed, not trusted
    impostor = tmp_path / "toy_weights.pt"
    impostor.write_bytes(b"something else")
    assert w.weights_sha256(impostor) == hashlib.sha256(b"something else").hexdigest()
    assert w.known_weights_by_sha256(w.weights_sha256(impostor)) is None
    # a changed file is hashed again (the memo is keyed by size and mtime)
    os.utime(impostor, ns=(1, 1))
    impostor.write_bytes(b"changed!")
    assert w.weights_sha256(impostor) == hashlib.sha256(b"changed!").hexdigest()


def test_weights_sha256_errors_are_weights_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELFI_HOME", str(tmp_path / "home"))
    with pytest.raises(w.WeightsNotFoundError, match="r2d2-wasf-n16"):
        w.weights_sha256("r2d2-wasf-n16")
    with pytest.raises(w.UnknownWeightsError, match="No such file"):
        w.weights_sha256(tmp_path / "nothing.pt")
