"""NGD, noisy gradient descent (the paper's Fig. 6 method): GD on the retain set with isotropic Gaussian noise added
to the gradient of every trainable parameter before each optimizer step, theta <- theta - eta (grad l(B_r) + n),
n ~ N(0, sigma^2 I). The noise is added after gradient clipping so clipping does not shrink it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import TrainerCallback

from ..configs import ConfigError
from .base import UnlearnTrainer


@dataclass
class NGDConfig:
    """GD on retain plus Gaussian gradient noise."""

    sigma: float = field(default=0.01, metadata={"help": "std of the gradient noise n ~ N(0, sigma^2 I)"})

    def validate(self) -> None:
        if self.sigma < 0:
            raise ConfigError(f"method_args.sigma must be >= 0, got {self.sigma}")


def add_gradient_noise(parameters, sigma: float, generator: torch.Generator) -> None:
    """grad <- grad + N(0, sigma^2) for every parameter that has a gradient (in place)."""
    for p in parameters:
        if p.grad is not None:
            noise = torch.randn(p.grad.shape, generator=generator, dtype=torch.float32).to(p.grad.device, p.grad.dtype)
            p.grad.add_(noise, alpha=sigma)


class _NoiseCallback(TrainerCallback):
    def __init__(self, sigma: float, seed: int):
        self.sigma, self.seed = sigma, seed

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        # The noise of step t comes from (seed, t) alone: a run resumed from a checkpoint adds the same noise as an
        # uninterrupted one (a single generator seeded once would restart its stream at the resumed step).
        stream = np.random.SeedSequence([int(self.seed) % 2**63, state.global_step]).generate_state(2, np.uint32)
        generator = torch.Generator().manual_seed(int(stream[0]) << 32 | int(stream[1]))
        add_gradient_noise((p for p in model.parameters() if p.requires_grad), self.sigma, generator)


class NGDTrainer(UnlearnTrainer):
    reads_forget = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(_NoiseCallback(self.method_cfg.sigma, self.args.seed))

    def unlearn_loss(self, model, forget, retain):
        return self.nll(model, retain)
