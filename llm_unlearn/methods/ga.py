"""GA: gradient ascent on the forget set, theta <- theta + eta grad l(B_f). Destroys utility fast; often diverges."""

from __future__ import annotations

from dataclasses import dataclass

from .base import UnlearnTrainer
from ..registry import register_method


@dataclass
class GAConfig:
    """Gradient ascent on the forget set; no knobs beyond the shared ones (lr, budget)."""


def ga_loss(forget_nll):
    return -forget_nll


@register_method("ga", config=GAConfig, summary="gradient ascent on the forget set")
class GATrainer(UnlearnTrainer):
    def unlearn_loss(self, model, forget, retain):
        return ga_loss(self.nll(model, forget))
