"""GD: keep fine-tuning on the retain set only (the paper's "fine-tune" baseline): theta <- theta - eta grad l(B_r)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import UnlearnTrainer
from ..registry import register_method


@dataclass
class GDConfig:
    """Gradient descent on the retain set; no knobs beyond the shared ones (lr, budget)."""


def gd_loss(retain_nll):
    return retain_nll


@register_method("gd", config=GDConfig, summary="fine-tune on the retain set")
class GDTrainer(UnlearnTrainer):
    reads_forget = False

    def unlearn_loss(self, model, forget, retain):
        return gd_loss(self.nll(model, retain))
