"""What both remote executors share: the job wrapper that runs on a node (:func:`run_remote`), the
shared-filesystem probe, and :class:`RemotePool`, which turns a job's outcome into the Future the scheduler waits on.
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
from pathlib import Path

from ..configs import ConfigError
from ..harness import StageFault
from .config import job_resources

logger = logging.getLogger(__name__)

MARKER = ".executor-probe"  # written by the driver into each run dir while remote jobs run
PROBE_TIMEOUT_S = 600  # a probe that does not run in this long: no worker can take it (or the queue is long)


def job_log(job, executor: str) -> Path:
    """Where a job's output goes: ``<output_dir>.<executor>.log`` beside its output dir (outside it, so the stage's
    records and their digests are untouched), on the shared filesystem."""
    out = Path(job.config["output_dir"] if isinstance(job.config, dict) else job.config.output_dir).absolute()
    return out.with_name(f"{out.name}.{executor}.log")


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
        from ..files import atomic_write_text

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
    # (a job that found the run dir missing on its node wrote no log: its message says why)
    msg = f"{exc} (job {name}; its log: {log})" if log.exists() else f"{exc} (job {name})"
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
            from ..registry import load_plugins
            from ..scheduler import run_job

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
