"""Unlearning methods behind one registry: one small file per method (config dataclass, pure loss, trainer).

Adding a method = one file + one line in ``METHODS``; the tests parametrize over ``METHODS``."""

from __future__ import annotations

from dataclasses import dataclass

from .ga import GAConfig, GATrainer
from .gd import GDConfig, GDTrainer
from .neggrad_plus import NegGradPlusConfig, NegGradPlusTrainer
from .ngd import NGDConfig, NGDTrainer


@dataclass(frozen=True)
class MethodSpec:
    config_cls: type
    trainer_cls: type
    summary: str


METHODS: dict[str, MethodSpec] = {
    "gd": MethodSpec(GDConfig, GDTrainer, "fine-tune on the retain set"),
    "ngd": MethodSpec(NGDConfig, NGDTrainer, "GD on retain + Gaussian gradient noise"),
    "ga": MethodSpec(GAConfig, GATrainer, "gradient ascent on the forget set"),
    "neggrad_plus": MethodSpec(NegGradPlusConfig, NegGradPlusTrainer, "beta * retain loss - (1 - beta) * forget loss"),
}


def get_method(name: str) -> MethodSpec:
    from ..configs import ConfigError

    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name]


def build_method_config(name: str, args: dict | None):
    from ..configs import build_config

    spec = get_method(name)
    try:
        return build_config(spec.config_cls, args or {})
    except ValueError as e:
        raise type(e)(f"method {name!r}: {e}") from e
