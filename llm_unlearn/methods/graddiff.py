"""GradDiff: gradient ascent on the forget set plus a retain term that holds the model in place,
loss = -l(B_f) + retain_weight * R(B_r), with R the retain NLL or KL(reference || model) on the retain batch.

The KL variant anchors the whole next-token distribution on retain data to the frozen initial model instead of only
the likelihood of the retain labels (open-unlearning's ``GradDiff`` with ``retain_loss_type: KL``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..configs import ConfigError
from .base import UnlearnTrainer
from .scrub import scrub_kl


@dataclass
class GradDiffConfig:
    """Forget ascent + retain descent (NLL) or retain anchoring (KL to the initial model)."""

    retain_loss: Literal["nll", "kl"] = field(
        default="nll",
        metadata={"help": "retain term: 'nll' (descend on retain) or 'kl' (KL(initial || model) on retain tokens)"},
    )
    retain_weight: float = field(default=1.0, metadata={"help": "weight of the retain term; 0 is plain GA"})

    def validate(self) -> None:
        if self.retain_loss not in ("nll", "kl"):
            raise ConfigError(f"method_args.retain_loss must be 'nll' or 'kl', got {self.retain_loss!r}")
        if not (self.retain_weight >= 0 and math.isfinite(self.retain_weight)):
            raise ConfigError(f"method_args.retain_weight must be >= 0, got {self.retain_weight}")


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(reference || model) of next-token distributions, mean over masked (completion) positions."""
    return scrub_kl(logits, ref_logits, mask, T=1.0)


def graddiff_loss(forget_nll: torch.Tensor, retain_term: torch.Tensor, retain_weight: float) -> torch.Tensor:
    return -forget_nll + retain_weight * retain_term


class GradDiffTrainer(UnlearnTrainer):
    def unlearn_loss(self, model, forget, retain):
        cfg = self.method_cfg
        forget_nll = self.nll(model, forget)
        if cfg.retain_weight == 0:  # skip the retain passes rather than spend budget on a zero-weighted term
            return graddiff_loss(forget_nll, torch.zeros_like(forget_nll), 0.0)
        if cfg.retain_loss == "nll":
            return graddiff_loss(forget_nll, self.nll(model, retain), cfg.retain_weight)
        self.charge(retain)
        logits, mask = self.task.logits(model, retain)
        with self.reference(model) as ref:
            self.charge(retain, backward=False)
            ref_logits, _ = self.task.logits(ref, retain)
        return graddiff_loss(forget_nll, kl_to_reference(logits, ref_logits, mask), cfg.retain_weight)
