"""Poisoning attacks behind one registry. Each attack maps a clean training split to a poisoned one and records the
poisons (the forget set) in a manifest; see ``gaussian.py`` and ``backdoor.py``."""

from __future__ import annotations

from .backdoor import BackdoorAttack
from .gaussian import GaussianAttack

ATTACKS = {
    "gaussian": GaussianAttack,
    "backdoor": BackdoorAttack,
}


def get_attack(name: str):
    from ..configs import ConfigError

    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; choose from {sorted(ATTACKS)}")
    return ATTACKS[name]
