"""results.json writing: JSON-safe values, atomic replace."""

from __future__ import annotations

import json

import numpy as np

from delfi.eval.results import json_safe, report_json, write_json


def test_json_safe_values():
    data = {"a": float("nan"), "b": [np.float32(0.5), np.int64(3), (float("inf"), 1)], "c": np.arange(2), "d": "x"}
    assert json_safe(data) == {"a": None, "b": [0.5, 3, [None, 1]], "c": [0, 1], "d": "x"}


def test_write_json_is_atomic_and_sorted(tmp_path):
    path = write_json(tmp_path / "r.json", {"b": np.float64(1.5), "a": float("nan")})
    assert path.read_text().index('"a"') < path.read_text().index('"b"')
    assert json.loads(path.read_text()) == {"a": None, "b": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left


def test_report_json_fields():
    out = report_json("evd", {"mma": float("nan")}, config={"k": 1}, n_extracted=2, seconds=1.0, pairs=[], extra="x")
    assert out["benchmark"] == "evd" and out["mma"] is None and out["extra"] == "x" and "delfi_version" in out
