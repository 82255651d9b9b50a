"""The classification task: the seam through which every unlearning method in ``METHODS`` trains a classifier.

A batch is ``{"pixel_values": (n, ...), "labels": (n,)}`` (plus side columns such as ``index``); the model is any
``torch.nn.Module`` whose ``forward(pixel_values=...)`` returns an object with ``.logits`` of shape (n, classes) and
which lists its ordered blocks in a ``blocks`` ``ModuleList`` (stem first, classification head last). The mapping to
the causal-LM task (``llm_unlearn.tasks.causal_lm.CausalLMTask``):

- loss: mean cross-entropy of the batch (the LM's mean completion-token NLL);
- cost: examples through forward+backward (the LM counts tokens), the unit the image train stage records as its
  ``compute_tokens``, so a budget is a fraction of retraining compute in the same unit;
- log p(y|x) of the label for NPO/SimNPO (a one-"token" completion: every length is 1);
- the class logits for KL terms (SCRUB, GradDiff-KL), one position per example;
- a block's output for RMU: (n, C, H, W) feature maps are read as H*W positions of width C, (n, d) as one position.

Also here: the SGD recipe classifiers are trained with (:class:`ClassifierTrainConfig`, read by
``llm_unlearn.training.train_classifier``) and its augmentation (:func:`random_crop_flip`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..configs import ConfigError

# torch is imported inside the functions that use it, not here: checking an image-track config reads
# ClassifierTrainConfig (and the image modules read Split), and a config error must not wait the 1-2 s torch takes
# to import (tests/test_fast_config_errors.py). The annotations are strings (``from __future__``), for readers only.
if TYPE_CHECKING:
    import torch

INPUT_KEY = "pixel_values"


@dataclass
class ClassifierTrainConfig:
    """SGD training of a classifier (``llm_unlearn.training.train_classifier``): the image track's ``train:``
    section (initial, gold and attack-surrogate models)."""

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


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Per-image random crop (zero padding ``padding``) and horizontal flip of a batch (n, C, H, W), as tensor ops
    (no torchvision: its registry build breaks this torch)."""
    import torch

    n, _, h, w = x.shape
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # (n, h)
        cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # (n, w)
        bidx = torch.arange(n, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x  # channels-last after the crop's gather: ClassificationTask.model_inputs makes it contiguous


def make_augment(kind: str, padding: int = 4) -> Callable | None:
    """The ``augment`` of a :class:`ClassificationTask` for a config's ``augment`` (none | crop_flip)."""
    if kind == "none":
        return None
    return lambda x, g: random_crop_flip(x, g, padding=padding)


@dataclass
class ClassifierOutput:
    """What a classifier returns: ``logits`` (n, classes) and ``loss`` when labels were given."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None

    def __getitem__(self, i):  # HF Trainer indexes outputs like a tuple in a few places
        return (self.loss, self.logits)[i] if self.loss is not None else (self.logits,)[i]


@dataclass
class Split:
    """Labelled inputs as the rows the collator stacks; ``index``: each row's place in its source set."""

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {INPUT_KEY: self.images[i], "labels": int(self.labels[i]), "index": int(self.index[i])}


@dataclass
class ClassificationCollator:
    """Stacks ``pixel_values`` and turns ``labels`` and integer side columns into tensors."""

    extra_int_columns: tuple[str, ...] = ("index", "noise_seed")

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        import torch

        batch = {
            INPUT_KEY: torch.stack([torch.as_tensor(f[INPUT_KEY], dtype=torch.float32) for f in features]),
            "labels": torch.as_tensor([int(f["labels"]) for f in features], dtype=torch.long),
        }
        for col in self.extra_int_columns:
            if col in features[0]:
                batch[col] = torch.as_tensor([int(f[col]) for f in features], dtype=torch.long)
        return batch


class ClassificationTask:
    """Cross-entropy classification behind the same methods as :class:`~llm_unlearn.tasks.causal_lm.CausalLMTask`.

    Args:
        augment: optional ``(pixel_values, generator) -> pixel_values`` applied to training batches of the methods
            (only while the model is in training mode), e.g. :func:`random_crop_flip` as in the training stage.
    """

    name = "classification"

    def __init__(self, augment: Callable | None = None, seed: int = 0):
        import torch

        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)

    def get_rng_state(self) -> dict:
        """The augmentation generator's state as JSON (hex bytes): Trainer checkpoints do not hold it, and a resumed
        run must draw the augmentations an uninterrupted run would."""
        return {"augment_rng": self.generator.get_state().numpy().tobytes().hex()}

    def set_rng_state(self, state: dict) -> None:
        if "augment_rng" in state:
            import torch

            raw = bytearray.fromhex(state["augment_rng"])
            self.generator.set_state(torch.frombuffer(raw, dtype=torch.uint8).clone())

    def forward(self, model, batch: dict):
        return model(pixel_values=batch[INPUT_KEY])

    def _logits(self, model, batch: dict) -> torch.Tensor:
        logits = self.forward(model, batch).logits
        if logits.ndim != 2:
            raise ValueError(f"a classifier must return logits of shape (n, classes), got {tuple(logits.shape)}")
        return logits.float()

    def nll(self, model, batch: dict) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(self._logits(model, batch), batch["labels"])

    def cost(self, batch: dict) -> float:
        return float(batch["labels"].shape[0])

    def sequence_logps(self, model, batch: dict) -> torch.Tensor:
        """log p(label | x) per example, shape (n,)."""
        import torch

        logps = torch.log_softmax(self._logits(model, batch), dim=-1)
        return logps.gather(-1, batch["labels"][:, None]).squeeze(-1)

    def lengths(self, batch: dict) -> torch.Tensor:
        import torch

        return torch.ones_like(batch["labels"])

    def logits(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        logits = self._logits(model, batch)
        return logits, torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)

    def logits_nll(self, logits: torch.Tensor, batch: dict, mask: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(logits[mask], batch["labels"][mask])

    def hidden_view(self, hidden: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        if hidden.ndim == 4:  # (n, C, H, W) -> (n, H*W, C): every spatial position is a "token" of width C
            hidden = hidden.flatten(2).transpose(1, 2)
        elif hidden.ndim == 2:
            hidden = hidden[:, None, :]
        elif hidden.ndim != 3:
            raise ValueError(f"cannot read a block output of shape {tuple(hidden.shape)} as (n, positions, width)")
        return hidden, torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)

    def blocks(self, model) -> torch.nn.ModuleList:
        import torch

        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, torch.nn.ModuleList):
            raise ConfigError(f"{type(model).__name__} has no `blocks` ModuleList (stem ... head) for this method")
        return blocks

    def top_modules(self, model, layer_ids: list[int]) -> list[torch.nn.Module]:
        """The chosen blocks; the head is the last block, so nothing else sits above them."""
        blocks = self.blocks(model)
        return [blocks[i] for i in layer_ids]

    def model_inputs(self, batch: dict) -> dict:
        import torch

        x = batch[INPUT_KEY]
        if self.augment is not None and torch.is_grad_enabled():
            # contiguous: the crop leaves a channels-last batch, whose CPU ResNet backward with few channels (seen at
            # width 2-4 with this torch) corrupts memory; same values, standard layout
            x = self.augment(x, self.generator).contiguous()
        return {INPUT_KEY: x, "labels": batch["labels"]}

    def collator(self, pad_token_id: int | None = None) -> ClassificationCollator:
        return ClassificationCollator()


# --- Batched inference on a tensor of inputs (evaluation and the image attacks) ---


def device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def logits_of(model, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    import torch

    dev = device()
    model.to(dev).eval()
    with torch.no_grad():
        out = [
            model(**{INPUT_KEY: x[i : i + batch_size].to(dev)}).logits.float().cpu()
            for i in range(0, len(x), batch_size)
        ]
    return torch.cat(out) if out else torch.zeros(0)


def predict(model, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return logits_of(model, x, batch_size).argmax(-1)


def per_example_loss(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    import torch.nn.functional as F

    return F.cross_entropy(logits_of(model, x, batch_size), y, reduction="none")


def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(model, x) == y).float().mean())
