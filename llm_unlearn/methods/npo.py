"""NPO, negative preference optimization (Zhang et al. 2024): DPO with the forget example as the only (rejected)
response, loss = -forget_weight (2/beta) E[log sigmoid(-beta (log pi(y|x) - log pi_ref(y|x)))] + retain_weight R(B_r),
with R the retain NLL (the authors' ``npo_grad_diff``) or KL(reference || model) on the retain batch (their
``npo_KL``; ``retain_loss: kl``, the same KL and ``kl_positions`` as GradDiff's, see :mod:`.graddiff`).

Unlike GA, whose gradient grows without bound as the forget likelihood falls, NPO's gradient is GA's reweighted by
sigmoid(beta * log-ratio), which vanishes once an example is well below the reference: collapse is exponentially
slower. As beta -> 0 the forget term tends to GA (shifted by a constant).

Defaults: beta 0.1, forget_weight = retain_weight = 1, as in the authors' TOFU config (github
licong-lin/negative-preference-optimization, ``TOFU/config/forget.yaml``: ``npo_coeff``, ``grad_diff_coeff`` and
``KL_coeff`` all 1) and open-unlearning's ``configs/trainer/NPO.yaml`` (gamma = alpha = 1, beta 0.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from ..configs import ConfigError
from .base import UnlearnTrainer
from .graddiff import KL_POSITIONS_HELP, RETAIN_LOSS_HELP, check_forget_retain, retain_term
from ..registry import register_method


@dataclass
class NPOConfig:
    """NPO on the forget set against the frozen initial model, plus retain NLL or KL to the initial model."""

    beta: float = field(default=0.1, metadata={"help": "inverse temperature of the log-ratio (paper: 0.1)"})
    retain_weight: float = field(
        default=1.0, metadata={"help": "weight of the retain term; 0 disables it (authors: 1)"}
    )
    forget_weight: float = field(
        default=1.0,
        metadata={"help": "weight of the NPO forget term (authors' npo_coeff: 1; open-unlearning gamma: 1)"},
    )
    retain_loss: Literal["nll", "kl"] = field(default="nll", metadata={"help": RETAIN_LOSS_HELP})
    kl_positions: Literal["all", "completion"] = field(default="all", metadata={"help": KL_POSITIONS_HELP})

    def validate(self) -> None:
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ConfigError(f"method_args.beta must be a positive number, got {self.beta}")
        check_forget_retain(self)


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """The NPO forget loss from per-example sequence log-probabilities (sum over completion tokens).

    Args:
        logp: ``(n,)`` log pi_theta(y|x) of the model being trained.
        ref_logp: ``(n,)`` log pi_ref(y|x) of the frozen initial model.
        beta: inverse temperature, > 0.

    Equals ``(2 / beta) * log 2`` where the model matches the reference.
    """
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp)).mean()


@register_method(
    "npo",
    config=NPOConfig,
    summary="negative preference optimisation vs the initial model + retain NLL",
    needs_reference=True,
)
class NPOTrainer(UnlearnTrainer):
    def unlearn_loss(self, model, forget, retain):
        cfg = self.method_cfg
        loss = 0.0
        if cfg.forget_weight > 0:  # zero-weighted terms are skipped so no budget goes to an unused pass
            self.charge(forget)
            logp = self.task.sequence_logps(model, forget)
            with self.reference(model) as ref:
                self.charge(forget, backward=False)
                ref_logp = self.task.sequence_logps(ref, forget)
            loss = cfg.forget_weight * npo_loss(logp, ref_logp, cfg.beta)
        if cfg.retain_weight > 0:
            loss = loss + cfg.retain_weight * retain_term(self, model, retain, cfg)
        return loss
