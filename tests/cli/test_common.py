"""Shared command-line pieces: outputs among inputs, output files, failure lists."""

from __future__ import annotations

import pytest
import typer
from rich.console import Console

from delfi.cli.common import (
    FAILURE_LIST_MARK,
    prepare_output_file,
    refuse_output_among_inputs,
    report_failures,
    write_failure_list,
)

ROWS = [(f"img{i}.png", "not an image") for i in range(25)]


def test_a_long_failure_list_goes_to_its_file_and_replaces_only_its_own(tmp_path, capsys):
    path = tmp_path / "f.h5.failures.tsv"
    console = Console(file=None, width=100)
    assert report_failures(console, "failed", ["image", "reason"], ROWS, path) == path
    lines = path.read_text().splitlines()
    assert lines[0].startswith(FAILURE_LIST_MARK) and len(lines) == 26
    assert write_failure_list(path, ["image", "reason"], ROWS[:3]) == path  # an earlier list: replaced
    assert len(path.read_text().splitlines()) == 4


def test_a_file_delfi_did_not_make_is_never_replaced(tmp_path, capsys):
    path = tmp_path / "notes.tsv"
    path.write_text("my own notes\n")
    assert write_failure_list(path, ["image", "reason"], ROWS) is None
    assert path.read_text() == "my own notes\n"
    assert "not a delfi failure list" in capsys.readouterr().err


def test_an_unwritable_folder_warns_instead_of_failing(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert write_failure_list(blocker / "list.tsv", ["image", "reason"], ROWS) is None
    assert "could not be written" in capsys.readouterr().err


def test_output_checks(tmp_path):
    data = tmp_path / "f.h5"
    data.write_text("x")
    with pytest.raises(typer.Exit):
        refuse_output_among_inputs(tmp_path / "." / "f.h5", [None, data])
    refuse_output_among_inputs(tmp_path / "g.h5", [data])  # another file: fine
    with pytest.raises(typer.Exit):
        prepare_output_file(tmp_path)  # a folder
    made = prepare_output_file(tmp_path / "new" / "deeper" / "p.txt")
    assert made.parent.is_dir()


def test_failure_list_of_the_current_folder_sits_beside_it(tmp_path, monkeypatch):
    from delfi.cli.common import failure_list_path

    monkeypatch.chdir(tmp_path)
    assert failure_list_path(".") == tmp_path.parent / f"{tmp_path.name}.failures.tsv"
    assert failure_list_path("f.h5").name == "f.h5.failures.tsv"
