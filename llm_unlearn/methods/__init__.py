"""Unlearning methods behind one registry: one small file per method (config dataclass, pure loss, trainer).

Adding a method = one file + one line in ``METHODS``; the tests parametrize over ``METHODS``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .cf_k import CFKConfig, CFKTrainer, prepare_cf_k
from .eu_k import EUKConfig, EUKTrainer, prepare_eu_k
from .ga import GAConfig, GATrainer
from .gd import GDConfig, GDTrainer
from .graddiff import GradDiffConfig, GradDiffTrainer
from .neggrad_plus import NegGradPlusConfig, NegGradPlusTrainer
from .ngd import NGDConfig, NGDTrainer
from .npo import NPOConfig, NPOTrainer
from .rmu import RMUConfig, RMUTrainer, prepare_rmu
from .scrub import SCRUBConfig, SCRUBTrainer
from .simnpo import SimNPOConfig, SimNPOTrainer
from .ssd import SSDConfig, SSDTrainer


@dataclass(frozen=True)
class MethodSpec:
    config_cls: type
    trainer_cls: type
    summary: str
    # Full-parameter runs load a frozen copy of the initial model as the trainer's reference (KL/NPO/SCRUB teachers).
    needs_reference: bool = False
    # Optional hook ``prepare_model(model, method_cfg, unlearn_cfg) -> model`` run before LoRA wrapping, e.g. to
    # re-initialise or freeze blocks (EU-k, CF-k). It may return a peft model itself to choose which layers adapt.
    prepare_model: Callable | None = None
    # False for methods that must edit the base weights themselves (SSD, EU-k): they run full-parameter whatever
    # ``use_peft`` says, and their output is a full model rather than an adapter.
    supports_peft: bool = True


def uses_adapter(method: str, use_peft: bool) -> bool:
    """Whether an unlearning run of ``method`` trains (and saves) a LoRA adapter."""
    return use_peft and get_method(method).supports_peft


METHODS: dict[str, MethodSpec] = {
    "gd": MethodSpec(GDConfig, GDTrainer, "fine-tune on the retain set"),
    "ngd": MethodSpec(NGDConfig, NGDTrainer, "GD on retain + Gaussian gradient noise"),
    "ga": MethodSpec(GAConfig, GATrainer, "gradient ascent on the forget set"),
    "neggrad_plus": MethodSpec(NegGradPlusConfig, NegGradPlusTrainer, "beta * retain loss - (1 - beta) * forget loss"),
    "eu_k": MethodSpec(
        EUKConfig,
        EUKTrainer,
        "re-initialise the last k layers, train them on retain",
        prepare_model=prepare_eu_k,
        supports_peft=False,
    ),
    "cf_k": MethodSpec(
        CFKConfig, CFKTrainer, "fine-tune only the last k layers on retain", prepare_model=prepare_cf_k
    ),
    "scrub": MethodSpec(
        SCRUBConfig, SCRUBTrainer, "teacher-student KL: forget max-steps, retain min-steps", needs_reference=True
    ),
    "ssd": MethodSpec(
        SSDConfig, SSDTrainer, "selective synaptic dampening (Fisher ratio, no training)", supports_peft=False
    ),
    "graddiff": MethodSpec(
        GradDiffConfig, GradDiffTrainer, "forget ascent + retain NLL or KL to the initial model", needs_reference=True
    ),
    "npo": MethodSpec(
        NPOConfig,
        NPOTrainer,
        "negative preference optimisation vs the initial model + retain NLL",
        needs_reference=True,
    ),
    "simnpo": MethodSpec(SimNPOConfig, SimNPOTrainer, "reference-free length-normalised NPO + retain NLL"),
    "rmu": MethodSpec(
        RMUConfig,
        RMUTrainer,
        "steer forget activations to a random direction, anchor retain",
        needs_reference=True,
        prepare_model=prepare_rmu,
    ),
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
