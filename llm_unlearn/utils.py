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


def mark_complete(output_dir: str | os.PathLike) -> None:
    """A stage's output dir counts as complete only once this marker exists (written last)."""
    atomic_write_text(Path(output_dir) / COMPLETE_MARKER, "ok\n")


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
