"""`ResNetArchitecture`: how a ResNet-based network (`DELFNet`, `DELGNet`, `MultiLevelNet`) names the
constructor settings that fix its parameters (``config_keys``): built from an extractor config,
reported by `architecture()` (what a checkpoint stores), compared with a config."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["ResNetArchitecture"]


class ResNetArchitecture:
    """Mixin of an `nn.Module` with ``family``, ``config_keys`` (``stride_in`` among them) and a
    constructor taking those keys."""

    family: str
    config_keys: tuple[str, ...]

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any):
        """The network of an extractor config (dataclass or dict with at least `config_keys`)."""
        from delfi.models.networks import _setting

        return cls(**{key: _setting(config, key) for key in cls.config_keys}, **kwargs)

    def architecture(self) -> dict[str, Any]:
        """The settings that rebuild this network (`config_keys`)."""
        return {key: self._architecture_value(key) for key in self.config_keys}

    def _architecture_value(self, key: str) -> Any:
        return getattr(self, key)

    @classmethod
    def architecture_of(cls, config: Any) -> dict[str, Any]:
        """The `architecture()` a network built from ``config`` would have (nothing built)."""
        from delfi.models.networks import _setting, _stride_in

        out = {key: _setting(config, key) for key in cls.config_keys}
        out["stride_in"] = _stride_in(out["stride_in"])
        return out

    @classmethod
    def matches_config(cls, network: nn.Module, config: Any) -> bool:
        """Whether ``network`` is the one ``config`` describes."""
        from delfi.models.networks import same_setting

        own, wanted = network.architecture(), cls.architecture_of(config)
        return all(same_setting(cls.family, k, own.get(k), v) for k, v in wanted.items())
