"""NegGrad+ (Kurmanji et al. 2023): descend on retain and ascend on forget in one weighted objective,
theta <- theta - eta grad[beta (l(B_r) + (l2_weight / 2) ||theta - theta_0||^2) - (1 - beta) l(B_f)].

The L2 pull towards the weights theta_0 at the start of unlearning is the authors' optional term (github
meghdadk/SCRUB, the ``run_neggrad_epoch`` of their notebooks: ``alpha * (CE_r + l2_penalty(model, model_init, wd)) -
(1 - alpha) * CE_f`` with ``l2_penalty = wd / 2 * sum over trainable parameters of (p - p_init)^2``): the same form
here, a *sum* (not a mean) of squares over the trainable parameters, factor l2_weight / 2, inside the beta-weighted
retain part. Off by default (l2_weight 0), as in the paper's description. With LoRA the trainable parameters are the
adapter's, so the pull is towards the adapter's initial values (B = 0: the adapter's update itself is pulled to 0 only
through B; A starts random).

theta_0 is a detached copy of the trainable parameters taken when ``train()`` starts, before anything moved (on
resume, before the checkpoint is loaded: the model the stage passes in is the initial one, its LoRA adapter initialised
under the run's seed as in the first attempt). It costs one copy of the trainable weights, none when l2_weight is 0.
Under DeepSpeed ZeRO-3 and FSDP a process holds only a shard of each parameter, so the term is refused there rather
than computed on shards."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..configs import ConfigError
from .base import UnlearnTrainer
from ..registry import register_method


@dataclass
class NegGradPlusConfig:
    """Weighted retain descent / forget ascent, optionally pulled towards the initial weights."""

    beta: float = field(
        default=0.95, metadata={"help": "retain weight; forget weight is 1 - beta (paper: 0.95-0.999)"}
    )
    l2_weight: float = field(
        default=0.0,
        metadata={
            "help": "weight decay towards the initial weights: beta * l2_weight / 2 * ||theta - theta_0||^2 (sum over "
            "trainable parameters) joins the retain part, as in the SCRUB authors' NegGrad+; 0 = off"
        },
    )

    def validate(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"method_args.beta must be in [0, 1], got {self.beta}")
        if not (self.l2_weight >= 0 and math.isfinite(self.l2_weight)):
            raise ConfigError(f"method_args.l2_weight must be a finite number >= 0, got {self.l2_weight}")


def l2_to_initial(params: list[torch.Tensor], initial: list[torch.Tensor], l2_weight: float) -> torch.Tensor:
    """(l2_weight / 2) * sum_i ||p_i - p0_i||^2, accumulated in float32 (bf16 differences of close weights round)."""
    total = sum((p.float() - p0.float()).square().sum() for p, p0 in zip(params, initial, strict=True))
    return 0.5 * l2_weight * total


def neggrad_plus_loss(retain_nll, forget_nll, beta: float, l2=0.0):
    """beta * (l(B_r) + l2) - (1 - beta) * l(B_f), with ``l2`` the value of :func:`l2_to_initial` (0 when off)."""
    return beta * (retain_nll + l2) - (1.0 - beta) * forget_nll


@register_method("neggrad_plus", config=NegGradPlusConfig, summary="beta * retain loss - (1 - beta) * forget loss")
class NegGradPlusTrainer(UnlearnTrainer):
    # (trainable parameters, their values when training started), set by train() when l2_weight > 0.
    _l2_params: list[torch.Tensor] | None = None
    _l2_initial: list[torch.Tensor] | None = None

    def train(self, *args, **kwargs):
        self._l2_params = self._l2_initial = None
        if self.method_cfg.l2_weight > 0:
            from transformers.integrations import is_deepspeed_zero3_enabled

            if is_deepspeed_zero3_enabled() or getattr(self, "is_fsdp_enabled", False):
                raise ConfigError(
                    "method_args.l2_weight > 0 is not supported under DeepSpeed ZeRO-3 or FSDP (each process holds "
                    "only a shard of the weights); use ZeRO-1/2 or DDP, or l2_weight: 0"
                )
            self._l2_params = [p for p in self.model.parameters() if p.requires_grad]
            self._l2_initial = [p.detach().clone() for p in self._l2_params]
        return super().train(*args, **kwargs)

    def unlearn_loss(self, model, forget, retain):
        cfg = self.method_cfg
        l2 = 0.0
        if self._l2_params is not None:
            l2 = l2_to_initial(self._l2_params, self._l2_initial, cfg.l2_weight)
        return neggrad_plus_loss(self.nll(model, retain), self.nll(model, forget), cfg.beta, l2)
