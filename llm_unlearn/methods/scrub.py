"""SCRUB (Kurmanji et al. 2023): a student that starts from the initial model is distilled from the frozen initial
model (the teacher) on the retain set while being pushed away from it on the forget set.

Max-steps on a forget batch maximise KL(teacher || student); min-steps on a retain batch minimise
CE + alpha * KL(teacher || student). The paper runs whole epochs of each (max-steps only in the first ``msteps``
epochs); under a compute budget we count optimizer steps instead: while ``global_step < msteps`` the steps alternate
min, max, min, max, ... (odd steps are max-steps), afterwards every step is a min-step.

Why min first: the student starts equal to the teacher, where the KL and its gradient are exactly zero, so a max-step
at step 0 would spend budget on a zero update. One min-step moves the student off the teacher first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..configs import ConfigError
from .base import CausalLMTask, UnlearnTrainer


@dataclass
class SCRUBConfig:
    """Alternating forget max-steps / retain min-steps of teacher-student distillation."""

    temperature: float = field(default=4.0, metadata={"help": "softmax temperature T of the KL (paper: 4)"})
    alpha: float = field(default=0.001, metadata={"help": "weight of the KL next to CE in min-steps (paper: 0.001)"})
    # Budget-limited runs are short: the tiny recipes spend budget 0.1 in ~30 steps. 10 gives 5 max-steps
    # interleaved with 5 min-steps over the first third of such a run, and leaves the rest to repair utility on the
    # retain set, like the paper's few max epochs followed by min-only epochs. Scale it with the run's step count.
    msteps: int = field(
        default=10, metadata={"help": "optimizer steps during which max-steps alternate with min-steps; 0 = none"}
    )

    def validate(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"method_args.temperature must be a positive number, got {self.temperature}")
        if not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise ConfigError(f"method_args.alpha must be >= 0, got {self.alpha}")
        if self.msteps < 0:
            raise ConfigError(f"method_args.msteps must be >= 0, got {self.msteps}")


def completion_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token logits at the positions that predict a completion token (n, L-1, V) in float32, and their mask."""
    return CausalLMTask().logits(model, batch)


def logits_nll(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean NLL over masked positions from logits already shifted by :func:`completion_logits` (labels unshifted)."""
    return CausalLMTask().logits_nll(logits, {"labels": labels}, mask)


def scrub_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, T: float) -> torch.Tensor:
    """KL(teacher || student) of the next-token distributions at temperature ``T``, mean over masked positions.

    Multiplied by ``T**2`` as in Hinton et al.'s distillation and SCRUB's ``DistillKL``: the gradient of the softened
    KL shrinks like 1/T^2, so the factor keeps ``alpha`` meaning the same at any temperature.

    Args:
        student_logits, teacher_logits: ``(..., V)`` logits.
        mask: ``(...)`` bool, the positions that count.
        T: softmax temperature.
    """
    log_s = torch.log_softmax(student_logits.float() / T, dim=-1)
    log_t = torch.log_softmax(teacher_logits.float() / T, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1).masked_fill(~mask, 0.0)
    return kl.sum() / mask.sum().clamp_min(1) * T**2


class SCRUBTrainer(UnlearnTrainer):
    """Student = the model being trained; teacher = ``self.reference(model)``, the frozen initial model."""

    def is_max_step(self) -> bool:
        return self.state.global_step < self.method_cfg.msteps and self.state.global_step % 2 == 1

    def unlearn_loss(self, model, forget, retain):
        cfg = self.method_cfg
        max_step = self.is_max_step()
        batch = forget if max_step else retain
        self.charge(batch)
        logits, mask = self.task.logits(model, batch)
        with self.reference(model) as teacher:
            self.charge(batch, backward=False)
            teacher_logits, _ = self.task.logits(teacher, batch)
        kl = scrub_kl(logits, teacher_logits, mask, cfg.temperature)
        if max_step:
            return -kl  # the logged training loss mixes -KL_forget and CE + alpha KL_retain steps
        return self.task.logits_nll(logits, batch, mask) + cfg.alpha * kl
