"""The stage harness: the one way into every stage, whoever starts it (the CLI, a Python ``main(config)``, the
scheduler of ``run``), for both tracks. A stage file holds only its own work; this module holds the rest.

:func:`run_stage` does, in this order:

1. **Checks before any work or write**: required keys; the whole config (``validate_config``: types, ranges, seeds
   in numpy's range, output paths the filesystem accepts); every input dir that is a stage output must be finished
   (it has its ``.complete`` marker); the stage's own input checks (``check``: data, models that belong together,
   a budget that buys a step). Problems raise :class:`~llm_unlearn.configs.ConfigError` (exit 2 at the CLI).
2. **A finished output is compared with the request** (:func:`output_state`): the same config made from the same
   inputs is kept (the stage is skipped); another config, or other input dirs, is refused with a message naming
   ``--overwrite`` (or redone, saying so, with ``overwrite``); an input that was redone since, or a JSON/YAML file of
   the output that no longer is what the stage wrote (corrupted, edited, missing), makes it redo, saying so.
   What counts as the same config is the rule ``run`` uses (``outputs.HOW_NOT_WHAT``, ``outputs.content``).
3. The output dir is **locked** (:mod:`llm_unlearn.locks`) and the stage's own temporary files from a killed run
   (``.*.tmp``) are removed; checkpoints are kept, so a killed stage resumes.
4. ``body(cfg, out)`` does the work and returns the JSON records to write. An ``OSError`` (disk full, permissions,
   ...) during it becomes a one-line :class:`StageFault` naming the path and errno (exit 1); the next start resumes.
5. The records, the resolved ``config.yaml`` and **last** the ``.complete`` marker are written, each atomically.
   The marker holds a fresh stamp, the path and stamp of every input dir, and a digest of every JSON/YAML file of
   the dir: a dependent notices that its input was redone, and a damaged record is noticed, by content.

What a finished output is and how it is judged (config comparison, input stamps, record digests) lives in
:mod:`llm_unlearn.outputs`. Imports point one way: this module knows configs, utils, locks and outputs, never a stage.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from . import locks
from .configs import ConfigError, load_yaml, validate_config
from .outputs import (
    STARTED,
    clear_output,
    content,
    differences,
    finish,
    normalized,
    output_dir,
    output_state,
    remove_temporary,
    stage_inputs,
)
from .files import COMPLETE_MARKER, atomic_write_text

logger = logging.getLogger(__name__)

# The option every stage command takes besides its config keys (not part of a stage's identity).
OVERWRITE_HELP = (
    "redo a finished output_dir whose saved config.yaml (or input dirs) differ from this command's, instead of "
    "refusing (--overwrite alone or --overwrite true; --no_overwrite, the default, refuses)"
)
STAGE_FLAGS = {"overwrite": OVERWRITE_HELP}


class StageFault(RuntimeError):
    """A fault after a stage's work started (disk full, an I/O error): one line naming the path and errno; the CLI
    exits with code 1 and a rerun of the same command resumes."""


def is_main_process() -> bool:
    """Rank 0 of a multi-process launch (``accelerate launch``), or a single process: the one that writes."""
    return int(os.environ.get("RANK", "0")) == 0


def as_fault(e: BaseException, out: Path) -> StageFault | None:
    """A one-line fault for an I/O error in a stage (None for anything else): ``PATH: [Errno N] message``.
    safetensors reports a failed write as its own error type with the OS error inside its message."""
    import errno as errno_mod
    import re

    if isinstance(e, OSError):
        path = e.filename or out
        code = f"[Errno {e.errno}] {e.strerror}" if e.errno else str(e)
        return StageFault(f"{path}: {code}")
    text = str(e)
    if type(e).__name__ == "SafetensorError" or "No space left on device" in text or "file write failed" in text:
        m = re.search(r"code: (\d+)|\[Errno (\d+)\]", text)
        n = int(next(g for g in m.groups() if g)) if m else None
        if n is None and "No space left" in text:
            n = errno_mod.ENOSPC
        code = f"[Errno {n}] {os.strerror(n)}" if n else text.splitlines()[0][:200]
        return StageFault(f"{out}: {code}")
    return None


def _check_inputs_finished(cfg) -> None:
    """An input dir that is a stage output (it holds a config.yaml) must be finished."""
    for key, path in stage_inputs(cfg).items():
        if path is None:
            continue
        p = Path(path)
        if p.is_dir() and (p / "config.yaml").is_file() and not (p / COMPLETE_MARKER).is_file():
            raise ConfigError(
                f"{key}: {path!r} is an unfinished stage output (no .complete marker: it was interrupted, is running "
                "or is being redone); finish that stage first"
            )


def run_stage(
    cfg,
    body: Callable[[Any, Path], dict],
    *,
    name: str,
    required: tuple[str, ...] = ("output_dir",),
    check: Callable[[Any], None] | None = None,
    result: Callable[[Path], Any] | None = None,
    overwrite: bool = False,
    validate: bool = True,
) -> Any:
    """Run one stage through the harness (see the module docstring); returns ``result(output_dir)`` (default: the
    output dir), also when a finished output is kept.

    Args:
        cfg: the stage's config (a dataclass; the scheduler's embedded-model job passes a mapping).
        body: ``body(cfg, out) -> records`` does the work, writes its artifacts into ``out`` and returns the JSON
            records ({file name: object}) the harness writes before ``config.yaml`` and the marker. It may raise a
            ``ConfigError`` for a problem it finds in its inputs before it writes anything.
        name: the stage's name in messages.
        required: keys that must be set.
        check: more input checks, before anything is written (data, models, budget).
        result: what to return for a finished output dir.
        overwrite: redo a finished output made from another config or other inputs instead of refusing.
        validate: run ``validate_config`` (off for mappings).
    """
    for key in required:
        value = cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key)
        if value is None:
            raise ConfigError(f"{key} is required")
    if validate and dataclasses.is_dataclass(cfg):
        validate_config(cfg)
    _check_inputs_finished(cfg)
    out = Path(output_dir(cfg))
    result = result or (lambda p: p)

    state, why = output_state(cfg)
    if state == "current":
        return result(out)
    if state == "changed" and not overwrite:
        raise ConfigError(
            f"output_dir {str(out)!r} holds a finished {name} output made with another config ({why}); choose "
            "another output_dir or pass --overwrite true to redo it"
        )
    if check is not None:
        check(cfg)
    main = is_main_process()
    created = _missing_dirs(out)
    locked = False
    try:
        if main:
            locks.acquire(out)
            locked = True
        state, why = output_state(cfg)  # again, under the lock: another process may have finished it meanwhile
        if state == "current":
            return result(out)
        if main:
            if state in ("changed", "stale"):
                logger.warning("%s: %s; redoing the %s stage", out, why, name)
                clear_output(out)
            elif state == "partial":
                _restart_if_other(out, cfg, name)
            if not (out / STARTED).is_file():
                mark_started(out, cfg)
            remove_temporary(out)
        try:
            records = body(cfg, out)
            if main:
                finish(out, cfg, records or {})
        except ConfigError:  # an input problem the stage found before writing: leave the dir as it was
            if main and out in created:
                clear_output(out)
            elif main and state == "absent":
                (out / STARTED).unlink(missing_ok=True)
            raise
        except Exception as e:
            fault = as_fault(e, out)
            if fault is None:
                raise
            raise fault from e
        return result(out)
    finally:
        if locked:
            locks.release(out)
        for d in created:  # deepest first: dirs this call created and left empty (a refused start writes nothing)
            try:
                d.rmdir()
            except OSError:
                break


def _missing_dirs(out: Path) -> list[Path]:
    missing, p = [], out
    while not p.exists() and p.parent != p:
        missing.append(p)
        p = p.parent
    return missing


def _restart_if_other(out: Path, cfg, name: str) -> None:
    """An unfinished output begun with another config (its checkpoints would resume the wrong run) starts over;
    then this config is recorded as the one the dir's partial work belongs to."""
    started = out / STARTED
    if started.is_file():
        try:
            old = load_yaml(started.read_text())
        except (yaml.YAMLError, UnicodeDecodeError, OSError):
            old = None
        if old is None or differences(content(old), content(normalized(cfg))):
            logger.warning("%s: unfinished %s output of another config; starting over", out, name)
            clear_output(out)
    # (no record: a partial dir of an older version, whose checkpoints resume as before)


def mark_started(out: Path, cfg) -> None:
    atomic_write_text(out / STARTED, yaml.safe_dump(normalized(cfg), sort_keys=False))


def parse_stage(cls, argv, prog: str):
    """A stage command's config and its ``--overwrite`` flag (``(config, overwrite)``)."""
    from .flags import parse_config_and_flags

    cfg, flags = parse_config_and_flags(cls, argv, prog=prog, flags=STAGE_FLAGS, bool_flags=("overwrite",))
    overwrite = flags.get("overwrite")
    if overwrite is None:
        overwrite = False
    if not isinstance(overwrite, bool):
        raise ConfigError(f"overwrite: expected true or false, got {overwrite!r}")
    return cfg, overwrite


def stage_parser(cls, prog: str):
    """The ``--help`` parser of a stage command: its config keys plus ``--overwrite``."""
    from .flags import make_parser

    return make_parser(cls, prog=prog, flags=STAGE_FLAGS, bool_flags=("overwrite",))


def stage_commands(cls, main: Callable, prog: str) -> tuple[Callable, Callable]:
    """A stage module's ``make_parser()`` (its ``--help``) and ``cli(argv)`` (parse the config and ``--overwrite``,
    run ``main``, print the output dir), so that a stage file holds only its own logic::

        make_parser, cli = stage_commands(TrainConfig, main, "llm-unlearn train")
    """

    def make_parser():
        return stage_parser(cls, prog)

    def cli(argv=None) -> None:
        cfg, overwrite = parse_stage(cls, argv, prog)
        print(main(cfg, overwrite=overwrite))

    return make_parser, cli
