"""Image classifiers in plain ``torch.nn`` (no torchvision: its registry build breaks the CPU torch here).

Every model is an :class:`ImageClassifier`: per-channel normalisation (buffers, so pixels stay in [0, 1] everywhere
else: attack budgets and Gaussian noise are in pixel units) followed by ``blocks``, an ordered ``ModuleList`` from
the stem to the classification head. The unlearning methods read that list through the classification task: CF-k /
EU-k touch the last k blocks (k = 1 is the head), RMU steers a block's output.

Architectures: ``cnn`` (two conv blocks, a hidden fully-connected block, a head: the tiny default), ``resnet18``
(the CIFAR variant of He et al. 2016: 3x3 stem, no max-pool, four stages of two basic blocks), ``mlp`` and
``linear`` (a linear classifier on the pixels: the victim of the gradient-canceling attack).

A model dir is ``llm_unlearn.modeling.save_module``'s: the weights and the description that rebuilds the model.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from llm_unlearn.configs import ConfigError
from llm_unlearn.modeling import check_same_architecture, load_module, module_description, save_module
from llm_unlearn.tasks.classification import ClassificationTask, ClassifierOutput

if TYPE_CHECKING:
    from torch import nn


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


def _resnet18_blocks(cin: int, num_classes: int, width: int) -> list[nn.Module]:
    from torch import nn

    BasicBlock = _nn_classes()["BasicBlock"]
    widths = [width, 2 * width, 4 * width, 8 * width]
    blocks: list[nn.Module] = [
        nn.Sequential(nn.Conv2d(cin, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
    ]
    c = width
    for i, w in enumerate(widths):
        stride = 1 if i == 0 else 2
        blocks.append(nn.Sequential(BasicBlock(c, w, stride), BasicBlock(w, w, 1)))
        c = w
    blocks.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)))
    return blocks


def _cnn_blocks(cin: int, num_classes: int, width: int, hidden: int) -> list[nn.Module]:
    from torch import nn

    # Pool to 4x4 whatever the input size (8x8 digits, upsampled 16/32, CIFAR 32x32): the head sees the same shape.
    return [
        nn.Sequential(nn.Conv2d(cin, width, 3, 1, 1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(width, 2 * width, 3, 1, 1), nn.ReLU(), nn.AdaptiveMaxPool2d(4)),
        nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, hidden), nn.ReLU()),
        nn.Linear(hidden, num_classes),
    ]


def _mlp_blocks(n_in: int, num_classes: int, hidden: int) -> list[nn.Module]:
    from torch import nn

    return [
        nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden), nn.ReLU()),
        nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU()),
        nn.Linear(hidden, num_classes),
    ]


# The nn.Module classes are defined on first use, by _nn_classes(), not at import: ModelConfig is read to check an
# image-track config, and a config error must not wait the 1-2 s torch takes to import
# (tests/test_fast_config_errors.py). They stay reachable as ``image_track.models.ImageClassifier`` / ``BasicBlock``
# (the module's __getattr__ below), the name pickle and repr use. Kept in this file rather than a torch-only module so
# that a model's config and its network read together (llm_unlearn.training builds its Trainer subclass the same way).
@functools.cache
def _nn_classes() -> dict[str, type]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

    class ImageClassifier(nn.Module):
        """Normalisation + ``blocks``; ``forward(pixel_values, labels=None)`` returns a :class:`ClassifierOutput`."""

        def __init__(
            self, cfg: ModelConfig, image_shape: list[int], num_classes: int, mean: list[float], std: list[float]
        ):
            super().__init__()
            self.cfg, self.image_shape, self.num_classes = cfg, list(image_shape), num_classes
            cin = image_shape[0]
            n_in = int(torch.tensor(image_shape).prod())
            blocks = {
                "cnn": lambda: _cnn_blocks(cin, num_classes, cfg.width, cfg.hidden),
                "resnet18": lambda: _resnet18_blocks(cin, num_classes, cfg.width),
                "mlp": lambda: _mlp_blocks(n_in, num_classes, cfg.hidden),
                "linear": lambda: [nn.Sequential(nn.Flatten(), nn.Linear(n_in, num_classes))],
            }
            if cfg.arch not in blocks:
                raise ConfigError(f"model.arch: unknown architecture {cfg.arch!r}; choose from {list(blocks)}")
            self.blocks = nn.ModuleList(blocks[cfg.arch]())
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))
            self.unlearn_task = ClassificationTask()  # how llm_unlearn's methods read this model's batches

        def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
            """The input of the head (the last block)."""
            x = (pixel_values - self.mean) / self.std
            for block in self.blocks[:-1]:
                x = block(x)
            return x

        def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **_) -> ClassifierOutput:
            logits = self.blocks[-1](self.features(pixel_values))
            loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
            return ClassifierOutput(logits=logits, loss=loss)

        def description(self) -> dict:
            return {
                "model": asdict(self.cfg),
                "image_shape": self.image_shape,
                "num_classes": self.num_classes,
                "mean": self.mean.flatten().tolist(),
                "std": self.std.flatten().tolist(),
            }

    for cls in (BasicBlock, ImageClassifier):
        cls.__qualname__ = cls.__name__  # as if defined at module level: pickle finds it through __getattr__
    return {"BasicBlock": BasicBlock, "ImageClassifier": ImageClassifier}


def __getattr__(name: str):
    if name in ("BasicBlock", "ImageClassifier"):
        return _nn_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_model(cfg: ModelConfig, image_shape, num_classes: int, mean, std, seed: int) -> nn.Module:
    """A freshly initialised :class:`ImageClassifier` whose initialisation depends on ``seed`` only (the global RNG is
    untouched)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _nn_classes()["ImageClassifier"](cfg, image_shape, num_classes, mean, std)


def save_model(model: nn.Module, out: str | Path) -> None:
    """An :class:`ImageClassifier`'s weights and description, in ``out``."""
    save_module(model, out, model.description())


def load_model(model_dir: str | Path, key: str = "model_dir") -> nn.Module:
    """The :class:`ImageClassifier` :func:`save_model` wrote."""

    def build(d: dict) -> nn.Module:  # from the description save_model wrote
        cls = _nn_classes()["ImageClassifier"]
        return cls(ModelConfig(**d["model"]), d["image_shape"], d["num_classes"], d["mean"], d["std"])

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
