"""Poisoning an image dataset, for the shared poison stage (``llm_unlearn.stages.poison`` with the image task): load
the clean images, run one attack's ``poison`` hook, write ``data.safetensors`` + ``manifest.json``.

Witches' Brew and Gradient Canceling craft their poisons on a surrogate: the same architecture trained on the clean
training set with the same recipe (``train_surrogate``), from an initialisation of its own (seed +
``attack_args.surrogate_seed_offset``, default 10,000, so the victim never shares it; 0 models an attacker who knows
the victim's initialisation).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import llm_unlearn.training as training
from llm_unlearn.attacks import build_attack
from llm_unlearn.configs import ConfigError
from llm_unlearn.stages.poison import poison_manifest
from llm_unlearn.tasks.classification import ClassifierTrainConfig

from . import attacks  # noqa: F401  (registers the image attacks)
from .attacks import Clean
from .data import DataConfig, channel_stats, load_clean, save_dataset_dir
from .models import ModelConfig, build_model


# The attack knobs that were flat keys of the poison section before they moved into attack_args.
_MOVED = (
    "noise_eps target_label patch_size eps steps restarts attack_lr num_targets target_class adv_class "
    "target_selection match_epochs surrogate_seed_offset corruption_radius corruption_radii corruption_steps gc_steps "
    "gc_lr"
).split()


@dataclass
class PoisonSection:
    """Which attack and its knobs: ``attack`` names a registered image attack (``image_track/attacks/``),
    ``attack_args`` holds its own config."""

    MOVED_KEYS = {k: f"attack_args.{k}" for k in _MOVED}

    attack: str = field(
        default="gaussian",
        metadata={"help": "gaussian | badnets | witches_brew | gradient_canceling (or one a plugin registers)"},
    )
    attack_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "the attack's own knobs, e.g. {noise_eps: 0.5} (gaussian), {target_label: 0, patch_size: 3} "
            "(badnets), {eps: 0.0627, steps: 250, restarts: 8} (witches_brew), {corruption_radius: 0.5, gc_steps: "
            "500} (gradient_canceling); see image_track/attacks/"
        },
    )
    poison_fraction: float = field(
        default=0.1,
        metadata={
            "help": "poisons as a fraction of the training set (paper: gaussian 1.5-2.5 %, witches' brew 1 %, "
            "gradient canceling 3 %)"
        },
    )

    def build_attack(self):
        """The attack with its ``attack_args`` built and validated."""
        return build_attack(self.attack, self.attack_args, "image")

    def validate(self) -> None:
        self.build_attack()
        if not 0 < self.poison_fraction < 1:
            raise ConfigError(f"poison.poison_fraction must be in (0, 1), got {self.poison_fraction}")


@dataclass
class ImagePoisonConfig:
    """Poison an image training set; write the data, the poison indices and the attack's extras."""

    task: ClassVar[str] = "image_classification"  # the shared poison stage hands this config to the image task

    output_dir: str | None = field(default=None, metadata={"help": "where data.safetensors and manifest.json go"})
    seed: int = field(default=0, metadata={"help": "selects the poisons, their noise, targets, subsamples"})
    poison: PoisonSection = field(default_factory=PoisonSection, metadata={"help": "the attack"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "the clean images"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "surrogate architecture (as victim)"})
    train: ClassifierTrainConfig = field(
        default_factory=ClassifierTrainConfig, metadata={"help": "surrogate training (as victim)"}
    )


def poison_images(cfg: ImagePoisonConfig, out: Path) -> dict:
    import torch  # here, not at module level: a config check reads PoisonSection and must not wait for torch

    attack = cfg.poison.build_attack()
    attack.check(cfg)
    xtr, ytr, xte, yte, k = load_clean(cfg.data, cfg.seed)
    mean, std = channel_stats(xtr)
    clean = Clean(xtr, ytr, xte, yte, k, mean, std)
    rng = random.Random(cfg.seed)

    def train_surrogate(seed: int, on_epoch_end=None, x=xtr, y=ytr):
        """The victim's architecture and recipe on (x, y), the clean training set unless given, from the
        initialisation ``seed``."""
        s = build_model(cfg.model, list(x.shape[1:]), k, mean, std, seed=seed)
        training.train_classifier(s, x, y, cfg.train, seed, on_epoch_end=on_epoch_end)
        return s

    poisoned = attack.poison(cfg, clean, rng, train_surrogate)
    test_keep = poisoned.test_keep if poisoned.test_keep is not None else torch.ones(len(yte), dtype=torch.bool)
    tensors = {
        "train_images": xtr,
        "train_labels": ytr,
        "test_images": xte[test_keep],
        "test_labels": yte[test_keep],
        "poison_images": poisoned.images.float(),
        "poison_labels": poisoned.labels.long(),
        **poisoned.extras,
    }
    save_dataset_dir(out, tensors)
    n, n_poison = len(ytr), len(poisoned.indices)
    sizes = {"train": n, "retain": n - n_poison, "forget": n_poison, "test": int(test_keep.sum())}
    data = {"num_classes": k, "image_shape": list(xtr.shape[1:]), "mean": mean, "std": std}
    idx = poisoned.indices.tolist()
    manifest = poison_manifest(
        attack, cfg.poison.poison_fraction, n, idx, poisoned.noise_seeds, data, sizes, poisoned.info
    )
    return {"manifest.json": manifest}
