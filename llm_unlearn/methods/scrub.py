"""SCRUB (Kurmanji et al. 2023): a student that starts from the initial model is distilled from the frozen initial
model (the teacher) on the retain set while being pushed away from it on the forget set.

Max-steps on a forget batch maximise KL(teacher || student); min-steps on a retain batch minimise
CE + alpha * KL(teacher || student). As in the authors' code (github meghdadk/SCRUB, the ``for epoch ...: if epoch <=
msteps: train_distill(..., forget_loader, "maximize"); train_distill(..., retain_loader, "minimize")`` loop of their
notebooks), the run is a sequence of whole epochs: in each of the first ``msteps`` rounds a max epoch over the whole
forget set, then a min epoch over the retain set; afterwards min epochs only. Under a compute budget the schedule is
simply cut where the budget ends; every pass (student forward+backward, teacher forward) is charged.

How batches follow the schedule. :func:`scrub_schedule` lays out, optimizer step by optimizer step, which examples
each step sees: a max step takes ``per_step`` examples of a seeded permutation of the forget set, a min step of the
retain set (``per_step`` = batch size x gradient accumulation x processes, so every process and micro-batch of one
step is in the same phase). The last step of a phase is filled up by cycling the permutation, so every example is
seen at least once per epoch. The order depends on (seed, round) alone, so a resumed run replays it.

With a deterministic model (no dropout) the student equals the teacher at the start, where the KL and its gradient
are zero: the first max epoch then moves nothing (the authors' models train with BatchNorm/dropout in train mode, where
it does). That is the authors' algorithm; we do not reorder it. The authors also use a smaller forget batch (32 vs
128) and weigh CE by 0.99; here both phases use ``per_device_train_batch_size`` and CE weight 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..configs import ConfigError
from ..tasks.causal_lm import CausalLMTask
from .base import UnlearnTrainer
from ..registry import register_method


@dataclass
class SCRUBConfig:
    """Alternating forget max-steps / retain min-steps of teacher-student distillation."""

    temperature: float = field(default=4.0, metadata={"help": "softmax temperature T of the KL (paper: 4)"})
    alpha: float = field(default=0.001, metadata={"help": "weight of the KL next to CE in min-steps (paper: 0.001)"})
    # The authors' large-scale runs: msteps 2 of 3 epochs (their CIFAR-10/100 notebooks use 2-5).
    msteps: int = field(
        default=2,
        metadata={
            "help": "rounds (forget-set epochs) in which a max epoch over the whole forget set precedes the min epoch "
            "over the retain set; later rounds are min epochs only; 0 = plain distillation (authors: 2)"
        },
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


def _permutation(n: int, seed: int, phase: int, round_: int) -> np.ndarray:
    state = np.random.SeedSequence([int(seed) % 2**63, phase, round_]).generate_state(2, np.uint32)
    return np.random.default_rng([int(state[0]), int(state[1])]).permutation(n)


def scrub_schedule(
    n_forget: int, n_retain: int, per_step: int, msteps: int, n_steps: int, seed: int
) -> list[tuple[str, np.ndarray]]:
    """Step by step, the phase ("max" on the forget set or "min" on the retain set) and the ``per_step`` example
    indices of each of ``n_steps`` optimizer steps: rounds of [a max epoch over the forget set if round < msteps,
    then a min epoch over the retain set]. An epoch over n examples takes ceil(n / per_step) steps; its last step is
    filled up from the start of the same permutation."""
    if n_forget < 1 or n_retain < 1 or per_step < 1:
        raise ValueError(f"need non-empty sets and per_step >= 1, got {n_forget}, {n_retain}, {per_step}")
    steps: list[tuple[str, np.ndarray]] = []
    round_ = 0
    while len(steps) < n_steps:
        phases = ([("max", n_forget, 0)] if round_ < msteps else []) + [("min", n_retain, 1)]
        for kind, n, phase in phases:
            perm = _permutation(n, seed, phase, round_)
            n_phase_steps = math.ceil(n / per_step)
            idx = np.resize(perm, n_phase_steps * per_step)  # cycles the permutation to fill the last step
            steps += [(kind, idx[j * per_step : (j + 1) * per_step]) for j in range(n_phase_steps)]
        round_ += 1
    return steps[:n_steps]


class ScrubScheduleDataset(torch.utils.data.Dataset):
    """The items of :func:`scrub_schedule` in training order: ``{"forget": x}`` in max steps, ``{"retain": x}`` in
    min steps. Read sequentially: batch i of a process is global batch i * processes + rank (accelerate's sharding),
    and all batches of one optimizer step share a phase."""

    def __init__(self, forget, retain, schedule: list[tuple[str, np.ndarray]]):
        self.forget, self.retain = forget, retain
        self.kinds = [kind for kind, _ in schedule]
        self.per_step = len(schedule[0][1]) if schedule else 1
        self.index = np.concatenate([idx for _, idx in schedule]) if schedule else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        j = int(self.index[i])
        if self.kinds[i // self.per_step] == "max":
            return {"forget": self.forget[j]}
        return {"retain": self.retain[j]}


@register_method(
    "scrub",
    config=SCRUBConfig,
    summary="teacher-student KL: forget max-steps, retain min-steps",
    needs_reference=True,
)
class SCRUBTrainer(UnlearnTrainer):
    """Student = the model being trained; teacher = ``self.reference(model)``, the frozen initial model.

    The paired forget/retain dataset the stage passes in is replaced by :class:`ScrubScheduleDataset` (read in order),
    sized to ``max_steps`` optimizer steps: which half a batch holds says whether its step is a max or a min step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        pairs = self.train_dataset
        a = self.args
        per_step = a.per_device_train_batch_size * a.gradient_accumulation_steps * a.world_size
        n_steps = a.max_steps if a.max_steps > 0 else math.ceil(len(pairs.retain) / per_step)
        schedule = scrub_schedule(
            len(pairs.forget), len(pairs.retain), per_step, self.method_cfg.msteps, n_steps, a.seed
        )
        self.train_dataset = ScrubScheduleDataset(pairs.forget, pairs.retain, schedule)

    def _get_train_sampler(self, train_dataset=None):
        # The order is the schedule's own (seeded per round): never reshuffled.
        ds = self.train_dataset if train_dataset is None else train_dataset
        return torch.utils.data.SequentialSampler(ds)

    def unlearn_loss(self, model, forget, retain):
        cfg = self.method_cfg
        max_step = forget is not None
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
