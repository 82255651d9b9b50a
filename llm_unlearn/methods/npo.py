"""NPO, negative preference optimization (Zhang et al. 2024): DPO with the forget example as the only (rejected)
response, loss = -(2/beta) E[log sigmoid(-beta (log pi(y|x) - log pi_ref(y|x)))] + retain_weight * l(B_r).

Unlike GA, whose gradient grows without bound as the forget likelihood falls, NPO's gradient is GA's reweighted by
sigmoid(beta * log-ratio), which vanishes once an example is well below the reference: collapse is exponentially
slower. As beta -> 0 the forget term tends to GA (shifted by a constant).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..configs import ConfigError
from .base import UnlearnTrainer


@dataclass
class NPOConfig:
    """NPO on the forget set against the frozen initial model, plus retain NLL."""

    beta: float = field(default=0.1, metadata={"help": "inverse temperature of the log-ratio (paper: 0.1)"})
    retain_weight: float = field(default=1.0, metadata={"help": "weight of the retain NLL; 0 disables it"})

    def validate(self) -> None:
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ConfigError(f"method_args.beta must be a positive number, got {self.beta}")
        if not (self.retain_weight >= 0 and math.isfinite(self.retain_weight)):
            raise ConfigError(f"method_args.retain_weight must be >= 0, got {self.retain_weight}")


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """The NPO forget loss from per-example sequence log-probabilities (sum over completion tokens).

    Args:
        logp: ``(n,)`` log pi_theta(y|x) of the model being trained.
        ref_logp: ``(n,)`` log pi_ref(y|x) of the frozen initial model.
        beta: inverse temperature, > 0.

    Equals ``(2 / beta) * log 2`` where the model matches the reference.
    """
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp)).mean()


class NPOTrainer(UnlearnTrainer):
    def unlearn_loss(self, model, forget, retain):
        cfg = self.method_cfg
        self.charge(forget)
        logp = self.task.sequence_logps(model, forget)
        with self.reference(model) as ref:
            self.charge(forget, backward=False)
            ref_logp = self.task.sequence_logps(ref, forget)
        loss = npo_loss(logp, ref_logp, cfg.beta)
        if cfg.retain_weight > 0:  # skipped at 0 so no budget goes to an unused retain pass
            loss = loss + cfg.retain_weight * self.nll(model, retain)
        return loss
