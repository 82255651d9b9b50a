"""Training and inference loops for the image classifiers (plain PyTorch: SGD with momentum, as in the paper).

The compute unit is the one the unlearning budget uses for classifiers (``ClassificationTask.cost``): examples
through one forward+backward pass, recorded as ``compute_tokens``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from llm_unlearn.configs import ConfigError
from llm_unlearn.stages.train import DivergedError


@dataclass
class TrainSection:
    """SGD training of the initial and the gold model (and of attack surrogates)."""

    epochs: int = field(default=30, metadata={"help": "epochs over the split (paper, ResNet-18/CIFAR-10: 100)"})
    learning_rate: float = field(default=0.05, metadata={"help": "SGD peak learning rate"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=5e-4, metadata={"help": "SGD weight decay"})
    batch_size: int = field(default=64, metadata={"help": "examples per step"})
    lr_schedule: Literal["cosine", "constant"] = field(default="cosine", metadata={"help": "cosine decay or constant"})
    augment: Literal["none", "crop_flip"] = field(
        default="none", metadata={"help": "crop_flip: random crop (padding 4) + horizontal flip, as for CIFAR-10"}
    )

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"train.epochs and train.batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ConfigError(f"train.learning_rate must be a positive number, got {self.learning_rate}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError("train.momentum and train.weight_decay must be >= 0")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fit(model, x: torch.Tensor, y: torch.Tensor, cfg: TrainSection, seed: int, on_epoch_end=None) -> dict:
    """Train ``model`` in place on (x, y); returns steps, compute (examples through forward+backward), final-epoch
    loss and wall seconds. Raises :class:`DivergedError` on a non-finite loss. ``on_epoch_end(epoch, model)`` (epochs
    from 1) lets an attacker keep checkpoints of its surrogate's trajectory."""
    from .data import make_augment

    dev = device()
    model.to(dev).train()
    x, y = x.to(dev), y.to(dev)
    g = torch.Generator().manual_seed(seed)
    augment = make_augment(cfg.augment)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    per_epoch = math.ceil(len(y) / cfg.batch_size)
    total = cfg.epochs * per_epoch
    if cfg.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / total)))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    start, step, compute, epoch_loss = time.perf_counter(), 0, 0, float("nan")
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(y), generator=g).to(dev)
        losses = []
        for i in range(0, len(y), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            xb = x[idx]
            if augment is not None:
                xb = augment(xb, g)
            loss = F.cross_entropy(model(pixel_values=xb).logits.float(), y[idx])
            if not bool(torch.isfinite(loss)):
                raise DivergedError(step, float(loss))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            compute += len(idx)
            losses.append(float(loss.detach()))
        epoch_loss = sum(losses) / len(losses)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model)
    model.eval()
    return {
        "steps": step,
        "compute_tokens": compute,
        "train_loss": epoch_loss,
        "wall_seconds": time.perf_counter() - start,
    }


@torch.no_grad()
def logits_of(model, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    dev = device()
    model.to(dev).eval()
    out = [
        model(pixel_values=x[i : i + batch_size].to(dev)).logits.float().cpu() for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0)


def predict(model, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return logits_of(model, x, batch_size).argmax(-1)


def per_example_loss(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return F.cross_entropy(logits_of(model, x, batch_size), y, reduction="none")


def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(model, x) == y).float().mean())
