"""Small shared helpers: atomic writes, seeding, JSON I/O, environment capture."""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

COMPLETE_MARKER = ".complete"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a temporary file + rename so a killed process never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_atomic_tmp(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporary file :func:`atomic_write_text` left behind (the writer was killed)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(".tmp")


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    """``fig.savefig`` via a temporary file + rename (a killed report leaves no half-written image)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


def mark_complete(output_dir: str | os.PathLike, info: dict | None = None) -> str:
    """A stage's output dir counts as complete only once this marker exists (written last). It holds a fresh random
    ``stamp`` (a dependent records its inputs' stamps: a redone input gets a new one) and ``info`` (what
    :mod:`llm_unlearn.harness` records: the inputs' stamps, digests of the dir's JSON/YAML files). Returns it."""
    import time
    import uuid

    stamp = uuid.uuid4().hex
    marker = {"stamp": stamp, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(info or {})}
    atomic_write_text(Path(output_dir) / COMPLETE_MARKER, json.dumps(marker, indent=1, sort_keys=True) + "\n")
    return stamp


def read_marker(output_dir: str | os.PathLike) -> dict | None:
    """The ``.complete`` marker of a stage output (None if it has none; ``{"stamp": None}`` for a marker from an
    older version, which held only "ok")."""
    path = Path(output_dir) / COMPLETE_MARKER
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        marker = json.loads(text)
    except json.JSONDecodeError:
        return {"stamp": None}
    return marker if isinstance(marker, dict) else {"stamp": None}


def is_complete(output_dir: str | os.PathLike) -> bool:
    return (Path(output_dir) / COMPLETE_MARKER).is_file()


def set_seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


PACKAGES = (
    "llm-unlearn",
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "deepspeed",
    "scikit-learn",
)


def environment_info(seeds: list[int] | None = None) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "packages": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit,
        "seeds": list(seeds) if seeds is not None else None,
    }


# --- Resuming a training stage from its last Trainer checkpoint ---

CHECKPOINT_STATE = "llm_unlearn_state-rank{rank}.json"


def latest_checkpoint(trainer_dir: str | os.PathLike, rank: int = 0) -> tuple[str | None, dict]:
    """The newest ``checkpoint-<step>`` under ``trainer_dir`` whose save finished, and our state saved with it.

    The Trainer writes a checkpoint's files one by one; our state file is written after all of them (``on_save``), so
    its presence is what marks a checkpoint complete. A checkpoint cut short by a kill is ignored.
    """
    best: tuple[int, Path] | None = None
    for p in Path(trainer_dir).glob("checkpoint-*"):
        step = p.name.removeprefix("checkpoint-")
        if step.isdigit() and (p / CHECKPOINT_STATE.format(rank=rank)).is_file():
            if best is None or int(step) > best[0]:
                best = (int(step), p)
    if best is None:
        return None, {}
    return str(best[1]), read_json(best[1] / CHECKPOINT_STATE.format(rank=rank))


def checkpoint_state_callback(get_state):
    """A ``TrainerCallback`` that saves ``get_state()`` (e.g. the compute counter) into every checkpoint, last."""
    from transformers import TrainerCallback

    class SaveStateCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                write_json(folder / CHECKPOINT_STATE.format(rank=args.process_index), get_state())
            return control

    return SaveStateCallback()


def epoch_seeded_sampler(n: int, seed: int, batch_size: int, lengths: list[int] | None = None):
    """A training-order sampler whose permutation depends only on (seed, epoch), never on the global RNG state.

    HF's samplers draw from the global torch RNG when an epoch starts; a run resumed from a checkpoint restores that
    RNG at the checkpoint's step, not at the epoch's start, so it would see other batches than the uninterrupted run.
    With ``lengths`` it groups examples of similar length into batches (HF's ``get_length_grouped_indices``).
    The Trainer (through accelerate) calls ``set_epoch`` before each epoch, also after skipping ahead on resume.
    """
    import numpy as np
    import torch

    class EpochSeededSampler(torch.utils.data.Sampler):
        def __init__(self):
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = int(epoch)

        def __len__(self) -> int:
            return n

        def __iter__(self):
            state = np.random.SeedSequence([int(seed) % 2**63, self.epoch]).generate_state(2, dtype=np.uint32)
            g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
            if lengths is None:
                return iter(torch.randperm(n, generator=g).tolist())
            from transformers.trainer_pt_utils import get_length_grouped_indices

            return iter(get_length_grouped_indices(lengths, batch_size, generator=g))

    return EpochSeededSampler()
