"""Image classifiers through the shared trainer (``llm_unlearn.training.task_trainer_class``): SGD with momentum, as
in the paper, on the classification task; checkpoints and resume are the Trainer's, as on the LLM track. Plus the
batched inference helpers the image attacks and the evaluation use.

The compute unit is the one the unlearning budget uses for classifiers (``ClassificationTask.cost``): examples
through one forward+backward pass, recorded as ``compute_tokens``. Attack surrogates (Witches' Brew, gradient
canceling) train through :func:`train_classifier` too, so "surrogate = the victim's recipe" holds exactly.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from llm_unlearn.configs import ConfigError

logger = logging.getLogger(__name__)


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


class TensorDataset(torch.utils.data.Dataset):
    """(images, labels) as the rows the classification collator stacks."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


@dataclass
class _Resume:
    save_steps: int  # what llm_unlearn.training.resume_point reads


def train_classifier(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainSection,
    seed: int,
    output_dir: str | os.PathLike,
    on_epoch_end=None,
    checkpoints: bool = False,
) -> dict:
    """Train ``model`` in place on (x, y) with the shared trainer; returns steps, compute (examples through
    forward+backward), loss, wall seconds and ``resumed_from_step``. Raises ``DivergedError`` on a non-finite loss.
    ``on_epoch_end(epoch, model)`` (epochs from 1) lets an attacker keep checkpoints of its surrogate's trajectory.
    ``checkpoints``: save the Trainer's checkpoints every ``cfg.save_epochs`` epochs under ``output_dir/trainer``
    and resume from the last complete one (the caller removes them when the model is written)."""
    from transformers import TrainerCallback, TrainingArguments

    from llm_unlearn.tasks.classification import ClassificationCollator, ClassificationTask
    from llm_unlearn.training import fit, task_trainer_class

    from .data import make_augment

    task = ClassificationTask(augment=make_augment(cfg.augment), seed=seed)
    per_epoch = math.ceil(len(y) / cfg.batch_size)
    save_steps = cfg.save_epochs * per_epoch if checkpoints and cfg.save_epochs else 0
    args = TrainingArguments(
        output_dir=str(Path(output_dir) / "trainer"),
        per_device_train_batch_size=cfg.batch_size,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        optim="sgd",
        optim_args=f"momentum={cfg.momentum}",
        lr_scheduler_type="cosine" if cfg.lr_schedule == "cosine" else "constant",
        max_grad_norm=0.0,  # no clipping, as in the paper's SGD recipe
        seed=seed,
        data_seed=seed,
        logging_strategy="no",  # the stage records what it needs; HF would print a dict per log step
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=2,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        disable_tqdm=True,
        logging_nan_inf_filter=False,
        average_tokens_across_devices=False,
        use_cpu=not torch.cuda.is_available(),
    )
    callbacks = []
    if on_epoch_end is not None:

        class EpochEnd(TrainerCallback):
            def on_epoch_end(self, args, state, control, model=None, **kwargs):
                on_epoch_end(round(state.epoch), model)

        callbacks.append(EpochEnd())
    trainer = task_trainer_class()(
        model=model,
        args=args,
        train_dataset=TensorDataset(x, y),
        data_collator=ClassificationCollator(),
        task=task,
        callbacks=callbacks,
    )
    # The augmentation generator is the task's, not the Trainer's: checkpoints carry it so a resumed run draws the
    # crops an uninterrupted run would.
    info = fit(trainer, _Resume(save_steps), (task.get_rng_state, task.set_rng_state))
    model.eval()
    return info


def fit(model, x: torch.Tensor, y: torch.Tensor, cfg: TrainSection, seed: int, on_epoch_end=None) -> dict:
    """:func:`train_classifier` without checkpoints, in a scratch dir: how attack surrogates are trained."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="surrogate-") as scratch:
        return train_classifier(model, x, y, cfg, seed, scratch, on_epoch_end=on_epoch_end)
