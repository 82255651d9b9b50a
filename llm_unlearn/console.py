"""What a person sees while ``run`` works, and where everything else goes.

Two halves, one per side of a job:

- :func:`job_output`, around one job wherever it runs (the run's own process, a pool worker, later a Ray task or a
  SLURM job): everything the job prints (HF's per-step loss dicts, ``Map`` and ``Loading weights`` bars, warnings,
  log records, the output of processes it starts) goes to ``<output_dir>/log.txt``, at the file-descriptor level so
  that C extensions and child processes are caught too. A resumed or redone job **appends** to the same log under a
  new header line, so the log keeps the failure that made it resume.
- :class:`Console`, in the process that runs the grid: one progress bar (jobs done / total, elapsed, ETA) on a
  terminal, one line per finished job (name, seconds, a note such as ``diverged``), and for a failure the job's name,
  the last lines of its log and the log's path. It writes to a copy of the terminal's stderr taken before any job
  starts, so a job running in this same process (``workers: 1``) cannot capture it.

``run --verbose`` turns the capture off: jobs print to the terminal as they do outside ``run``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections import deque
from pathlib import Path

from .files import LOG_NAME

__all__ = ["LOG_NAME", "Console", "job_output", "log_tail"]

TAIL_LINES = 15  # lines of a failed job's log shown on the console
# A grid of more jobs than this lists only its long jobs (trainings, unlearning runs) and those with a note: the main
# job's 300 jobs would otherwise be pages of evaluation lines. Failures are always shown.
EVERY_JOB_UP_TO = 40
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def job_output(path: str | os.PathLike, header: str):
    """While inside, this process's stdout and stderr (file descriptors 1 and 2, ``sys.stdout``/``sys.stderr``) and
    its log records of level INFO and above go to ``path``, appended after a line ``=== header ... ===``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    os.write(fd, f"=== {header}: started {stamp} (pid {os.getpid()}) ===\n".encode())
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    saved = {n: os.dup(n) for n in (1, 2)}
    stream = open(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 (closed below)
    old_streams = sys.stdout, sys.stderr
    root = logging.getLogger()
    old_level = root.level
    # Handlers printing to the terminal (the CLI's basicConfig) give way to one writing to the log: the records reach
    # the log once, formatted the same, whether the job runs here or in a worker where nothing configured logging.
    terminal = [h for h in root.handlers if type(h) is logging.StreamHandler and h.stream in old_streams]
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    try:
        for n in (1, 2):
            os.dup2(fd, n)  # C code, warnings printed by libraries at the fd level, and child processes
        sys.stdout = sys.stderr = stream  # Python code, even where sys.stderr was not fd 2 (pytest, notebooks)
        for h in terminal:
            root.removeHandler(h)
        root.addHandler(handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        yield path
    finally:
        with contextlib.suppress(Exception):
            stream.flush()
        root.removeHandler(handler)
        for h in terminal:
            root.addHandler(h)
        root.setLevel(old_level)
        sys.stdout, sys.stderr = old_streams
        for n in (1, 2):
            os.dup2(saved[n], n)
            os.close(saved[n])
        stream.close()
        os.close(fd)


def log_tail(path: str | os.PathLike, n: int = TAIL_LINES) -> list[str]:
    """The last ``n`` non-empty lines of a log (a progress bar's ``\\r`` updates count as lines; its last one kept)."""
    tail: deque[str] = deque(maxlen=n)
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))  # enough for the last lines, whatever the log's size
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    for line in text.split("\n"):
        line = line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
        if line.strip():
            tail.append(line)
    return list(tail)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Console:
    """The grid's progress bar, a line per finished job and failure summaries, on the terminal's stderr.

    ``total`` counts every job of the grid, ``kept`` those a previous run finished (they are not run again). On a
    terminal the bar shows jobs done / total, elapsed and ETA and the lines scroll above it; elsewhere (a file, CI)
    there is no bar and each job's line carries the same figures. In a grid of more than :data:`EVERY_JOB_UP_TO`
    jobs the ``minor`` ones (see :meth:`name_jobs`) get no line unless they carry a note."""

    def __init__(self, total: int, kept: int = 0, stream=None):
        if stream is None:
            # A copy of fd 2 taken now: a job run in this process later points fd 2 at its log, not this stream.
            stream = open(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
            self._owned = True
        else:
            self._owned = False
        self.stream = stream
        self.total, self.kept, self.done = total, kept, kept
        self.start = time.monotonic()
        self.running: dict[str, float] = {}
        self.labels: dict[str, str] = {}
        self.minor: set[str] = set()
        self.unlisted = 0
        self.bar = None
        if _isatty(stream) and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=kept,
                desc="grid",
                unit="job",
                file=stream,
                dynamic_ncols=True,
                bar_format="{desc} {bar} {n_fmt}/{total_fmt} jobs [{elapsed}<{remaining}] {postfix}",
            )
        if kept:
            self._line(f"{kept} of {total} jobs already finished (kept from an earlier run)")

    def label(self, name: str) -> str:
        return self.labels.get(name, name)

    def name_jobs(self, names: list[str], minor: set[str] | frozenset[str] = frozenset()) -> None:
        """Shorter names on the lines (the ``e0/`` prefix ``run`` gives every job is dropped for one experiment), and
        which jobs are short and many (evaluations, diagnostics: no line of their own in a big grid)."""
        prefixed = [n for n in names if re.fullmatch(r"e\d+/.+", n)]
        single = {n.split("/", 1)[0] for n in prefixed} == {"e0"}
        self.labels = {n: n.split("/", 1)[1] for n in prefixed} if single else {}
        self.minor = set(minor) if self.total > EVERY_JOB_UP_TO else set()

    def started(self, name: str) -> None:
        self.running[name] = time.monotonic()
        self._postfix()

    def finished(self, name: str, seconds: float, note: str | None = None) -> None:
        self.running.pop(name, None)
        self.done += 1
        text = f"{self.label(name)}  {seconds:.1f}s" + (f"  ({note})" if note else "")
        if name in self.minor and not note:
            self.unlisted += 1
        else:
            self._line(text if self.bar is not None else f"{self._progress()} {text}")
        if self.bar is not None:
            self.bar.update()
            self._postfix()

    def failed(self, name: str, error: BaseException, log: str | os.PathLike | None) -> None:
        """A failed job: its name, the error, the last lines of its log (where the traceback is) and the log's path."""
        self.running.pop(name, None)
        lines = [f"FAILED {self.label(name)}: {type(error).__name__}: {_first_line(error)}"]
        if log is not None and Path(log).is_file():
            lines += [f"  | {line}" for line in log_tail(log)]
            lines.append(f"  the job's whole output: {log}")
        self._line("\n".join(lines))

    def skipped(self, names: list[str], because: str) -> None:
        """Jobs that will not run because a job they need failed (one line for all of them)."""
        if not names:
            return
        self.total -= len(names)
        if self.bar is not None:
            self.bar.total = self.total
        shown = ", ".join(self.label(n) for n in names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        self._line(f"skipped (they need {self.label(because)}): {shown}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        ran = self.done - self.kept
        if ran or not self.kept:
            unlisted = f", {self.unlisted} short ones not listed" if self.unlisted else ""
            self._line(f"{ran} jobs in {_clock(time.monotonic() - self.start)}{unlisted}" + _kept_note(self.kept))
        if self._owned:
            with contextlib.suppress(OSError):
                self.stream.close()

    def _progress(self) -> str:
        elapsed = time.monotonic() - self.start
        ran = self.done - self.kept
        left = self.total - self.done
        eta = f" eta {_clock(elapsed / ran * left)}" if ran and left else ""
        width = len(str(self.total))
        return f"[{self.done:>{width}}/{self.total} {_clock(elapsed)}{eta}]"

    def _postfix(self) -> None:
        if self.bar is not None:
            names = ", ".join(self.label(n) for n in self.running)
            self.bar.set_postfix_str(f"running: {names}" if names else "", refresh=True)

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()


def _kept_note(kept: int) -> str:
    return f" ({kept} kept from an earlier run)" if kept else ""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False
