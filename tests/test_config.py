"""Structured configs: presets, strict keys, enum values, dotlist overrides, validation."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from delfi.config import (
    ConfigError,
    build_config,
    config_to_dict,
    dump_config,
    load_preset,
    parse_overrides,
    preset_names,
    preset_path,
)
from delfi.models import resolve_config
from delfi.models.r2d2 import Arch, Precision, PyramidResize, R2D2Config

SHIPPED = ("r2d2", "faster2d2", "r2d2-n8-big", "r2d2-large")

# --------------------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------------------


def test_preset_names_include_the_shipped_presets():
    names = preset_names()
    assert set(SHIPPED) <= set(names)
    assert names == sorted(names)
    assert all(not n.endswith(".yaml") for n in names)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_preset_resolves(name):
    config = resolve_config(name)
    assert isinstance(config, R2D2Config)
    assert config.model == "r2d2"
    assert isinstance(config.arch, Arch)
    assert load_preset(name)["model"] == "r2d2"


def test_preset_values():
    r2d2 = resolve_config("r2d2")
    assert (r2d2.arch, r2d2.mchan, r2d2.dim, r2d2.top_k) == (Arch.quad_l2net, 4, 128, 5000)
    assert r2d2.scale_f == pytest.approx(2**0.25)
    assert (r2d2.min_size, r2d2.max_size, r2d2.min_scale, r2d2.max_scale) == (256, 1024, 0.0, 1.0)
    assert r2d2.weights == "r2d2-wasf-n16"
    fast = resolve_config("faster2d2")
    assert fast.arch is Arch.fast_quad_l2net and fast.weights == "faster2d2-wasf-n16"
    big = resolve_config("r2d2-n8-big")
    assert big.mchan == 6 and big.arch is Arch.quad_l2net
    large = resolve_config("r2d2-large")
    assert (large.min_size, large.max_size, large.min_scale, large.max_scale) == (0, 9999, 0.3, 1.0)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError) as info:
        resolve_config("r2d3")
    message = str(info.value)
    assert "r2d3" in message
    for name in SHIPPED:
        assert name in message


def test_preset_yaml_file_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model: r2d2\narch: fast_quad_l2net\ntop_k: 123\nmin_size: 64\n")
    assert preset_path(path) == path
    config = resolve_config(path)
    assert config.arch is Arch.fast_quad_l2net
    assert (config.top_k, config.min_size) == (123, 64)
    assert config.max_size == 1024  # untouched keys keep the dataclass defaults
    config = resolve_config(str(path), ["top_k=7"])
    assert config.top_k == 7


def test_preset_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve_config(tmp_path / "missing.yaml")
    no_model = tmp_path / "no_model.yaml"
    no_model.write_text("top_k: 3\n")
    with pytest.raises(ConfigError, match="model"):
        load_preset(no_model)
    a_list = tmp_path / "list.yaml"
    a_list.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_preset(a_list)
    unknown_key = tmp_path / "unknown.yaml"
    unknown_key.write_text("model: r2d2\ntopk: 3\n")
    with pytest.raises(ConfigError, match="topk"):
        resolve_config(unknown_key)
    unknown_family = tmp_path / "family.yaml"
    unknown_family.write_text("model: sift\n")
    with pytest.raises(ConfigError, match="sift"):
        resolve_config(unknown_family)


def test_malformed_yaml_preset_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: r2d2\ntop_k: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_preset(bad)


# --------------------------------------------------------------------------------------------------
# strict keys and enum values
# --------------------------------------------------------------------------------------------------


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError) as info:
        resolve_config("r2d2", ["top_kk=10"])
    message = str(info.value)
    assert "top_kk" in message
    assert "top_k" in message.replace("top_kk", "")  # the known keys are listed


def test_unknown_key_in_dict_overrides():
    with pytest.raises(ConfigError, match="reliability_thr"):
        resolve_config("r2d2", {"reliability_thr": 0.5})


def test_wrong_enum_value_lists_allowed_values():
    with pytest.raises(ConfigError) as info:
        resolve_config("r2d2", ["precision=float64"])
    message = str(info.value)
    assert "precision" in message and "float64" in message
    assert "bfloat16" in message and "float32" in message
    with pytest.raises(ConfigError, match="from_original"):
        resolve_config("r2d2", {"pyramid_resize": "nearest"})


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="top_k"):
        resolve_config("r2d2", ["top_k=many"])
    with pytest.raises(ConfigError, match="tile_pixels"):
        resolve_config("r2d2", {"tile_pixels": 1.5})


def test_enum_values_accepted_as_strings():
    config = resolve_config("r2d2", ["precision=bfloat16", "pyramid_resize=from_original", "arch=fast_quad_l2net"])
    assert config.precision is Precision.bfloat16
    assert config.pyramid_resize is PyramidResize.from_original
    assert config.arch is Arch.fast_quad_l2net


# --------------------------------------------------------------------------------------------------
# overrides
# --------------------------------------------------------------------------------------------------


def test_parse_overrides_types():
    parsed = parse_overrides(
        ["top_k=2000", "scale_f=1.5", "fuse_batchnorm=false", "channels_last=true", "weights=null", "arch=quad_l2net", "a.b=3"]
    )
    assert parsed == {
        "top_k": 2000,
        "scale_f": 1.5,
        "fuse_batchnorm": False,
        "channels_last": True,
        "weights": None,
        "arch": "quad_l2net",
        "a": {"b": 3},
    }
    assert type(parsed["top_k"]) is int and type(parsed["scale_f"]) is float
    assert type(parsed["fuse_batchnorm"]) is bool
    assert parse_overrides([]) == {}
    assert parse_overrides(["weights=a=b"]) == {"weights": "a=b"}  # only the first '=' splits


@pytest.mark.parametrize("bad", [["top_k"], ["=3"], ["top_k=1", "oops"]])
def test_parse_overrides_rejects_non_assignments(bad):
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(bad)


def test_parse_overrides_malformed_value_is_a_config_error():
    with pytest.raises(ConfigError, match="override"):
        parse_overrides(["top_k=[1,"])


def test_overrides_applied_over_preset_later_wins():
    config = resolve_config("r2d2-large", ["top_k=10", "fuse_batchnorm=false", "min_scale=0.5"])
    assert config.top_k == 10
    assert config.fuse_batchnorm is False
    assert config.min_scale == 0.5
    assert config.max_size == 9999  # from the preset
    # dict overrides and tuples of strings work too
    assert resolve_config("r2d2", {"top_k": 11}).top_k == 11
    assert resolve_config("r2d2", ("top_k=12",)).top_k == 12
    assert build_config(R2D2Config, {"top_k": 1}, None, {}, {"top_k": 2}).top_k == 2


# --------------------------------------------------------------------------------------------------
# serialisation and validation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_config_to_dict_is_json_and_round_trips(name):
    config = resolve_config(name, ["precision=bfloat16"])
    data = config_to_dict(config)
    assert json.loads(json.dumps(data)) == data
    assert data["precision"] == "bfloat16"
    assert data["arch"] in ("quad_l2net", "fast_quad_l2net")
    assert set(data) == set(R2D2Config.__dataclass_fields__)
    assert build_config(R2D2Config, data) == config


def test_dump_config_writes_yaml_that_loads_back(tmp_path):
    config = resolve_config("faster2d2", ["top_k=42"])
    path = tmp_path / "config.yaml"
    dump_config(config, path)
    assert resolve_config(path) == config


@pytest.mark.parametrize(
    "override, key",
    [
        ("scale_f=1.0", "scale_f"),
        ("scale_f=0.5", "scale_f"),
        ("max_scale=1.5", "max_scale"),
        ("min_scale=0.8", "min_scale"),  # with max_scale=0.5 (added below): min_scale > max_scale
        ("tile_pixels=-1", "tile_pixels"),
        ("max_size=0", "max_size"),
        ("min_size=-2", "min_size"),
    ],
)
def test_validate_errors(override, key):
    overrides = [override] + (["max_scale=0.5"] if key == "min_scale" else [])
    with pytest.raises(ConfigError, match=key):
        resolve_config("r2d2", overrides)


def test_validate_accepts_edges():
    config = resolve_config("r2d2", ["min_scale=1.0", "max_scale=1.0", "scale_f=1.01", "tile_pixels=0"])
    assert (config.min_scale, config.max_scale, config.tile_pixels) == (1.0, 1.0, 0)


def test_build_config_requires_a_dataclass():
    with pytest.raises(TypeError):
        build_config(dict, {})


def test_build_config_without_validate_method():
    @dataclass
    class Small:
        a: int = 1
        b: str = "x"

    assert build_config(Small, {"a": 3}) == Small(3, "x")
    with pytest.raises(ConfigError, match="Key 'c'"):
        build_config(Small, {"c": 3})
