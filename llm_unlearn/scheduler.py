"""The job scheduler behind ``run``: a DAG of stage jobs run by ``workers`` processes, longest jobs first.

A job is a stage module path plus its config; it writes one output dir through the stage harness
(:mod:`llm_unlearn.harness`), which marks it complete last. Before anything runs, every output is classified
(:func:`llm_unlearn.outputs.output_state`): a finished output of the same config, made from the inputs it was made
from, is skipped (that is how a killed run resumes); one whose config changed (an ``--overwrite`` run with other
settings), whose input was redone or is unfinished, or whose records are damaged (a JSON file that no longer parses
or was edited) is redone, with a warning naming why, and so is every job built on it.

Launchers: with ``launcher: accelerate`` a train/unlearn job is run by its worker as its own ``accelerate launch``
(:mod:`llm_unlearn.launcher`); the launched stage goes through the same harness, so skipping, resuming and redoing are
the same as in process.

Console and logs (:mod:`llm_unlearn.console`): each job runs inside :func:`~llm_unlearn.console.job_output`, which
sends everything it prints to ``<output_dir>/log.txt`` (appended by a resumed or redone job), wherever the job runs;
the loop reports to a :class:`~llm_unlearn.console.Console` (the grid's progress bar, a line per finished job, and for
a failed job its name, the last lines of its log and the log's path). ``verbose`` leaves job output on the terminal.

Signals: SIGTERM and SIGINT stop the run. Each worker process leads its own process group (so its children go with
it) and is killed by the kernel if the parent dies (``PR_SET_PDEATHSIG``, Linux): no process of the run outlives it.
A stopped job leaves no ``.complete`` (the marker is written last), and :class:`Interrupted` carries the one line
saying how to resume; a second Ctrl-C kills the workers at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .configs import ConfigError
from .console import Console, job_output
from .files import LOG_NAME, is_complete
from .harness import StageFault
from .launcher import LaunchFailed, Launcher, die_with_parent, launch_job, output_dir, stage_kind
from .outputs import HOW_NOT_WHAT, clear_output, config_changed, content, normalized, output_state, same

logger = logging.getLogger(__name__)

__all__ = [
    "HOW_NOT_WHAT",
    "Interrupted",
    "Job",
    "JobFailed",
    "LaunchFailed",
    "Launcher",
    "execute",
    "launch_job",
    "run_job",
]


@dataclass
class Job:
    name: str
    stage: str  # dotted module path whose ``main(config)`` runs the job
    config: Any
    deps: list[str]
    launcher: Launcher | None = None  # how a train/unlearn job runs (None: in the worker, like every job)
    # Send what the job prints to <output_dir>/log.txt (set by execute unless verbose; it travels with the job to
    # whatever process runs it).
    capture: bool = False


class Interrupted(KeyboardInterrupt):
    """``run`` stopped by SIGINT or SIGTERM; its message is the one line telling how to resume."""

    def __init__(self, signum: int):
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name}: every finished stage is kept and nothing unfinished is marked complete; rerun the "
            "same command to resume"
        )
        self.signum = signum


def run_job(job: Job, threads: int | None = None) -> tuple[str, float, str | None]:
    """Run one stage job (in this process or a worker); returns (name, seconds, diverged-or-skipped note). With
    ``job.capture`` everything it prints, and the traceback of an error it raises, goes to its :func:`job_log`."""
    import importlib

    if stage_kind(job) in ("evaluate", "diagnose") and _diverged_unlearn(job.config):
        return job.name, 0.0, "diverged"
    start = time.perf_counter()
    with job_output(job_log(job), job.name) if job.capture else contextlib.nullcontext():
        try:
            if threads:
                import torch

                torch.set_num_threads(threads)
            if job.launcher is not None and job.launcher.launches(job):
                launch_job(job, threads)
            else:
                importlib.import_module(job.stage).main(job.config)
        except Exception:
            if job.capture:  # the log tells the whole story; the console shows its end and where it is
                traceback.print_exc()
            raise
    return job.name, time.perf_counter() - start, None


def job_log(job: Job) -> Path:
    """Where a job's output goes: ``log.txt`` in its output dir (not a record: no digest in the stage's marker, kept
    when the stage is redone)."""
    return Path(output_dir(job)) / LOG_NAME


class JobFailed(StageFault):
    """A job of the grid raised something other than a config problem or a stage fault (a bug, a library error): the
    one line names the job, the error and its log, where the traceback is; the original is its ``__cause__``."""


def _failure(console: Console, job: Job, error: BaseException) -> BaseException:
    """Show a failed job on the console and return what the run raises: the job's own ConfigError or StageFault
    (one line at the CLI) naming the job and its log, :class:`JobFailed` for anything else, a KeyboardInterrupt
    unchanged."""
    if not isinstance(error, Exception):
        return error
    log = job_log(job) if job.capture else None
    console.failed(job.name, error, log)
    if isinstance(error, (ConfigError, StageFault)):
        if log is None or "; its log: " in str(error):  # (a remote pool's error names its own log already)
            return error
        try:  # the same type, so callers (and the CLI's exit code) see what the stage raised
            return type(error)(f"{error} (job {console.label(job.name)}; its output: {log})")
        except TypeError:  # a subclass taking other arguments: as it is
            return error
    first = (str(error).strip().splitlines() or ["(no message)"])[0]
    where = f"its traceback is in {log}" if log is not None else "its traceback is above"
    return JobFailed(f"job {console.label(job.name)} failed ({type(error).__name__}: {first}); {where}")


# The resume rules live in llm_unlearn.outputs (shared with the single-stage commands); names kept for callers.
_normalized, _content, _same, _config_changed = normalized, content, same, lambda job: config_changed(job.config)


def _diverged_unlearn(ec) -> bool:
    """Whether the model an eval/diagnose job reads is an unlearning run that diverged (and saved no weights)."""
    from .files import read_json

    src = getattr(ec, "adapter_dir", None) or ec.model_dir
    info = Path(src) / "unlearn_info.json"
    return info.is_file() and read_json(info).get("diverged", False)


_PRIORITY = {"tiny": 0, "poison": 0, "train": 1, "unlearn": 2, "evaluate": 3, "diagnose": 4}


def plan_resume(jobs: list[Job]) -> set[str]:
    """The jobs whose outputs are kept (in dependency order): finished, from the same config and inputs, records
    intact, and every dependency kept too. Any other finished output is removed, with a warning saying why."""
    done: set[str] = set()
    for j in jobs:
        out = Path(output_dir(j))
        if not is_complete(out):
            continue
        state, why = output_state(j.config)
        if state == "current" and all(d in done for d in j.deps):
            done.add(j.name)
            continue
        if state == "current":
            why = "an input it was made from is being redone"
        logger.warning("%s: %s; redoing it", j.name, why)
        clear_output(out)
        if not any(out.iterdir()):
            shutil.rmtree(out)
    return done


# A finished job as a log record (DEBUG: the console shows it already), for tools timing the jobs (bench/main_job.py).
DONE = "%s done in %.1fs%s"


def execute(jobs: list[Job], workers: int, pool=None, verbose: bool = False) -> None:
    """Run the DAG: every job whose dependencies are done, up to ``workers`` at a time, each job's output in its
    ``log.txt`` (on the terminal instead with ``verbose``). Raises :class:`Interrupted` on SIGINT/SIGTERM after
    stopping every worker, and a failed job's error (see :func:`_failure`) after showing it on the console.

    ``pool``: where jobs run, for ``executor: ray | slurm`` (:mod:`llm_unlearn.executors`: ``open()``, then
    ``submit(run_job, job, threads) -> Future``, ``stop()``, ``shutdown()``); None: this machine's processes. The DAG
    loop, the resume plan and a failure's handling are the same for every pool."""
    pending = {j.name: j for j in jobs}
    done = plan_resume(jobs)
    for j in jobs:
        j.capture = not verbose
    console = Console(len(jobs), kept=len(done))
    console.name_jobs(
        [j.name for j in jobs], minor={j.name for j in jobs if stage_kind(j) not in ("train", "unlearn", "relearn")}
    )
    for name in done:
        pending.pop(name)
    with _signals_raise_interrupted():
        try:
            if pool is not None:
                try:
                    if pending:  # start or join the cluster and check it sees the run dir, before any job
                        pool.open()
                except BaseException:
                    pool.shutdown(wait=False)
                    raise
                _execute_pool(pending, done, workers, console, pool)
            elif workers == 1:
                failures = Failures(console, pending)
                while pending:
                    job = next(j for j in pending.values() if all(d in done for d in j.deps))
                    console.started(job.name)
                    pending.pop(job.name)
                    try:
                        name, secs, note = run_job(job)
                    except Exception as e:
                        failures.add(job, e)
                        continue
                    except BaseException as e:  # a signal, a second Ctrl-C: the run stops
                        error = _failure(console, job, e)
                        if error is e:
                            raise
                        raise error from e
                    console.finished(name, secs, note)
                    logger.debug(DONE, name, secs, f" ({note})" if note else "")
                    done.add(name)
                failures.raise_first()
            else:
                _execute_pool(pending, done, workers, console)
        finally:
            console.close()


class Failures:
    """Failed jobs of a run: each is shown when it fails (its error, its log's end and path), the jobs that need it
    (directly or not) are skipped, and every job that does not need it still runs; once nothing is left to run, the
    first failure is raised (a stage's refusal as its ConfigError, exit 2; anything else exit 1), naming how many
    jobs failed and were skipped. Rerunning the same command then resumes: the finished jobs are kept."""

    def __init__(self, console: Console, pending: dict):
        self.console, self.pending = console, pending
        self.errors: list[tuple[BaseException, BaseException]] = []
        self.skipped: list[str] = []

    def add(self, job: Job, error: BaseException) -> None:
        self.errors.append((_failure(self.console, job, error), error))
        blocked, grew = {job.name}, True
        while grew:
            grew = False
            for name, j in list(self.pending.items()):
                if any(d in blocked for d in j.deps):
                    blocked.add(name)
                    self.pending.pop(name)
                    grew = True
        skipped = sorted(blocked - {job.name})
        self.skipped += skipped
        self.console.skipped(skipped, job.name)

    def raise_first(self) -> None:
        if not self.errors:
            return
        error, cause = self.errors[0]
        if len(self.errors) > 1 or self.skipped:
            logger.error(
                "%d job(s) failed and %d were skipped because they need one; every other job finished. Fix the first "
                "failure (below) and rerun the same command: finished jobs are kept",
                len(self.errors),
                len(self.skipped),
            )
        if error is cause:
            raise error
        raise error from cause


def _execute_pool(pending: dict, done: set, workers: int, console: Console, pool=None) -> None:
    threads = None if pool is not None else max(1, (os.cpu_count() or 1) // workers)  # (a remote job's: its CPUs)
    running = {}
    pool = pool if pool is not None else _local_pool(workers)
    failures = Failures(console, pending)
    try:
        while pending or running:
            # Longest jobs first (trainings), so short unlearn/eval jobs fill the gaps instead of leaving a long tail.
            ready = [j for j in pending.values() if all(d in done for d in j.deps)]
            for job in sorted(ready, key=lambda j: _PRIORITY.get(stage_kind(j), 5)):
                if len(running) >= workers:
                    break
                running[pool.submit(run_job, job, threads)] = job
                pending.pop(job.name)
                console.started(job.name)
            finished, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
            for fut in finished:
                job = running.pop(fut)
                try:
                    _, secs, note = fut.result()
                except Exception as e:
                    if not isinstance(e, BrokenExecutor):  # the job failed: its dependents are skipped, others go on
                        failures.add(job, e)
                        continue
                    # a worker process died (killed, out of memory): the pool is gone, so the run stops
                    for f in running:
                        f.cancel()
                    error = _failure(console, job, e)
                    raise error from e
                console.finished(job.name, secs, note)
                logger.debug(DONE, job.name, secs, f" ({note})" if note else "")
                done.add(job.name)
    except BaseException:
        _stop_workers(pool)
        raise
    pool.shutdown(wait=True)
    failures.raise_first()


def _local_pool(workers: int) -> ProcessPoolExecutor:
    import multiprocessing as mp

    # Workers stopped by a signal may leave a queue's semaphore to multiprocessing's resource tracker, which removes
    # it and warns at exit: expected then, and it would follow the one line that says how to resume.
    if "ignore:resource_tracker:UserWarning" not in sys.warnoptions:
        sys.warnoptions.append("ignore:resource_tracker:UserWarning")
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init)


def _worker_init() -> None:
    """In each worker: lead its own process group (the run stops it and its children together; a Ctrl-C on the
    terminal reaches only the run, which stops the workers), and die with the parent, however the parent dies."""
    os.setpgrp()
    die_with_parent()
    from .registry import load_plugins

    load_plugins()  # the run's plugins (LLM_UNLEARN_PLUGINS, set by the parent): their methods/attacks run here too


def _workers(pool) -> list:
    return [p for p in (getattr(pool, "_processes", None) or {}).values() if p.pid]


def _kill_groups(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.killpg(pid, sig)  # the worker and every process it started
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _stop_workers(pool, grace: float = 5.0) -> None:
    """SIGTERM every worker's process group, SIGKILL what is left after ``grace`` seconds, and drop the pool."""
    if not isinstance(pool, ProcessPoolExecutor):  # ray or slurm: the executor cancels its own jobs
        pool.stop()
        pool.shutdown(wait=False, cancel_futures=True)
        return
    procs = _workers(pool)
    _kill_groups([p.pid for p in procs], signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    _kill_groups([p.pid for p in procs], signal.SIGKILL)  # the stragglers, and children left in their groups
    for p in procs:
        p.join(1.0)
    pool.shutdown(wait=True, cancel_futures=True)  # the workers are gone: the pool notices and winds down


class _signals_raise_interrupted:
    """While active (main thread only): the first SIGINT/SIGTERM raises :class:`Interrupted`; a second one kills
    every process of the run at once and exits."""

    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._first)
        return self

    def _first(self, signum, frame):
        for sig in self.previous:
            signal.signal(sig, self._second)
        raise Interrupted(signum)

    def _second(self, signum, frame):
        import multiprocessing as mp

        for child in mp.active_children():
            _kill_groups([child.pid], signal.SIGKILL)
        os.write(2, b"killed at once (second signal); rerun the same command to resume\n")
        os._exit(128 + signum)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False
