"""What a stage output dir holds and how it is judged: the rules :mod:`llm_unlearn.harness` and the scheduler
share.

A finished stage dir holds its artifact, its JSON records, its resolved ``config.yaml`` and last a ``.complete``
marker (``llm_unlearn.files.mark_complete``) with a fresh stamp, the path and stamp of every input dir it was made
from, and a SHA-256 of every JSON/YAML file of the dir (:func:`finish`). :func:`output_state` compares such a dir
with a new request: the same config (:func:`content`: layout keys and :data:`HOW_NOT_WHAT` keys aside) from the same
inputs is ``current``; another config or other input dirs is ``changed``; an input redone since (a new stamp) or
unfinished, or a record that no longer is what the stage wrote, is ``stale``. :func:`read_record` is how readers of a
run (the report) read a record: a missing, unparsable or emptied one is an error naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from .configs import ConfigError, load_yaml
from .locks import LOCK_NAME
from .files import LOG_NAME, atomic_write_text, is_atomic_tmp, is_complete, mark_complete, read_marker

logger = logging.getLogger(__name__)

STARTED = ".started.yaml"  # the config of a stage that started and has not finished (its checkpoints are for it)

# Keys that change how a stage runs, never what it computes: checkpoint frequency (a resumed run is bit-identical to
# an uninterrupted one), the progress bar and where the Trainer reports its logs. Turning checkpoints on for a long
# run must not redo its finished stages.
HOW_NOT_WHAT = frozenset({"save_steps", "save_epochs", "progress", "report_to"})


# --- configs as saved and compared ---


def output_dir(cfg) -> str | None:
    return cfg.get("output_dir") if isinstance(cfg, dict) else getattr(cfg, "output_dir", None)


def normalized(cfg) -> Any:
    """A config as its saved config.yaml reads back (dataclasses -> dicts, tuples -> lists)."""
    data = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    if isinstance(data, dict):
        data = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in data.items()}
    return yaml.safe_load(yaml.safe_dump(data, sort_keys=False))


def content(cfg: Any) -> Any:
    """What a stage config says apart from where it reads and writes: ``*_dir`` keys are the run's layout (a run
    dir reached through another path, or moved, is the same run; the inputs are compared through their markers
    instead, :func:`input_problem`); :data:`HOW_NOT_WHAT` keys are ignored. A local ``model_name_or_path`` is compared
    resolved (the embedded base model of a run, ``seed_<s>/base``, through its marker like an input dir)."""
    if not isinstance(cfg, dict):
        return cfg
    out = {}
    for k, v in cfg.items():
        if k.endswith("_dir") or k in HOW_NOT_WHAT:
            continue
        if k == "model_name_or_path" and isinstance(v, str) and os.path.isdir(v):
            p = Path(v).resolve()
            if p.name == "base" and p.parent.name.startswith("seed_"):
                continue
            v = str(p)
        out[k] = content(v)
    return out


def same(old: Any, new: Any) -> bool:
    """Equal on the keys both sides have: a key one side lacks is a field added or removed by another version of
    llm-unlearn, whose default kept the old behaviour (otherwise completed work would be redone on every upgrade)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return all(same(old[k], new[k]) for k in old.keys() & new.keys())
    return old == new


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every differing key both sides have (nested keys dotted)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in old:
            if k in new:
                out += differences(old[k], new[k], f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def config_changed(cfg) -> bool:
    """Whether a complete output dir was made with another config than ``cfg`` (a dir without config.yaml, from an
    older version, counts as unchanged)."""
    return bool(_config_differences(cfg))


def _config_differences(cfg) -> list[str]:
    saved = Path(output_dir(cfg)) / "config.yaml"
    if not saved.is_file():
        return []
    try:
        old = load_yaml(saved.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return [f"{saved} does not parse"]
    return differences(content(old), content(normalized(cfg)))


# --- inputs, stamps and record digests ---


def stage_inputs(cfg) -> dict[str, str | None]:
    """The dirs a stage reads: every ``*_dir`` field but ``output_dir`` (None where unset), and
    ``model_name_or_path`` when it is a local directory."""
    data = cfg if isinstance(cfg, dict) else {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    out = {
        k: v for k, v in data.items() if k.endswith("_dir") and k != "output_dir" and (v is None or isinstance(v, str))
    }
    m = data.get("model_name_or_path")
    if isinstance(m, str) and os.path.isdir(m):
        out["model_name_or_path"] = m
    return out


def _input_record(path: str | None, out: Path) -> dict:
    """An input dir as a dependent's marker records it: resolved, relative to the dependent (a run dir moved as a
    whole keeps it), and the stamp of its own marker (None: not a stage output, or unfinished)."""
    if path is None:
        return {"path": None, "relative": None, "stamp": None}
    marker = read_marker(path)
    resolved = Path(path).resolve()
    return {
        "path": str(resolved),
        "relative": os.path.relpath(resolved, out.resolve()),
        "stamp": None if marker is None else marker.get("stamp"),
    }


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _record_files(out: Path) -> list[Path]:
    """The JSON/YAML files at the top of a stage dir (records, config.yaml, model/tokenizer configs)."""
    return sorted(
        p for p in out.iterdir() if p.suffix in (".json", ".yaml") and p.is_file() and not p.name.startswith(".")
    )


def record_problem(out: Path, marker: dict) -> str | None:
    """Why the files of a complete stage dir are not what the stage wrote (None if they are): a file missing, one
    that does not parse, or one changed since (a digest in the marker; markers of older versions have none, then
    only parsing is checked)."""
    files = marker.get("files")
    if isinstance(files, dict):
        for name, digest in files.items():
            p = out / name
            if not p.is_file():
                return f"{p} is missing"
            if _digest(p) != digest:
                return _parse_problem(p) or f"{p} was changed after its stage finished"
        return None
    for p in _record_files(out):
        problem = _parse_problem(p)
        if problem:
            return problem
    return None


def _parse_problem(p: Path) -> str | None:
    try:
        text = p.read_text()
        if p.suffix == ".json":
            json.loads(text)
        else:
            load_yaml(text)
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as e:
        return f"{p} does not parse ({str(e).splitlines()[0]})"
    return None


def input_problem(cfg, marker: dict) -> tuple[str, str] | None:
    """``("changed", why)`` when the output was made from other input dirs (another place and another stamp),
    ``("stale", why)`` when an input in the same place (the same path, or the same path relative to the output: a
    run dir moved as a whole) was redone since (new stamp) or is unfinished (no marker); None when the inputs are
    those it was made from (the same stamp elsewhere is the same input moved)."""
    recorded = marker.get("inputs")
    if not isinstance(recorded, dict):
        return None
    out = Path(output_dir(cfg))
    for key, path in stage_inputs(cfg).items():
        rec = recorded.get(key)
        if not isinstance(rec, dict):
            continue
        cur = _input_record(path, out)
        same_place = cur["path"] == rec.get("path") or (
            cur["relative"] is not None and cur["relative"] == rec.get("relative")
        )
        if same_place:
            if rec.get("stamp") is not None and cur["stamp"] != rec.get("stamp"):
                if cur["stamp"] is None and not is_complete(path):
                    return "stale", f"its input {key} {path} has no .complete marker (unfinished or being redone)"
                return "stale", f"its input {key} {path} was redone since it ran"
        elif rec.get("stamp") is None or cur["stamp"] != rec.get("stamp"):
            return "changed", f"{key}: {rec.get('path')!r} -> {cur['path']!r}"
    return None


def output_state(cfg) -> tuple[str, str]:
    """(state, why) of a stage's output dir for the request ``cfg``: ``absent`` (nothing yet), ``partial`` (begun,
    not finished: it resumes), ``current`` (finished from this config and these inputs), ``changed`` (finished
    from another config or other inputs), ``stale`` (its inputs were redone, or its records are damaged)."""
    out = Path(output_dir(cfg))
    if not is_complete(out):
        # (the job's log.txt alone is no work begun: `run` opens it before the stage starts)
        begun = out.is_dir() and any(p.name != LOG_NAME for p in out.iterdir())
        return ("partial" if begun else "absent"), ""
    marker = read_marker(out) or {}
    problem = record_problem(out, marker)
    if problem:
        return "stale", problem
    diffs = _config_differences(cfg)
    if diffs:
        return "changed", "; ".join(diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "")
    inp = input_problem(cfg, marker)
    if inp:
        return inp
    return "current", ""


def read_record(path: str | os.PathLike, required: tuple[str, ...] = ()):
    """A JSON record of a finished stage, for readers of a run (the report). A missing or unparsable file, or one
    without the ``required`` keys (e.g. replaced by ``{}``), is a :class:`ConfigError` naming it (``run`` would redo
    that stage; a reader cannot). A file whose digest differs from the one its marker recorded is read with a
    warning (an edit by hand or a damaged copy)."""
    p = Path(path)
    redo = "; rerun `llm-unlearn run` with the same config to redo that stage"
    if not p.is_file():
        raise ConfigError(f"{p} is missing: its stage has not finished{redo}")
    problem = _parse_problem(p)
    if problem:
        raise ConfigError(problem + redo)
    data = json.loads(p.read_text())
    missing = [k for k in required if not isinstance(data, dict) or k not in data]
    if missing:
        raise ConfigError(f"{p} holds no {missing[0]!r} (it is empty or was not written by its stage){redo}")
    marker = read_marker(p.parent) or {}
    digest = marker.get("files", {}).get(p.name) if isinstance(marker.get("files"), dict) else None
    if digest is not None and _digest(p) != digest:
        logger.warning("%s was changed after its stage finished; reading it as it is now", p)
    return data


# --- the stage dir ---


def clear_output(out: Path) -> None:
    """Empty a stage dir for a redo (its lock, held by this process, stays; so does its ``log.txt``, which the job
    writing it holds open and which then tells the story of both attempts)."""
    for p in out.iterdir():
        if p.name in (LOCK_NAME, LOG_NAME):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def remove_temporary(out: Path, names: tuple[str, ...] | None = None) -> None:
    """Delete the temporary files and dirs a killed writer left at the top of ``out`` (``.<name>.*.tmp``,
    ``.weights.tmp``, ...); with ``names``, only those of these files."""
    if not out.is_dir():
        return
    for p in out.iterdir():
        if not is_atomic_tmp(p):
            continue
        if names is not None and not any(p.name.startswith(f".{n}.") for n in names):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def write_records(out: Path, cfg, records: dict) -> None:
    """The JSON records and the resolved ``config.yaml`` (no marker: also used for an unfinished, diverged run)."""
    from .configs import save_config
    from .files import write_json

    for name, obj in records.items():
        write_json(out / name, obj)
    if dataclasses.is_dataclass(cfg):
        save_config(cfg, out)
    else:
        atomic_write_text(out / "config.yaml", yaml.safe_dump(normalized(cfg), sort_keys=False))


def finish(out: Path, cfg, records: dict) -> Path:
    """Records, ``config.yaml``, then the marker with the inputs' stamps and the digests of the dir's JSON/YAML."""
    write_records(out, cfg, records)
    (out / STARTED).unlink(missing_ok=True)
    info = {
        "inputs": {k: _input_record(v, out) for k, v in stage_inputs(cfg).items()},
        "files": {p.name: _digest(p) for p in _record_files(out)},
    }
    mark_complete(out, info)
    return out
