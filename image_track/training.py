"""Training and inference loops for the image classifiers (plain PyTorch: SGD with momentum, as in the paper).

The compute unit is the one the unlearning budget uses for classifiers (``ClassificationTask.cost``): examples
through one forward+backward pass, recorded as ``compute_tokens``.

With a ``checkpoint_dir`` and ``save_epochs``, ``fit`` saves a checkpoint every ``save_epochs`` epochs and a rerun
resumes from the newest one to exactly the model an uninterrupted run trains (bit for bit on CPU): at an epoch
boundary the whole state is the weights, the SGD momentum buffers, the scheduler's step and the one
``torch.Generator`` that draws the batch order and the augmentation. Checkpoints are safetensors + JSON (no
pickles), written into a temporary dir that is renamed into place, so a kill mid-save leaves nothing to resume from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from llm_unlearn.configs import ConfigError
from llm_unlearn.training import DivergedError

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


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fit(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainSection,
    seed: int,
    on_epoch_end=None,
    checkpoint_dir: str | os.PathLike | None = None,
) -> dict:
    """Train ``model`` in place on (x, y); returns steps, compute (examples through forward+backward), final-epoch
    loss, wall seconds and ``resumed_from_epoch``. Raises :class:`DivergedError` on a non-finite loss.
    ``on_epoch_end(epoch, model)`` (epochs from 1) lets an attacker keep checkpoints of its surrogate's trajectory.

    With ``checkpoint_dir`` and ``cfg.save_epochs > 0``: resume from the newest complete checkpoint there (if it was
    made by the same training: config, seed, data and architecture) and save one every ``cfg.save_epochs`` epochs,
    keeping the last two. The caller deletes them (:func:`remove_checkpoints`) once the trained model is written.
    """
    from .data import make_augment

    dev = device()
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None and cfg.save_epochs > 0 else None
    key = _checkpoint_key(model, x, y, cfg, seed) if ckpt is not None else None
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
    first_epoch, resumed_from, wall_before = 0, None, 0.0
    if ckpt is not None:
        state = _resume(ckpt, key, model, opt, sched, g)
        if state is not None:
            first_epoch = resumed_from = state["epoch"]
            step, compute, epoch_loss, wall_before = (
                state["steps"],
                state["compute_tokens"],
                state["train_loss"],
                state["wall_seconds"],
            )
    for epoch in range(first_epoch, cfg.epochs):
        perm = torch.randperm(len(y), generator=g).to(dev)
        losses = []
        for i in range(0, len(y), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            xb = x[idx]
            if augment is not None:
                # The crop's permutes leave a channels-last batch; this torch's CPU ResNet backward on channels-last
                # input with few channels (seen at width 2-4) corrupts memory. Same values, standard layout.
                xb = augment(xb, g).contiguous()
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
        if ckpt is not None and (epoch + 1) % cfg.save_epochs == 0 and epoch + 1 < cfg.epochs:
            scalars = {"epoch": epoch + 1, "steps": step, "compute_tokens": compute, "train_loss": epoch_loss}
            scalars["wall_seconds"] = wall_before + time.perf_counter() - start
            _save_checkpoint(ckpt, key, scalars, model, opt, sched, g)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model)
    model.eval()
    return {
        "steps": step,
        "compute_tokens": compute,
        "train_loss": epoch_loss,
        "wall_seconds": wall_before + time.perf_counter() - start,
        "resumed_from_epoch": resumed_from,
    }


# --- Checkpoints: <checkpoint_dir>/checkpoint-<epoch>/{model,optimizer}.safetensors + state JSON (written last) ---

_MODEL_FILE, _OPTIMIZER_FILE, _GENERATOR_KEY = "model.safetensors", "optimizer.safetensors", "generator_state"
_TMP_PREFIX = ".tmp-"  # a dir being written or deleted; never resumed from, swept away on the next start


def _checkpoint_key(model, x: torch.Tensor, y: torch.Tensor, cfg: TrainSection, seed: int) -> dict:
    """What a checkpoint must have been trained on to be resumed from: the recipe (not the checkpoint frequency),
    the seed, the data (a digest of its bytes) and the architecture (parameter names and shapes)."""
    digest = hashlib.blake2b(digest_size=16)
    for t in (x, y):
        digest.update(str((t.dtype, tuple(t.shape))).encode())
        digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    recipe = {k: v for k, v in asdict(cfg).items() if k != "save_epochs"}
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    return json.loads(json.dumps({"train": recipe, "seed": seed, "data": digest.hexdigest(), "shapes": shapes}))


def _save_checkpoint(ckpt: Path, key: dict, scalars: dict, model, opt, sched, g: torch.Generator) -> None:
    """Write ``checkpoint-<epoch>`` atomically (a temp dir renamed into place), then keep only the last two."""
    from safetensors.torch import save_file

    from llm_unlearn.training import CHECKPOINT_STATE
    from llm_unlearn.files import write_json

    final = ckpt / f"checkpoint-{scalars['epoch']}"
    tmp = ckpt / f"{_TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / _MODEL_FILE))
    opt_state = opt.state_dict()
    tensors, other = {_GENERATOR_KEY: g.get_state()}, {}
    for idx, entries in opt_state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                other.setdefault(str(idx), {})[name] = value
    save_file(tensors, str(tmp / _OPTIMIZER_FILE))
    state = {
        **scalars,
        "key": key,
        "optimizer": {"param_groups": opt_state["param_groups"], "state": other},
        "scheduler": sched.state_dict(),
    }
    write_json(tmp / CHECKPOINT_STATE.format(rank=0), state)  # last: a checkpoint without it is incomplete
    if final.exists():
        _discard(final)
    os.replace(tmp, final)
    for old in _complete_checkpoints(ckpt)[:-2]:
        _discard(old)


def _complete_checkpoints(ckpt: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    from llm_unlearn.training import CHECKPOINT_STATE

    found = [
        (int(p.name.removeprefix("checkpoint-")), p)
        for p in ckpt.glob("checkpoint-*")
        if p.name.removeprefix("checkpoint-").isdigit() and (p / CHECKPOINT_STATE.format(rank=0)).is_file()
    ]
    return [p for _, p in sorted(found)]


def _resume(ckpt: Path, key: dict, model, opt, sched, g: torch.Generator) -> dict | None:
    """Load the newest complete checkpoint made by the same training into model/opt/sched/g; its scalars, or None."""
    from safetensors.torch import load_file

    from llm_unlearn.training import latest_checkpoint

    if ckpt.is_dir():
        for p in ckpt.glob(f"{_TMP_PREFIX}*"):  # a save or a deletion cut short by a kill
            shutil.rmtree(p, ignore_errors=True)
    path, state = latest_checkpoint(ckpt)
    if path is None:
        return None
    if state.get("key") != key:
        logger.warning("%s: checkpoints of another training (config, seed, data or model); starting over", ckpt)
        for p in _complete_checkpoints(ckpt):
            _discard(p)
        return None
    try:
        model.load_state_dict(load_file(str(Path(path) / _MODEL_FILE)))
        tensors = load_file(str(Path(path) / _OPTIMIZER_FILE))
        g.set_state(tensors.pop(_GENERATOR_KEY))
        opt_state = {int(i): dict(v) for i, v in state["optimizer"]["state"].items()}
        for name, value in tensors.items():
            idx, entry = name.split(".", 1)
            opt_state.setdefault(int(idx), {})[entry] = value
        opt.load_state_dict({"state": opt_state, "param_groups": state["optimizer"]["param_groups"]})
        sched.load_state_dict(state["scheduler"])
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise RuntimeError(f"cannot resume from checkpoint {path} ({e}); delete it to start over") from e
    logger.info("resuming training from %s (epoch %d)", path, state["epoch"])
    return state


def _discard(path: Path) -> None:
    """Delete a checkpoint dir: renamed out of sight first (atomic), so a kill mid-deletion leaves no checkpoint
    with some of its files gone."""
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}-deleting-{os.getpid()}")
    os.replace(path, tmp)
    shutil.rmtree(tmp, ignore_errors=True)


def remove_checkpoints(checkpoint_dir: str | os.PathLike) -> None:
    """Delete ``checkpoint_dir`` and everything in it (a finished stage keeps no checkpoints), and what an earlier
    deletion cut short by a kill left beside it."""
    path = Path(checkpoint_dir)
    if path.exists():
        _discard(path)
    for p in path.parent.glob(f"{_TMP_PREFIX}{path.name}-deleting-*"):
        shutil.rmtree(p, ignore_errors=True)


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
