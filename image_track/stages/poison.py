"""Image stage 1: load the clean images, run one attack, write ``data.safetensors`` + ``manifest.json``.

Witches' Brew and Gradient Canceling craft their poisons on a surrogate: the same architecture trained on the clean
training set with the same recipe, from an initialisation of its own (seed + ``surrogate_seed_offset``, default
10,000, so the victim never shares it; 0 models an attacker who knows the victim's initialisation).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from llm_unlearn.configs import ConfigError
from llm_unlearn.harness import parse_stage, run_stage, stage_parser

from ..data import DataConfig
from ..models import ModelConfig
from ..training import TrainSection


@dataclass
class PoisonSection:
    """Which attack and its knobs."""

    attack: Literal["gaussian", "badnets", "witches_brew", "gradient_canceling"] = field(
        default="gaussian", metadata={"help": "gaussian | badnets | witches_brew | gradient_canceling"}
    )
    poison_fraction: float = field(
        default=0.1,
        metadata={
            "help": "poisons as a fraction of the training set (paper: gaussian 1.5-2.5 %, witches' brew 1 %, "
            "gradient canceling 3 %)"
        },
    )
    noise_eps: float = field(default=0.5, metadata={"help": "gaussian: noise std in pixel units (pixels in [0, 1])"})
    target_label: int = field(default=0, metadata={"help": "badnets: the class the trigger forces"})
    patch_size: int = field(default=3, metadata={"help": "badnets: side of the checkerboard trigger (pixels)"})
    eps: float = field(default=16 / 255, metadata={"help": "witches_brew: l_inf bound of the perturbation"})
    steps: int = field(default=250, metadata={"help": "witches_brew: signed-Adam steps per restart"})
    restarts: int = field(default=8, metadata={"help": "witches_brew: random restarts (the best match is kept)"})
    attack_lr: float = field(default=0.1, metadata={"help": "witches_brew: Adam step size in units of eps"})
    num_targets: int = field(
        default=1,
        metadata={
            "help": "witches_brew: target test images (one shared pair of "
            "classes; their gradients are matched jointly)"
        },
    )
    target_class: int | None = field(
        default=None, metadata={"help": "witches_brew: the targets' true class (null: drawn from the seed)"}
    )
    adv_class: int | None = field(
        default=None,
        metadata={
            "help": "witches_brew: the class the targets should get (null: drawn); the poisons are of this class"
        },
    )
    target_selection: Literal["random", "low_margin"] = field(
        default="random",
        metadata={
            "help": "witches_brew: random correctly classified targets, or those with the smallest surrogate "
            "margin to adv_class (an attacker's free choice; easier on small models)"
        },
    )
    match_epochs: list[int] = field(
        default_factory=list,
        metadata={
            "help": "witches_brew: also match gradients on the surrogate's checkpoints after these epochs (an "
            "ensemble along the training trajectory the victim will follow); empty: the final surrogate only"
        },
    )
    surrogate_seed_offset: int = field(
        default=10_000,
        metadata={
            "help": "witches_brew/gradient_canceling: the surrogate is initialised with seed + this; 0 = the "
            "attacker knows the victim's initialisation (a stronger threat model than the paper's)"
        },
    )
    corruption_radius: float = field(
        default=0.5,
        metadata={"help": "gradient_canceling: ||theta_tgt - theta_clean|| as a fraction of ||theta_clean||"},
    )
    corruption_radii: list[float] = field(
        default_factory=list,
        metadata={
            "help": "gradient_canceling: candidate radii (empty: corruption_radius alone); the attacker crafts "
            "poisons for each, trains the training recipe on clean + poisons and keeps the least accurate on its "
            "clean training rows (farther targets are less reachable)"
        },
    )
    corruption_steps: int = field(default=100, metadata={"help": "gradient_canceling: parameter-corruption steps"})
    gc_steps: int = field(default=500, metadata={"help": "gradient_canceling: poison optimisation steps (Adam)"})
    gc_lr: float = field(default=0.05, metadata={"help": "gradient_canceling: Adam step size on the poison pixels"})

    def validate(self) -> None:
        if not 0 < self.poison_fraction < 1:
            raise ConfigError(f"poison.poison_fraction must be in (0, 1), got {self.poison_fraction}")
        for name in ("noise_eps", "eps", "attack_lr", "corruption_radius", "gc_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"poison.{name} must be > 0, got {getattr(self, name)}")
        for name in ("patch_size", "steps", "restarts", "num_targets", "corruption_steps", "gc_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"poison.{name} must be >= 1, got {getattr(self, name)}")
        if any(not r > 0 for r in self.corruption_radii):
            raise ConfigError(f"poison.corruption_radii must all be > 0, got {self.corruption_radii}")
        if self.eps > 1:
            raise ConfigError(f"poison.eps is in pixel units (pixels in [0, 1]): must be <= 1, got {self.eps}")


@dataclass
class ImagePoisonConfig:
    """Poison an image training set; write the data, the poison indices and the attack's extras."""

    output_dir: str | None = field(default=None, metadata={"help": "where data.safetensors and manifest.json go"})
    seed: int = field(default=0, metadata={"help": "selects the poisons, their noise, targets, subsamples"})
    poison: PoisonSection = field(default_factory=PoisonSection, metadata={"help": "the attack"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "the clean images"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "surrogate architecture (as victim)"})
    train: TrainSection = field(default_factory=TrainSection, metadata={"help": "surrogate training (as victim)"})


def _compact(t: torch.Tensor) -> tuple[str, torch.Tensor]:
    """Store clean 8-bit images (CIFAR) as uint8 when that is exact: 4x smaller on disk."""
    if t.is_floating_point():
        u8 = (t * 255).round().clamp(0, 255).to(torch.uint8)
        if torch.equal(u8.float() / 255.0, t):
            return "__u8", u8
    return "", t


def main(cfg: ImagePoisonConfig, overwrite: bool = False) -> Path:
    """Run the stage through the harness (:mod:`llm_unlearn.harness`); returns ``output_dir``."""
    return run_stage(cfg, _poison, name="image poison", overwrite=overwrite)


def _poison(cfg: ImagePoisonConfig, out: Path) -> dict:
    from ..attacks import ATTACKS, NEEDS_SURROGATE, Clean
    from ..data import channel_stats, load_clean, save_dataset_dir
    from ..models import build_model
    from ..training import fit

    if cfg.poison.attack == "gradient_canceling" and cfg.model.arch != "linear":
        raise ConfigError("poison.attack gradient_canceling needs model.arch: linear (see image_track/attacks.py)")
    xtr, ytr, xte, yte, k = load_clean(cfg.data, cfg.seed)
    mean, std = channel_stats(xtr)
    clean = Clean(xtr, ytr, xte, yte, k, mean, std)
    rng = random.Random(cfg.seed)
    attack = ATTACKS[cfg.poison.attack]
    if cfg.poison.attack in NEEDS_SURROGATE:

        def surrogate(on_epoch_end=None):
            sseed = cfg.seed + cfg.poison.surrogate_seed_offset
            s = build_model(cfg.model, list(xtr.shape[1:]), k, mean, std, seed=sseed)
            fit(s, xtr, ytr, cfg.train, seed=sseed, on_epoch_end=on_epoch_end)
            return s

        poisoned = attack(cfg, clean, rng, surrogate)
    else:
        poisoned = attack(cfg, clean, rng)
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
    stored = {}
    for name, t in tensors.items():
        suffix, v = _compact(t) if name in ("train_images", "test_images") else ("", t)
        stored[name + suffix] = v
    manifest = {
        "attack": cfg.poison.attack,
        "metric": poisoned.metric,
        "poison_fraction": cfg.poison.poison_fraction,
        "n_train": len(ytr),
        "n_poison": len(poisoned.indices),
        "poison_indices": poisoned.indices.tolist(),
        "noise_seeds": poisoned.noise_seeds,
        "num_classes": k,
        "image_shape": list(xtr.shape[1:]),
        "mean": mean,
        "std": std,
        "splits": {
            "train": len(ytr),
            "retain": len(ytr) - len(poisoned.indices),
            "forget": len(poisoned.indices),
            "test": int(test_keep.sum()),
        },
        **poisoned.info,
    }
    save_dataset_dir(out, stored)
    return {"manifest.json": manifest}


def make_parser():
    return stage_parser(ImagePoisonConfig, "image poison")


def cli(argv=None) -> None:
    cfg, overwrite = parse_stage(ImagePoisonConfig, argv, "image poison")
    print(main(cfg, overwrite=overwrite))
