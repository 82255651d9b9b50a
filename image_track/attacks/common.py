"""What the image attacks share: the clean data they start from, what they return, and their base class.

An image attack is an ``llm_unlearn.attacks.base.Attack`` registered with ``track="image"``; the image track calls
its hooks with these arguments:

(a) ``poison(cfg, clean, rng, train_surrogate) -> Poisoned``: ``cfg`` is the poison stage config
    (``image_track.poisoning.ImagePoisonConfig``: ``poison``, ``data``, ``model``, ``train``, ``seed``),
    ``clean`` the clean train/test tensors, ``rng`` the stage's ``random.Random(seed)``, and
    ``train_surrogate(seed, on_epoch_end=None, x=, y=)`` trains the victim's architecture and recipe on (x, y),
    by default the clean training set, from the initialisation ``seed``. Pixels stay in [0, 1] unless the attack says
    otherwise.
(b) none: the poisons are stored as the victim trains on them (image training has no hook).
(c) ``evaluate(model=, tensors=, manifest=, cfg=) -> (metrics, per_sample)``: ``tensors`` is the poison stage's
    ``data.safetensors`` (with the attack's ``extras``), ``cfg`` the ``ImageEvalConfig``.
(d) ``describe()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_unlearn.attacks.base import Attack
from llm_unlearn.attacks.canceling import flat_grad  # noqa: F401 (shared with witches_brew and gradient canceling)
from llm_unlearn.configs import ConfigError
from llm_unlearn.lazy import torch


@dataclass
class Clean:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: list[float]
    std: list[float]


@dataclass
class Poisoned:
    indices: torch.Tensor  # training rows that are poisons (sorted)
    images: torch.Tensor  # the poisons as trained, (k, C, H, W)
    labels: torch.Tensor  # their training labels
    noise_seeds: list[int] = field(default_factory=list)
    extras: dict = field(default_factory=dict)  # tensors saved beside the data
    test_keep: torch.Tensor | None = None  # test rows kept for clean accuracy (targets are removed)
    info: dict = field(default_factory=dict)


class ImageAttack(Attack):
    """Base of the image attacks (the hooks' arguments are in this module's docstring)."""

    def poison(self, cfg, clean: Clean, rng, train_surrogate) -> Poisoned:
        raise NotImplementedError(f"{type(self).__name__} does not implement poison()")

    def count_poisons(self, cfg, n: int) -> int:
        """``poison_fraction`` of ``n`` training images, refused below the attack's ``min_poisons``."""
        k = round(cfg.poison.poison_fraction * n)
        if k < self.min_poisons:
            raise ConfigError(
                f"poison.poison_fraction={cfg.poison.poison_fraction} of {n} training images gives {k} poisons; "
                f"{self.name} needs at least {self.min_poisons}"
            )
        return k
