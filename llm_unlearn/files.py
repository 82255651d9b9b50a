"""Files a killed process cannot leave half-written (temporary file + rename), JSON I/O, and the ``.complete``
marker that says a stage's output dir is finished. The lowest layer: imports nothing of the package."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

COMPLETE_MARKER = ".complete"
# Everything a job of `run` printed (llm_unlearn.console.job_output); not a record: no digest, kept by a redo.
LOG_NAME = "log.txt"


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


def _atomic_write(path: str | os.PathLike, write) -> Path:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    """``fig.savefig`` via a temporary file + rename (a killed report leaves no half-written image)."""
    return _atomic_write(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", **kwargs))


def atomic_save_tensors(tensors: dict, path: str | os.PathLike) -> Path:
    """A ``safetensors`` file (no pickles) via a temporary file + rename."""
    from safetensors.torch import save_file

    return _atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp))


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
