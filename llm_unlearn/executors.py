"""Where the grid's jobs run: ``executor: local | ray | slurm``.

``local`` is the scheduler's own process pool (:mod:`llm_unlearn.scheduler`). ``ray`` runs each stage job as a Ray
task with the resources of its stage (``resources``), on ``ray_address`` (null: a Ray instance started on this machine,
bound to 127.0.0.1). ``slurm`` submits each job through submitit (``slurm`` section: partition, time, setup commands).
Both are pools with ``submit(fn, job, threads) -> Future`` that the scheduler's DAG loop drives exactly as it drives
the local pool, so ordering, skipping, resuming and stopping on a failure are one code path for every executor.

Both assume a filesystem shared by the driver and every node (the run dir, the working directory, the installed
package). :meth:`RemotePool.open` checks it before any job is submitted: the driver writes a marker with a fresh token
into each run dir and a probe task on the executor (on every Ray node) must read it back; every job checks it again
where it lands. A job's output goes to ``<output_dir>.<executor>.log`` beside its output dir, and a failure names it.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading
import traceback
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .configs import ConfigError
from .harness import StageFault

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "ray", "slurm")
# resources keys: a stage of the planner (``base`` is the tiny base model of the embedded default) or ``default``.
RESOURCE_STAGES = ("default", "base", "poison", "train", "unlearn", "evaluate", "diagnose")
RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory_gb")
DEFAULT_RESOURCES = {"num_cpus": 1, "num_gpus": 0}
MARKER = ".executor-probe"  # written by the driver into each run dir while remote jobs run
PROBE_TIMEOUT_S = 600  # a probe that does not run in this long: no worker can take it (or the queue is long)
EXTRAS = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}  # executor -> (module, pip extra)


@dataclass
class SlurmConfig:
    """``executor: slurm``: how each stage job is submitted (through submitit, one sbatch job per stage job)."""

    partition: str | None = field(default=None, metadata={"help": "SLURM partition (null: the cluster's default)"})
    account: str | None = field(default=None, metadata={"help": "SLURM account to charge (null: your default)"})
    time_min: int = field(default=240, metadata={"help": "time limit of each job, in minutes"})
    setup: list[str] = field(
        default_factory=list,
        metadata={
            "help": "shell commands run in each job before the stage, e.g. ['module load cuda/12.4', "
            "'source ~/venvs/unlearn/bin/activate']"
        },
    )
    additional: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "more sbatch options, passed as they are, e.g. {constraint: a100, qos: high}"},
    )
    folder: str | None = field(
        default=None, metadata={"help": "submitit's job files and logs (null: <output_dir>/submitit)"}
    )
    cluster: Literal["slurm", "local"] = field(
        default="slurm",
        metadata={
            "help": "slurm (sbatch), or local: submitit's own local executor, each job a process on this machine "
            "(a dry run of the slurm path without a cluster)"
        },
    )


def check_executor(cfg) -> None:
    """The executor keys of an experiment config, before any work: resources by stage, the package the executor
    needs, the slurm section."""
    resources = cfg.resources
    if not isinstance(resources, dict):
        raise ConfigError(
            f"resources: expected a mapping of stage -> {{num_cpus, num_gpus, memory_gb}}, got {resources!r}"
        )
    for stage, res in resources.items():
        if stage not in RESOURCE_STAGES:
            raise ConfigError(f"resources.{stage}: unknown stage; choose from {list(RESOURCE_STAGES)}")
        if not isinstance(res, dict):
            raise ConfigError(f"resources.{stage}: expected a mapping of {list(RESOURCE_KEYS)}, got {res!r}")
        for key, value in res.items():
            where = f"resources.{stage}.{key}"
            if key not in RESOURCE_KEYS:
                raise ConfigError(f"{where}: unknown key; choose from {list(RESOURCE_KEYS)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}: expected a number, got {value!r}")
            if value < 0 or (key != "num_gpus" and value == 0):
                raise ConfigError(f"{where}: must be {'>= 0' if key == 'num_gpus' else '> 0'}, got {value}")
            if cfg.executor == "slurm" and key in ("num_cpus", "num_gpus") and value != int(value):
                raise ConfigError(f"{where}: executor slurm allocates whole CPUs and GPUs, got {value}")
    if cfg.slurm.time_min < 1:
        raise ConfigError(f"slurm.time_min must be >= 1 (minutes), got {cfg.slurm.time_min}")
    if cfg.executor == "local":
        unused = [k for k in ("resources", "ray_address") if getattr(cfg, k)]
        if cfg.slurm != SlurmConfig():
            unused.append("slurm")
        if unused:  # a recipe may carry cluster settings while this run stays on the machine
            logger.warning(
                "%s: only read with executor ray or slurm (this run's executor is local)", ", ".join(unused)
            )
        return
    if cfg.executor == "slurm" and cfg.ray_address:
        logger.warning("ray_address is only read with executor ray (this run's executor is slurm)")
    module, extra = EXTRAS[cfg.executor]
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"executor {cfg.executor} needs the {module} package: pip install llm-unlearn[{extra}]")


def job_stage(job) -> str:
    """The ``resources`` key of a job: its stage (the tiny base model's job is ``base``)."""
    kind = job.stage.rsplit(".", 1)[-1]
    return "base" if kind == "tiny" else kind


def job_resources(resources: dict, job) -> dict:
    """The resources one job asks for: its stage's entry over ``default`` over 1 CPU, no GPU."""
    return {**DEFAULT_RESOURCES, **resources.get("default", {}), **resources.get(job_stage(job), {})}


def job_log(job, executor: str) -> Path:
    """Where a job's output goes: ``<output_dir>.<executor>.log`` beside its output dir (outside it, so the stage's
    records and their digests are untouched), on the shared filesystem."""
    out = Path(job.config["output_dir"] if isinstance(job.config, dict) else job.config.output_dir).absolute()
    return out.with_name(f"{out.name}.{executor}.log")


def build_pool(cfg, run_dirs: list[str]):
    """The pool of ``cfg.executor`` (None for ``local``: the scheduler's process pool)."""
    if cfg.executor == "local":
        return None
    if cfg.executor == "ray":
        from .ray_pool import RayPool

        return RayPool(cfg.ray_address, cfg.resources, run_dirs)
    from .slurm_pool import SlurmPool

    return SlurmPool(cfg.slurm, cfg.resources, run_dirs)


class JobFailed(StageFault):
    """A job run by ray or slurm failed (or its worker died): the stage stays incomplete, rerunning the same command
    resumes it, and the message names the job's log."""


class RemotePool:
    """What both remote executors share: the shared-filesystem check, the job wrapper's arguments and turning a
    job's outcome into the Future the scheduler waits on."""

    name = ""

    def __init__(self, resources: dict, run_dirs: list[str]):
        self.resources = resources
        self.run_dirs = [Path(d).absolute() for d in run_dirs]
        self.token = uuid.uuid4().hex
        self.cwd = os.getcwd()
        self.plugins = os.environ.get("LLM_UNLEARN_PLUGINS")

    # -- the shared filesystem --------------------------------------------------------------------------------
    def write_markers(self) -> None:
        from .files import atomic_write_text

        for d in self.run_dirs:
            d.mkdir(parents=True, exist_ok=True)
            atomic_write_text(d / MARKER, self.token)

    def remove_markers(self) -> None:
        for d in self.run_dirs:
            (d / MARKER).unlink(missing_ok=True)

    def probe_args(self) -> tuple:
        return ([str(d / MARKER) for d in self.run_dirs], self.token, self.cwd)

    def refuse(self, where: str, problems: list[str]) -> None:
        raise ConfigError(
            f"executor {self.name}: {where} does not see this run's files ({'; '.join(problems)}); executor "
            f"{self.name} needs a filesystem shared by this machine and every node (put output_dir and the working "
            "directory on it, e.g. NFS or Lustre)"
        )

    # -- jobs ---------------------------------------------------------------------------------------------------
    def threads(self, job) -> int:
        return max(1, int(job_resources(self.resources, job)["num_cpus"]))

    local = False  # whether jobs run on this machine (a Ray instance this run started, submitit's local executor)

    def job_args(self, job) -> tuple:
        driver = os.getpid() if self.local else None
        return (job, self.threads(job), str(job_log(job, self.name)), self.probe_args(), self.plugins, driver)

    def settle(self, future: Future, job, outcome, crash: BaseException | None = None, extra: str = "") -> None:
        """Set ``future`` from what :func:`run_remote` returned (or from the executor's own error, ``crash``)."""
        if future.done():
            return
        log = job_log(job, self.name)
        if crash is not None:
            future.set_exception(
                JobFailed(
                    f"{job.name}: its {self.name} job ended without finishing ({type(crash).__name__}: "
                    f"{_first_line(crash)}); the stage stays incomplete and rerunning the same command resumes it; "
                    f"its log: {log}{extra}"
                )
            )
            return
        status, value = outcome
        if status == "ok":
            future.set_result(value)
            return
        future.set_exception(_located(value, job.name, log))


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[-1] if lines else ""


def _located(exc: BaseException, name: str, log: Path) -> BaseException:
    """The job's own error, of its own type where that keeps the CLI's exit code (a ConfigError is 2, a StageFault
    1), with the job's log named."""
    if isinstance(exc, KeyboardInterrupt):
        return JobFailed(f"{name}: interrupted on its node; rerunning the same command resumes it; its log: {log}")
    msg = f"{exc} (job {name}; its log: {log})"
    if isinstance(exc, (ConfigError, StageFault)):
        try:
            new = type(exc)(msg)
        except Exception:
            new = (ConfigError if isinstance(exc, ConfigError) else StageFault)(msg)
        new.__cause__ = exc
        return new
    failed = JobFailed(
        f"{name} failed with {type(exc).__name__}: {_first_line(exc)}; the stage stays incomplete and rerunning "
        f"the same command resumes it; the traceback is in its log: {log}"
    )
    failed.__cause__ = exc
    return failed


# -- what runs on a node ------------------------------------------------------------------------------------------


def probe(markers: list[str], token: str, cwd: str) -> list[str]:
    """On a node: what of the run it cannot see (empty: all of it)."""
    problems = []
    if not Path(cwd).is_dir():
        problems.append(f"the working directory {cwd} does not exist there")
    for m in markers:
        try:
            seen = Path(m).read_text()
        except OSError as e:
            problems.append(f"{m}: {e.strerror or e}")
            continue
        if seen != token:  # another run dir of the same name, not this one
            problems.append(f"{m} holds another run's token (a different filesystem at the same path)")
    return problems


def node_name() -> str:
    import socket

    return socket.gethostname()


def run_remote(job, threads: int, log: str, probe_args: tuple, plugins: str | None, driver: int | None = None):
    """Run one stage job on a node (a Ray worker or a SLURM job): check the shared filesystem, load the run's
    plugins, send the job's output to its log, and return ``("ok", run_job's result)`` or ``("error", exception)``
    (the exception itself, so the driver raises what ``local`` raises; its traceback goes to the log). ``driver``:
    the pid of the run on this machine, whose death ends the job (see :func:`_die_with_driver`)."""
    if driver is not None:
        _die_with_driver(driver)
    problems = probe(*probe_args)
    if problems:
        return "error", ConfigError(
            f"node {node_name()} does not see this run's files ({'; '.join(problems)}); ray and slurm executors "
            "need a filesystem shared by every node"
        )
    os.chdir(probe_args[2])  # relative paths of the configs mean what they mean on the driver
    if plugins:
        os.environ["LLM_UNLEARN_PLUGINS"] = plugins
    with _output_to(log):
        try:
            from .registry import load_plugins
            from .scheduler import run_job

            load_plugins()
            return "ok", run_job(job, threads)
        except BaseException as e:  # (SystemExit, KeyboardInterrupt too: the driver decides)
            traceback.print_exc()
            try:
                pickle.dumps(e)
            except Exception:
                e = RuntimeError(f"{type(e).__name__}: {e}")
            return "error", e


_WATCHED: set[int] = set()


def _die_with_driver(pid: int) -> None:
    """Kill this process (and its children: an ``accelerate launch``, whose ranks die with it) as soon as the run
    ``pid`` on this machine is gone, however it died. A local Ray instance's workers otherwise outlive a killed run
    by seconds, long enough to finish a stage the rerun is already redoing; the local pool's workers get the same
    from ``PR_SET_PDEATHSIG``, which cannot name a process other than the parent."""
    if pid in _WATCHED:
        return
    _WATCHED.add(pid)

    def watch():
        import signal
        import time

        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:  # alive, another user's (a reused pid would be): keep watching
                pass
            time.sleep(0.1)
        for child in _children():
            try:
                os.kill(child, signal.SIGKILL)
            except OSError:
                pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="die-with-driver").start()


def _children() -> list[int]:
    """This process's children (Linux /proc; none elsewhere)."""
    out = []
    for task in Path("/proc/self/task").glob("*/children"):
        try:
            out += [int(p) for p in task.read_text().split()]
        except (OSError, ValueError):
            continue
    return out


class _output_to:
    """Send this process's stdout and stderr (file descriptors 1 and 2: logging, tqdm, child processes) to ``log``
    while a job runs, and restore them after (a Ray worker runs many jobs)."""

    def __init__(self, log: str):
        self.log = log

    def __enter__(self):
        Path(self.log).parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = [os.dup(1), os.dup(2)]
        self.file = open(self.log, "ab", buffering=0)
        header = f"=== {node_name()} pid {os.getpid()}: job output ===\n"
        self.file.write(header.encode())
        for fd in (1, 2):
            os.dup2(self.file.fileno(), fd)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)
        self.file.close()
        return False


def threaded_future(wait_fn, on_done) -> Future:
    """A Future settled by ``on_done(future, wait_fn())`` in a daemon thread (a thread that would keep the
    interpreter alive at exit while a cancelled cluster job is being reaped is not one we want)."""
    future: Future = Future()
    future.set_running_or_notify_cancel()

    def body():
        try:
            outcome = wait_fn()
        except BaseException as e:
            on_done(future, None, e)
            return
        on_done(future, outcome, None)

    threading.Thread(target=body, daemon=True).start()
    return future
