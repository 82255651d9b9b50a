"""Image classifiers in plain ``torch.nn`` (no torchvision: its registry build breaks the CPU torch here).

Every model is an :class:`ImageClassifier`: per-channel normalisation (buffers, so pixels stay in [0, 1] everywhere
else: attack budgets and Gaussian noise are in pixel units) followed by ``blocks``, an ordered ``ModuleList`` from
the stem to the classification head. The unlearning methods read that list through the classification task: CF-k /
EU-k touch the last k blocks (k = 1 is the head), RMU steers a block's output.

Architectures: ``cnn`` (two conv blocks, a hidden fully-connected block, a head: the tiny default), ``resnet18``
(the CIFAR variant of He et al. 2016: 3x3 stem, no max-pool, four stages of two basic blocks), ``mlp`` and
``linear`` (a linear classifier on the pixels: the victim of the gradient-canceling attack). Not in ``models.py``
(config, construction, storage): an ``nn.Module`` subclass needs torch, and ModelConfig is read before torch loads.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from llm_unlearn.configs import ConfigError
from llm_unlearn.tasks.classification import ClassificationTask, ClassifierOutput


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

    def __init__(self, cfg, image_shape: list[int], num_classes: int, mean: list[float], std: list[float]):
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


def _resnet18_blocks(cin: int, num_classes: int, width: int) -> list[nn.Module]:
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
    # Pool to 4x4 whatever the input size (8x8 digits, upsampled 16/32, CIFAR 32x32): the head sees the same shape.
    return [
        nn.Sequential(nn.Conv2d(cin, width, 3, 1, 1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(width, 2 * width, 3, 1, 1), nn.ReLU(), nn.AdaptiveMaxPool2d(4)),
        nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, hidden), nn.ReLU()),
        nn.Linear(hidden, num_classes),
    ]


def _mlp_blocks(n_in: int, num_classes: int, hidden: int) -> list[nn.Module]:
    return [
        nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden), nn.ReLU()),
        nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU()),
        nn.Linear(hidden, num_classes),
    ]
