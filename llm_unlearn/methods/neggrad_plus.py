"""NegGrad+ (Kurmanji et al. 2023): descend on retain and ascend on forget in one weighted objective,
theta <- theta - eta grad[beta l(B_r) - (1 - beta) l(B_f)]."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..configs import ConfigError
from .base import UnlearnTrainer


@dataclass
class NegGradPlusConfig:
    """Weighted retain descent / forget ascent."""

    beta: float = field(
        default=0.95, metadata={"help": "retain weight; forget weight is 1 - beta (paper: 0.95-0.999)"}
    )

    def validate(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"method_args.beta must be in [0, 1], got {self.beta}")


def neggrad_plus_loss(retain_nll, forget_nll, beta: float):
    return beta * retain_nll - (1.0 - beta) * forget_nll


class NegGradPlusTrainer(UnlearnTrainer):
    def unlearn_loss(self, model, forget, retain):
        return neggrad_plus_loss(self.nll(model, retain), self.nll(model, forget), self.method_cfg.beta)
