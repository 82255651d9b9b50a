"""The job scheduler behind ``run``: a DAG of stage jobs run by ``workers`` processes, longest jobs first.

A job is a stage module path plus its config; it writes one output dir and marks it complete last. A complete
output is skipped, which is how a killed run resumes, unless the job's config changed since (an ``--overwrite`` run
with other settings): then it and every job built on it are redone.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .utils import atomic_write_text, is_complete

logger = logging.getLogger(__name__)


@dataclass
class Job:
    name: str
    stage: str  # dotted module path whose ``main(config)`` runs the job, or "tiny" (the embedded base model)
    config: Any
    deps: list[str]


def _output_dir(job: Job) -> str:
    return job.config["output_dir"] if isinstance(job.config, dict) else job.config.output_dir


def run_job(job: Job, threads: int | None = None) -> tuple[str, float, str | None]:
    """Run one stage job (in this process or a worker); returns (name, seconds, diverged-or-skipped note)."""
    import importlib

    if threads:
        import torch

        torch.set_num_threads(threads)
    start = time.perf_counter()
    if job.stage == "tiny":
        from .testing import save_tiny
        from .utils import mark_complete

        out = job.config["output_dir"]
        if not is_complete(out):
            save_tiny(out, job.config["tiny"], seed=job.config["seed"])
            atomic_write_text(Path(out) / "config.yaml", yaml.safe_dump(_normalized(job.config), sort_keys=False))
            mark_complete(out)
        return job.name, time.perf_counter() - start, None
    module = importlib.import_module(job.stage)
    if _stage_kind(job) in ("evaluate", "diagnose") and _diverged_unlearn(job.config):
        return job.name, 0.0, "diverged"
    module.main(job.config)
    return job.name, time.perf_counter() - start, None


def _normalized(cfg) -> Any:
    """A config as its saved config.yaml reads back (dataclasses -> dicts, tuples -> lists)."""
    data = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    if isinstance(data, dict):
        data = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in data.items()}
    return yaml.safe_load(yaml.safe_dump(data, sort_keys=False))


def _config_changed(job: Job) -> bool:
    """Whether a complete output dir was made with another config than the job's (a dir without config.yaml, from
    an older version, counts as unchanged)."""
    saved = Path(_output_dir(job)) / "config.yaml"
    if not saved.is_file():
        return False
    return not _same(_content(yaml.safe_load(saved.read_text())), _content(_normalized(job.config)))


def _same(old: Any, new: Any) -> bool:
    """Equal on the keys both sides have: a key one side lacks is a field added or removed by another version of
    llm-unlearn, whose default kept the old behaviour (otherwise completed work would be redone on every upgrade)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return all(_same(old[k], new[k]) for k in old.keys() & new.keys())
    return old == new


# Keys that change how a stage runs, never what it computes: checkpoint frequency (a resumed run is bit-identical to
# an uninterrupted one) and the progress bar. Turning checkpoints on for a long run must not redo its finished stages.
HOW_NOT_WHAT = frozenset({"save_steps", "save_epochs", "progress"})


def _content(cfg: Any) -> Any:
    """What a stage config says apart from where it reads and writes: ``*_dir`` keys are the run's layout (a run
    dir reached through another path, or moved, is the same run); a change of its inputs' content is caught through
    the dependencies instead; :data:`HOW_NOT_WHAT` keys are ignored. A local ``model_name_or_path`` is compared
    resolved."""
    if not isinstance(cfg, dict):
        return cfg
    out = {}
    for k, v in cfg.items():
        if k.endswith("_dir") or k in HOW_NOT_WHAT:
            continue
        if k == "model_name_or_path" and isinstance(v, str) and os.path.isdir(v):
            p = Path(v).resolve()
            if p.name == "base" and p.parent.name.startswith("seed_"):
                continue  # the embedded base model: a job of this run, checked through the dependency
            v = str(p)
        out[k] = _content(v)
    return out


def _stage_kind(job: Job) -> str:
    return job.stage.rsplit(".", 1)[-1]


def _diverged_unlearn(ec) -> bool:
    """Whether the model an eval/diagnose job reads is an unlearning run that diverged (and saved no weights)."""
    from .utils import read_json

    src = getattr(ec, "adapter_dir", None) or ec.model_dir
    info = Path(src) / "unlearn_info.json"
    return info.is_file() and read_json(info).get("diverged", False)


_PRIORITY = {"tiny": 0, "poison": 0, "train": 1, "unlearn": 2, "evaluate": 3, "diagnose": 4}


def execute(jobs: list[Job], workers: int) -> None:
    """Run the DAG: every job whose dependencies are done, up to ``workers`` at a time."""
    from tqdm.auto import tqdm

    pending = {j.name: j for j in jobs}
    done: set[str] = set()
    bar = tqdm(total=len(jobs), desc="grid", unit="job")
    stale: set[str] = set()
    for j in jobs:  # resume: complete outputs are skipped up front (jobs come in dependency order)
        if not is_complete(_output_dir(j)):
            continue
        if _config_changed(j) or any(d in stale for d in j.deps):
            # An --overwrite run with a changed config: the old output (and everything built on it) is redone.
            logger.warning("%s: its config or an input changed since it ran; redoing it", j.name)
            shutil.rmtree(_output_dir(j))
            stale.add(j.name)
            continue
        done.add(j.name)
        pending.pop(j.name)
        bar.update()
    if workers == 1:
        while pending:
            job = next(j for j in pending.values() if all(d in done for d in j.deps))
            name, secs, note = run_job(job)
            logger.info("%s done in %.1fs%s", name, secs, f" ({note})" if note else "")
            done.add(name)
            pending.pop(name)
            bar.update()
        bar.close()
        return
    import multiprocessing as mp

    threads = max(1, (os.cpu_count() or 1) // workers)
    running = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        while pending or running:
            # Longest jobs first (trainings), so short unlearn/eval jobs fill the gaps instead of leaving a long tail.
            ready = [j for j in pending.values() if all(d in done for d in j.deps)]
            for job in sorted(ready, key=lambda j: _PRIORITY.get(_stage_kind(j), 5)):
                if len(running) >= workers:
                    break
                running[pool.submit(run_job, job, threads)] = job.name
                pending.pop(job.name)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                name = running.pop(fut)
                try:
                    _, secs, note = fut.result()
                except BaseException:
                    for f in running:
                        f.cancel()
                    raise
                logger.info("%s done in %.1fs%s", name, secs, f" ({note})" if note else "")
                done.add(name)
                bar.update()
    bar.close()
