"""The command line on a fresh machine: no weights cached, no network; the embedded default model."""

from __future__ import annotations

from delfi.io.features import FeatureStore
from delfi.models import weights as w
from tests.cli.conftest import invoke


def test_extract_without_weights_uses_the_embedded_default(tmp_path):
    from delfi.demo.photos import PHOTOS, photo_path

    photos = [photo_path(p) for p in PHOTOS[:2]]
    out = tmp_path / "feats.h5"
    result = invoke("extract", *photos, "--out", out)
    assert result.exit_code == 0, result.output
    assert "delfi-lite" in result.output and "random" not in result.output.lower()
    with FeatureStore(out) as store:
        assert len(store.names()) == 2
        for name in store.names():
            features = store.get(name)
            assert 500 <= len(features) <= 5000 and features.descriptors.shape[1] == 64


def test_weights_list_and_path_show_the_embedded_default(tmp_path):
    info = w.get_weights_info(w.DEFAULT_WEIGHTS)
    listed = invoke("weights", "list")
    assert listed.exit_code == 0
    assert "delfi-lite" in listed.output and info.sha256 in listed.output and "embedded" in listed.output
    assert "(the default)" in listed.output and "recipes/default_model/train.py" in listed.output
    path = invoke("weights", "path", "delfi-lite")
    assert path.exit_code == 0 and path.output.strip() == str(w.cached_path(info))
    download = invoke("weights", "download", "delfi-lite", "--no-progress")
    assert download.exit_code == 0 and download.output.strip().endswith(info.filename)
