"""The image classifiers' config, construction and storage (the networks are ``networks.py``'s). A model dir is
``llm_unlearn.modeling.save_module``'s: the weights and the description that rebuilds the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llm_unlearn.configs import ConfigError
from llm_unlearn.lazy import nn, torch
from llm_unlearn.modeling import check_same_architecture, load_module, module_description, save_module


@dataclass
class ModelConfig:
    """The classifier architecture (its input shape and normalisation come from the poisoned dataset)."""

    arch: Literal["cnn", "resnet18", "mlp", "linear"] = field(
        default="cnn", metadata={"help": "cnn (tiny default) | resnet18 (CIFAR-style) | mlp | linear (on pixels)"}
    )
    width: int = field(
        default=32, metadata={"help": "cnn: channels of the first conv; resnet18: of the stem (paper: 64)"}
    )
    hidden: int = field(default=128, metadata={"help": "cnn/mlp: width of the fully-connected hidden layer(s)"})

    def validate(self) -> None:
        if self.width < 1 or self.hidden < 1:
            raise ConfigError(f"model.width and model.hidden must be >= 1, got {self.width}, {self.hidden}")


def build_model(cfg: ModelConfig, image_shape, num_classes: int, mean, std, seed: int) -> nn.Module:
    """A freshly initialised :class:`ImageClassifier` whose initialisation depends on ``seed`` only (the global RNG is
    untouched)."""
    from .networks import ImageClassifier

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ImageClassifier(cfg, image_shape, num_classes, mean, std)


def save_model(model: nn.Module, out: str | Path) -> None:
    """An :class:`ImageClassifier`'s weights and description, in ``out``."""
    save_module(model, out, model.description())


def load_model(model_dir: str | Path, key: str = "model_dir") -> nn.Module:
    """The :class:`ImageClassifier` :func:`save_model` wrote."""

    from .networks import ImageClassifier

    def build(d: dict) -> nn.Module:  # from the description save_model wrote
        return ImageClassifier(ModelConfig(**d["model"]), d["image_shape"], d["num_classes"], d["mean"], d["std"])

    return load_module(model_dir, build, key)


def check_same_arch(dirs: dict[str, str | None]) -> None:
    """The model dirs of one run must exist and hold one architecture on one input shape and label set (their
    parameters are compared or swapped), before any work."""
    archs = {}
    for key, path in dirs.items():
        if path:
            desc = module_description(path, key)
            archs[key] = (path, {k: desc.get(k) for k in ("model", "image_shape", "num_classes")})
    if archs:
        check_same_architecture(archs, "architecture, input shape and classes")
