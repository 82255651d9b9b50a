"""SimNPO (Fan et al. 2024, "Simplicity Prevails"): NPO without the reference model, with a length-normalised
reward, loss = -forget_weight (2/beta) E[log sigmoid(-(beta/|y|) log pi(y|x) - gamma)] + retain_weight * l(B_r).

Sign conventions: ``logp`` (<= 0) is the summed log-probability of the completion, so -(beta/|y|) logp is beta times
the mean token NLL; the loss falls towards 0 as that NLL rises. gamma >= 0 is a margin: an example's gradient weight
sigmoid(gamma - beta * NLL) stays above 1/2 until its mean NLL exceeds gamma/beta. This is the paper's equation; the
authors' code writes the same loss as ``-logsigmoid(beta * (nll / |y| - gamma_code))``, i.e. their ``gamma_code``
equals our ``gamma / beta`` (identical at the default 0). Dropping the reference removes NPO's reference bias (at the
start theta = ref, so NPO weighs every forget example alike, whatever its difficulty); dividing by |y| stops long
completions dominating.

Defaults are the SimNPO authors' TOFU setting (github OPTML-Group/Unlearn-Simple, ``TOFU/config/forget.yaml`` with
``forget_loss: simnpo_grad_diff``): beta 2.5, gamma 0, forget:retain = ``npo_coeff`` : ``grad_diff_coeff`` =
0.1375 : 1. open-unlearning (``configs/trainer/SimNPO.yaml``) instead uses beta 4.5 with gamma (its forget weight)
0.125, alpha (its retain weight) 1 and delta (the authors' ``gamma``) 0. Before ``forget_weight`` existed this
project weighted the forget term 1, i.e. about 7x the authors' push on the forget set relative to the retain NLL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..configs import ConfigError
from ..tasks.causal_lm import CausalLMTask
from .base import UnlearnTrainer
from .graddiff import check_forget_retain
from ..registry import register_method


@dataclass
class SimNPOConfig:
    """Reference-free, length-normalised NPO plus retain NLL."""

    beta: float = field(default=2.5, metadata={"help": "inverse temperature of the mean token log-prob (paper: 2.5)"})
    gamma: float = field(default=0.0, metadata={"help": "reward margin, >= 0 (paper: 0 on most benchmarks)"})
    retain_weight: float = field(
        default=1.0, metadata={"help": "weight of the retain NLL; 0 disables it (authors' grad_diff_coeff: 1)"}
    )
    forget_weight: float = field(
        default=0.1375,
        metadata={
            "help": "weight of the SimNPO forget term (authors' TOFU npo_coeff: 0.1375; open-unlearning: 0.125)"
        },
    )

    def validate(self) -> None:
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ConfigError(f"method_args.beta must be a positive number, got {self.beta}")
        if not (self.gamma >= 0 and math.isfinite(self.gamma)):
            raise ConfigError(f"method_args.gamma must be >= 0, got {self.gamma}")
        check_forget_retain(self)


def simnpo_loss(logp: torch.Tensor, lengths: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """The SimNPO forget loss.

    Args:
        logp: ``(n,)`` summed completion-token log-probabilities log pi_theta(y|x).
        lengths: ``(n,)`` number of completion tokens |y| (clamped to >= 1).
        beta: inverse temperature, > 0.
        gamma: reward margin.
    """
    return -(2.0 / beta) * F.logsigmoid(-(beta / lengths.clamp_min(1).to(logp.dtype)) * logp - gamma).mean()


def completion_lengths(batch: dict) -> torch.Tensor:
    """|y| per example: the label positions that count (the first token is never predicted)."""
    return CausalLMTask().lengths(batch)


@register_method("simnpo", config=SimNPOConfig, summary="reference-free length-normalised NPO + retain NLL")
class SimNPOTrainer(UnlearnTrainer):
    def unlearn_loss(self, model, forget, retain):
        cfg = self.method_cfg
        loss = 0.0
        if cfg.forget_weight > 0:  # zero-weighted terms are skipped so no budget goes to an unused pass
            self.charge(forget)
            logp = self.task.sequence_logps(model, forget)
            loss = cfg.forget_weight * simnpo_loss(logp, self.task.lengths(forget), cfg.beta, cfg.gamma)
        if cfg.retain_weight > 0:
            loss = loss + cfg.retain_weight * self.nll(model, retain)
        return loss
