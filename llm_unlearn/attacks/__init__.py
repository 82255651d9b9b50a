"""The LLM track's poisoning attacks: one file each (config dataclass + attack class with its hooks, see
``base.py``), registered with ``@register_attack(name, config=..., track="llm")``. Importing this package registers
the built-ins; plugins register more (``llm_unlearn.registry``).

``ATTACKS`` is the registry's table of the llm track (name -> ``AttackSpec``); ``get_attack(name)`` looks one up (an
unknown name is a ``ConfigError`` naming the choices).
"""

from __future__ import annotations

from ..registry import ATTACKS as _BY_TRACK
from ..registry import AttackSpec, register_attack
from .base import Attack, attack_from_manifest, build_attack, eval_keys

# Registration order is the order of the eval keys in eval_results.json (asr before the gus_* keys).
from .backdoor import BackdoorAttack, BackdoorConfig  # registers "backdoor"
from .gaussian import GaussianAttack, GaussianConfig  # registers "gaussian"
from .gradient_canceling import GradientCancelingAttack, GradientCancelingConfig  # registers "gradient_canceling"

ATTACKS: dict[str, AttackSpec] = _BY_TRACK.setdefault("llm", {})


def get_attack(name: str) -> AttackSpec:
    """The llm-track attack ``name`` (built-ins and plugins)."""
    from ..registry import get_attack as _get

    return _get(name, "llm")


__all__ = [
    "ATTACKS",
    "Attack",
    "AttackSpec",
    "BackdoorAttack",
    "BackdoorConfig",
    "GaussianAttack",
    "GaussianConfig",
    "GradientCancelingAttack",
    "GradientCancelingConfig",
    "attack_from_manifest",
    "build_attack",
    "eval_keys",
    "get_attack",
    "register_attack",
]
