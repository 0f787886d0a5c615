"""``delfi weights`` list / download / path, through a local root app and a server on 127.0.0.1."""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from delfi.cli import weights as weights_cli
from delfi.models import weights as w

runner = CliRunner()


@pytest.fixture
def cli() -> typer.Typer:
    """A tiny root app registering the weights sub-app the way delfi's main app does."""
    root = typer.Typer()
    root.add_typer(weights_cli.app, name="weights")

    @root.callback()
    def _root() -> None:  # keeps the root a group
        pass

    return root


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, list[str]]]:
    """Serve tmp_path/"mirror" on 127.0.0.1 and point DELFI_WEIGHTS_MIRROR at it."""
    root = tmp_path / "mirror"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    monkeypatch.setenv("DELFI_WEIGHTS_MIRROR", f"http://127.0.0.1:{httpd.server_address[1]}")
    try:
        yield root, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_no_args_shows_help(cli: typer.Typer) -> None:
    result = runner.invoke(cli, ["weights"])
    assert "list" in result.output and "download" in result.output and "path" in result.output


def test_list_shows_names_and_full_checksums(cli: typer.Typer) -> None:
    result = runner.invoke(cli, ["weights", "list"])
    assert result.exit_code == 0, result.output
    for info in w.list_weights():
        assert info.name in result.stdout
        assert info.sha256_text in result.stdout
    assert "naver/r2d2" in result.stdout
    assert " yes " not in result.stdout  # fresh DELFI_HOME: nothing cached


def test_list_shows_torchvision_backbones_with_prefixes(cli: typer.Typer) -> None:
    result = runner.invoke(cli, ["weights", "list"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for name, prefix in (("resnet50-imagenet", "0676ba61"), ("resnet101-imagenet", "63fe2227")):
        line = next(line for line in lines if name in line)
        assert f"{prefix}… (prefix)" in line
        assert "pytorch/vision" in line
        assert " - " in line  # no preset: a backbone
        assert "yes" not in line
    assert "(prefix)" not in next(line for line in lines if "r2d2-wasf-n16" in line)
    assert "BSD-3-Clause" in result.stdout


def test_list_marks_cached_weights(cli: typer.Typer) -> None:
    info = w.KNOWN_WEIGHTS["faster2d2-wasf-n16"]
    w.cached_path(info).parent.mkdir(parents=True)
    w.cached_path(info).write_bytes(b"x")
    result = runner.invoke(cli, ["weights", "list"])
    assert result.exit_code == 0
    line = next(line for line in result.stdout.splitlines() if info.name in line)
    assert "yes" in line
    other = next(line for line in result.stdout.splitlines() if "r2d2-waf-n16" in line)
    assert "yes" not in other


def test_download_real_checkpoint_from_mirror(
    cli: typer.Typer, shared_data: Path, mirror: tuple[Path, list[str]]
) -> None:
    source = shared_data / "r2d2/models/r2d2_WASF_N16.pt"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    root, requests = mirror
    shutil.copyfile(source, root / source.name)
    info = w.KNOWN_WEIGHTS["r2d2-wasf-n16"]

    result = runner.invoke(cli, ["weights", "download", "r2d2-wasf-n16", "--no-progress"])
    assert result.exit_code == 0, result.output
    target = w.cached_path(info)
    assert result.stdout.strip() == str(target)
    assert w.sha256_file(target) == info.sha256
    assert info.licence in result.stderr
    assert requests == ["/r2d2_WASF_N16.pt"]

    again = runner.invoke(cli, ["weights", "download", "r2d2-wasf-n16"])
    assert again.exit_code == 0
    assert requests == ["/r2d2_WASF_N16.pt"]  # verified cache hit, no second request

    path = runner.invoke(cli, ["weights", "path", "r2d2-wasf-n16"])
    assert path.exit_code == 0
    assert path.stdout.strip() == str(target)


def test_download_unknown_name_is_a_usage_error(cli: typer.Typer) -> None:
    result = runner.invoke(cli, ["weights", "download", "r2d2-wasf-n17"])
    assert result.exit_code == 2
    assert "r2d2-wasf-n16" in result.stderr
    assert "Traceback" not in result.output


def test_download_failure_exits_1(cli: typer.Typer, mirror: tuple[Path, list[str]]) -> None:
    info = w.KNOWN_WEIGHTS["r2d2-waf-n16"]  # the mirror is empty: HTTP 404
    result = runner.invoke(cli, ["weights", "download", info.name, "--no-progress"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "404" in result.stderr
    assert str(w.cached_path(info)) in result.stderr
    assert info.sha256 in result.stderr
    assert "Traceback" not in result.output
    assert not w.weights_dir().exists() or not any(w.weights_dir().iterdir())


def test_download_checksum_failure_exits_1(cli: typer.Typer, mirror: tuple[Path, list[str]]) -> None:
    root, _ = mirror
    info = w.KNOWN_WEIGHTS["r2d2-waf-n16"]
    (root / info.filename).write_bytes(b"not the real checkpoint")
    result = runner.invoke(cli, ["weights", "download", info.name, "--no-progress"])
    assert result.exit_code == 1
    assert info.sha256 in result.stderr
    assert not any(w.weights_dir().iterdir())


def test_path_missing_exits_1(cli: typer.Typer) -> None:
    info = w.KNOWN_WEIGHTS["r2d2-wasf-n8-big"]
    result = runner.invoke(cli, ["weights", "path", info.name])
    assert result.exit_code == 1
    assert str(w.cached_path(info)) in result.stderr
    assert f"delfi weights download {info.name}" in result.stderr


def test_path_unknown_exits_2(cli: typer.Typer) -> None:
    result = runner.invoke(cli, ["weights", "path", "nope"])
    assert result.exit_code == 2
    assert "faster2d2-wasf-n16" in result.stderr
