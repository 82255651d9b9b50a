"""GradDiff: gradient ascent on the forget set plus a retain term that holds the model in place,
loss = -forget_weight * l(B_f) + retain_weight * R(B_r), with R the retain NLL or KL(reference || model) on the retain
batch.

The KL variant anchors the whole next-token distribution on retain data to the frozen initial model instead of only the
likelihood of the retain labels (open-unlearning's ``GradDiff`` with ``retain_loss_type: KL``, github
locuslab/open-unlearning ``src/trainer/unlearn/grad_diff.py``). Defaults follow that file's config
(``configs/trainer/GradDiff.yaml``: gamma = alpha = 1, i.e. forget_weight = retain_weight = 1).

The KL. Its direction is KL(reference || model) = sum_v p_ref(v) (log p_ref(v) - log p_model(v)), the one
open-unlearning's ``compute_kl_divergence`` (``src/trainer/utils.py``) computes: ``F.kl_div(model_logps, ref_logps,
log_target=True)`` takes the model as the input and the reference as the target, which is KL(target || input). The
NPO authors' ``npo_KL`` (github licong-lin/negative-preference-optimization) and the SimNPO authors' code compute the
same. Which positions it averages over is ``kl_positions``:

- ``all`` (default): every position of the text that predicts a token of the text, prompt and completion alike. This
  is what those implementations anchor: they flatten the logits of *every* position to ``(-1, V)`` and use
  ``reduction="batchmean"``, i.e. the sum over positions divided by their number, batch x sequence length. They also
  count the padding positions and the prediction after the last token (both predict nothing in the data) in the sum
  and in the divisor, so their value depends on how much padding a batch has; ours leaves those out, so it does not.
- ``completion``: only the positions that predict a completion token, the positions the retain NLL covers (this
  project's behaviour before the option existed).
For a classifier (one prediction per example) both mean the same single position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..configs import ConfigError
from .base import UnlearnTrainer
from .scrub import scrub_kl
from ..registry import register_method

RETAIN_LOSSES = ("nll", "kl")
KL_POSITIONS = ("all", "completion")

# Shared help texts: NPO offers the same retain options.
RETAIN_LOSS_HELP = "retain term: 'nll' (descend on retain) or 'kl' (KL(initial || model) on retain positions)"
KL_POSITIONS_HELP = (
    "positions the retain KL averages over: 'all' = every non-padding position predicting a token of the text, prompt "
    "and completion (as open-unlearning and the NPO/SimNPO authors, minus their padding positions); 'completion' = "
    "the completion positions the retain NLL uses"
)


def check_nonnegative(key: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"method_args.{key} must be a finite number >= 0, got {value}")


def check_forget_retain(cfg) -> None:
    """Validate the forget/retain weights and retain options a config has (GradDiff, NPO, SimNPO)."""
    check_nonnegative("forget_weight", cfg.forget_weight)
    check_nonnegative("retain_weight", cfg.retain_weight)
    if cfg.forget_weight == 0 and cfg.retain_weight == 0:  # the loss would be a constant: nothing to train
        raise ConfigError("method_args.forget_weight and method_args.retain_weight cannot both be 0")
    if getattr(cfg, "retain_loss", "nll") not in RETAIN_LOSSES:
        raise ConfigError(f"method_args.retain_loss must be one of {RETAIN_LOSSES}, got {cfg.retain_loss!r}")
    if getattr(cfg, "kl_positions", "all") not in KL_POSITIONS:
        raise ConfigError(f"method_args.kl_positions must be one of {KL_POSITIONS}, got {cfg.kl_positions!r}")


@dataclass
class GradDiffConfig:
    """Forget ascent + retain descent (NLL) or retain anchoring (KL to the initial model)."""

    retain_loss: Literal["nll", "kl"] = field(default="nll", metadata={"help": RETAIN_LOSS_HELP})
    retain_weight: float = field(
        default=1.0, metadata={"help": "weight of the retain term; 0 is plain GA (open-unlearning alpha: 1)"}
    )
    forget_weight: float = field(
        default=1.0,
        metadata={"help": "weight of the forget ascent term; 0 is plain retain training (open-unlearning gamma: 1)"},
    )
    kl_positions: Literal["all", "completion"] = field(default="all", metadata={"help": KL_POSITIONS_HELP})

    def validate(self) -> None:
        check_forget_retain(self)


def text_positions(batch: dict, mask: torch.Tensor) -> torch.Tensor:
    """The ``all`` positions of shifted next-token logits: those whose input token and predicted token are both real
    (non-padding), whichever side the padding is on. ``mask`` is the task's completion mask, of the same shape; a
    batch without an ``attention_mask`` or with one prediction per example (classifiers) keeps it."""
    attn = batch.get("attention_mask")
    if attn is None or mask.ndim != 2 or attn.shape[1] != mask.shape[1] + 1:
        return mask
    attn = attn.to(mask.device).bool()
    return attn[:, :-1] & attn[:, 1:]


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(reference || model) of next-token distributions, mean over the masked positions."""
    return scrub_kl(logits, ref_logits, mask, T=1.0)


def graddiff_loss(
    forget_nll: torch.Tensor, retain_term: torch.Tensor, retain_weight: float, forget_weight: float = 1.0
) -> torch.Tensor:
    """-forget_weight * l(B_f) + retain_weight * R(B_r)."""
    return -forget_weight * forget_nll + retain_weight * retain_term


def retain_kl(trainer: UnlearnTrainer, model, retain: dict, kl_positions: str) -> torch.Tensor:
    """KL(reference || model) on a retain batch, charging the model's pass and the reference's forward."""
    trainer.charge(retain)
    logits, mask = trainer.task.logits(model, retain)
    with trainer.reference(model) as ref:
        trainer.charge(retain, backward=False)
        ref_logits, _ = trainer.task.logits(ref, retain)
    if kl_positions == "all":
        mask = text_positions(retain, mask)
    return kl_to_reference(logits, ref_logits, mask)


def retain_term(trainer: UnlearnTrainer, model, retain: dict, cfg) -> torch.Tensor:
    """R(B_r) as ``cfg.retain_loss`` says: the retain NLL or KL(reference || model)."""
    if getattr(cfg, "retain_loss", "nll") == "kl":
        return retain_kl(trainer, model, retain, cfg.kl_positions)
    return trainer.nll(model, retain)


@register_method(
    "graddiff",
    config=GradDiffConfig,
    summary="forget ascent + retain NLL or KL to the initial model",
    needs_reference=True,
)
class GradDiffTrainer(UnlearnTrainer):
    def unlearn_loss(self, model, forget, retain):
        cfg = self.method_cfg
        # A zero-weighted term is skipped rather than paid for from the budget (validate() forbids both at 0).
        forget_nll = self.nll(model, forget) if cfg.forget_weight > 0 else 0.0
        retain_r = retain_term(self, model, retain, cfg) if cfg.retain_weight > 0 else 0.0
        return graddiff_loss(forget_nll, retain_r, cfg.retain_weight, cfg.forget_weight)
