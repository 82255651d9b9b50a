"""``launcher: accelerate``: a train/unlearn job of the grid run as its own ``accelerate launch``.

The worker that picks the job writes its resolved config beside its output dir (``<output_dir>.launch.yaml``) and runs
``accelerate launch ... -m llm_unlearn train|unlearn --config`` on it; the launched stage goes through the same stage
harness as an in-process job, so skipping, resuming and redoing are the same. Kept apart from the scheduler
(:mod:`llm_unlearn.scheduler`), which only asks :class:`Launcher` whether it launches a job and then calls
:func:`launch_job`: what a launch needs (rendezvous ports, stderr capture, ranks that die with the run) is an idea
of its own.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .configs import ConfigError
from .files import atomic_write_text
from .harness import StageFault
from .outputs import normalized

# A launched job is a :class:`llm_unlearn.scheduler.Job` (name, stage module, config, launcher); not imported here,
# since the scheduler imports this module.
Job = Any

logger = logging.getLogger(__name__)

__all__ = ["LAUNCHED_ENV", "LaunchFailed", "Launcher", "die_with_parent", "launch_job", "launch_paths"]


def output_dir(job: Job) -> str:
    return job.config["output_dir"] if isinstance(job.config, dict) else job.config.output_dir


def stage_kind(job: Job) -> str:
    return job.stage.rsplit(".", 1)[-1]


# The stages an accelerate launcher starts as `accelerate launch -m llm_unlearn <command>`: module -> (command, the
# config class that command parses). Everything else (poison, evaluate, diagnose) is cheap or starts its own workers
# (vLLM), so it stays in the pool.
LAUNCHED_STAGES = {
    "llm_unlearn.stages.train": ("train", "TrainConfig"),
    "llm_unlearn.stages.unlearn": ("unlearn", "UnlearnConfig"),
}
# Set in the environment of a launched job: its ranks die with the launcher (see :func:`die_with_parent`).
LAUNCHED_ENV = "LLM_UNLEARN_LAUNCHED"
STDERR_TAIL_LINES = 20


@dataclass(frozen=True)
class Launcher:
    """``launcher: accelerate``: run a train/unlearn job as its own ``accelerate launch`` (see :func:`launch_job`).

    The job's resolved config is written beside its output dir as ``<output_dir>.launch.yaml`` (and everything the
    launch prints to stderr as ``<output_dir>.launch.log``): the same file `llm-unlearn train|unlearn --config` reads
    by hand, so a failed job can be rerun alone. The launched stage goes through the same harness as in-process jobs
    (skip a finished output of the same config, resume its checkpoints), so resume is the same as with ``local``."""

    accelerate_config: str
    num_processes: int | None = None  # None: the accelerate config's

    @classmethod
    def from_experiment(cls, cfg) -> Launcher | None:
        if cfg.launcher == "local":
            return None
        return cls(str(cfg.accelerate_config), cfg.num_processes)

    def launches(self, job: Job) -> bool:
        return job.stage in LAUNCHED_STAGES

    def check(self, job: Job) -> None:
        """A launched job's config must be what its command parses (the llm track's stage configs), before work."""
        if not self.launches(job):
            return
        command, cls_name = LAUNCHED_STAGES[job.stage]
        cls = type(job.config)
        if (cls.__module__, cls.__name__) != (job.stage, cls_name):
            raise ConfigError(
                f"launcher: accelerate launches `llm-unlearn {command}` with a {cls_name}, but job {job.name} has a "
                f"{cls.__name__} (another track's stage config); use launcher: local"
            )

    def settings(self) -> dict:
        """The accelerate config file as a mapping (empty if it is not one: accelerate itself then says why)."""
        import yaml

        try:
            data = yaml.safe_load(Path(self.accelerate_config).read_text())
        except (OSError, yaml.YAMLError):
            return {}
        return data if isinstance(data, dict) else {}

    def processes(self) -> int:
        n = self.num_processes or self.settings().get("num_processes") or 1
        return n if isinstance(n, int) and n > 0 else 1

    def command(self, job: Job, spec: Path) -> list[str]:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", self.accelerate_config]
        if self.num_processes:
            cmd += ["--num_processes", str(self.num_processes)]
        settings = self.settings()
        if (settings.get("num_machines") or 1) == 1 and not settings.get("main_process_port"):
            # Two launches at once (workers > 1) would both take the default rendezvous port 29500.
            cmd += ["--main_process_port", str(_free_port())]
        return [*cmd, "-m", "llm_unlearn", LAUNCHED_STAGES[job.stage][0], "--config", str(spec)]


class LaunchFailed(StageFault):
    """A launched train/unlearn job exited with an error after its work started: its stage stays incomplete (no
    ``.complete``), and rerunning the same command resumes it."""


def launch_paths(job: Job) -> tuple[Path, Path]:
    """Where a launched job's config and its stderr log go: beside its output dir (``<output_dir>.launch.yaml``,
    ``<output_dir>.launch.log``), outside it, so the stage's own records and their digests are untouched."""
    out = Path(output_dir(job))
    return out.with_name(out.name + ".launch.yaml"), out.with_name(out.name + ".launch.log")


def launch_job(job: Job, threads: int | None = None) -> None:
    """Run one train/unlearn job as ``accelerate launch ... -m llm_unlearn <stage> --config <output_dir>.launch.yaml``
    and wait for it. Its stderr is passed through (progress, logs) and kept in ``<output_dir>.launch.log``; a non-zero
    exit raises :class:`LaunchFailed` with the last lines, or the launched stage's own ConfigError (a problem it found
    before work, e.g. a budget that buys no step), as ``local`` would raise it."""
    import yaml

    launcher = job.launcher
    spec, log = launch_paths(job)
    spec.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec, yaml.safe_dump(normalized(job.config), sort_keys=False))
    env = {**os.environ, LAUNCHED_ENV: "1"}  # (LLM_UNLEARN_PLUGINS is in os.environ: the ranks load the plugins too)
    if "OMP_NUM_THREADS" not in os.environ:  # the worker's share of the cores, split between its ranks
        env["OMP_NUM_THREADS"] = str(max(1, (threads or os.cpu_count() or 1) // launcher.processes()))
    for attempt in range(PORT_ATTEMPTS):
        rc, tail = _launch_once(job, launcher.command(job, spec), env, log)
        # The rendezvous port was taken between our pick and the launcher's bind (another launch, another program):
        # nothing of the stage ran yet, so a fresh port is safe to try.
        if rc == 0 or not any("address already in use" in line.lower() for line in tail):
            break
        logger.warning("%s: rendezvous port taken, relaunching on another (attempt %d)", job.name, attempt + 2)
    if rc == 0:
        return
    refusal = f"llm-unlearn {stage_kind(job)}: error: "
    error = next((line for line in reversed(tail) if line.startswith(refusal)), None)
    if error is not None:  # the stage refused its inputs before any work, as it would in process
        raise ConfigError(f"{job.name}: {error.split(': error: ', 1)[1]}")
    logger.error("%s: the launched job exited with %d; its stderr ends with:\n%s", job.name, rc, "\n".join(tail))
    last = tail[-1] if tail else "(no output)"
    raise LaunchFailed(
        f"{job.name}: `accelerate launch ... llm_unlearn {stage_kind(job)}` exited with {rc}; the stage stays "
        f"incomplete and rerunning the same command resumes it; its stderr ends with: {last} (all of it: {log})"
    )


PORT_ATTEMPTS = 3


def _launch_once(job: Job, cmd: list[str], env: dict, log: Path) -> tuple[int, deque]:
    """One ``accelerate launch``; its stderr passes through and goes to ``log``; returns (exit code, last lines)."""
    import subprocess

    logger.info("%s: %s", job.name, " ".join(cmd))
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    partial = b""
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
        try:
            while chunk := os.read(proc.stderr.fileno(), 65536):
                log_file.write(chunk)
                _echo(chunk)
                lines = (partial + chunk).replace(b"\r", b"\n").split(b"\n")
                partial = lines.pop()
                tail.extend(line.decode(errors="replace") for line in lines if line.strip())
            rc = proc.wait()
        except BaseException:  # a signal stopping the run: the launcher goes too (its ranks die with it)
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stderr.close()
    if partial.strip():
        tail.append(partial.decode(errors="replace"))
    return rc, tail


def _echo(chunk: bytes) -> None:
    """Pass a launched job's stderr through to ours (a notebook's stderr may take only text)."""
    buffer = getattr(sys.stderr, "buffer", None)
    if buffer is not None:
        buffer.write(chunk)
    else:
        sys.stderr.write(chunk.decode(errors="replace"))
    sys.stderr.flush()


def _free_port() -> int:
    """A port for a launch's rendezvous, drawn below Linux's ephemeral range (32768+): a port the kernel hands out
    for ``bind(0)`` is also where gloo's and the TCP store's own connections land, so two launches starting at once
    could collide there; a launch that still loses the race is retried (see :func:`launch_job`)."""
    import random
    import socket

    for _ in range(100):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """Make this process die (SIGKILL) when its parent dies, however it dies (``PR_SET_PDEATHSIG``, Linux).

    ``accelerate launch`` runs each rank in a session of its own (torch elastic's ``start_new_session``), so a run
    killed as a process group would leave the ranks of a launched job running, and writing into a stage dir the
    rerun is about to resume. Called in a rank when :data:`LAUNCHED_ENV` says ``run`` launched it, and in every worker.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the line above ran
        os._exit(1)
