"""The image ``train:`` section (initial, gold and attack-surrogate models) mapped onto the shared classifier trainer
(``llm_unlearn.training.train_classifier``: SGD with momentum, as in the paper, with the Trainer's checkpoints).
Surrogates (Witches' Brew, gradient canceling) train through :func:`train_classifier` too, so "surrogate = the
victim's recipe" holds exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from llm_unlearn.configs import ConfigError


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
    save_epochs: int = field(
        default=0,
        metadata={
            "help": "train stage: save a checkpoint every N epochs so a killed run resumes from the last one instead "
            "of starting over (0: no checkpoints); the last two are kept, all deleted when the stage completes"
        },
    )

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"train.epochs and train.batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ConfigError(f"train.learning_rate must be a positive number, got {self.learning_rate}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError("train.momentum and train.weight_decay must be >= 0")
        if self.save_epochs < 0:
            raise ConfigError(f"train.save_epochs must be >= 0 (0 = no checkpoints), got {self.save_epochs}")


def train_classifier(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainSection,
    seed: int,
    output_dir,
    on_epoch_end=None,
    checkpoints=False,
) -> dict:
    """``llm_unlearn.training.train_classifier`` with this section's recipe on (x, y); with ``checkpoints``, saves
    every ``cfg.save_epochs`` epochs under ``output_dir/trainer`` and resumes from the last complete one. The record
    says whether the loss diverged (:func:`fit` raises instead)."""
    from llm_unlearn.tasks.classification import Split
    from llm_unlearn.training import train_classifier as train

    from .data import make_augment

    save_steps = cfg.save_epochs * math.ceil(len(y) / cfg.batch_size) if checkpoints else 0
    data = Split(x, y, torch.arange(len(y)))
    augment = make_augment(cfg.augment)
    return train(model, data, cfg, seed, output_dir, augment=augment, save_steps=save_steps, on_epoch_end=on_epoch_end)


def fit(model, x: torch.Tensor, y: torch.Tensor, cfg: TrainSection, seed: int, on_epoch_end=None) -> dict:
    """:func:`train_classifier` without checkpoints, in a scratch dir: how attack surrogates are trained. Raises
    ``DivergedError`` on a non-finite loss."""
    import tempfile

    from llm_unlearn.training import DivergedError

    with tempfile.TemporaryDirectory(prefix="surrogate-") as scratch:
        info = train_classifier(model, x, y, cfg, seed, scratch, on_epoch_end=on_epoch_end)
    if info["diverged"]:
        raise DivergedError(info["diverged_step"], info["train_loss"])
    return info
