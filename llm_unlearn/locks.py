"""One process at a time per directory: a ``.lock`` file in every run dir (``run``, ``suite``, ``report``) and every
stage output dir (each stage, whoever starts it).

The lock is an exclusive ``flock`` on ``DIR/.lock``, which holds the holder's PID, start time and host for the
message a second process gets: ``DIR is in use by PID N (started ...)``. The kernel drops a ``flock`` when its
process dies, however it dies (SIGKILL, OOM kill), so the file a killed process leaves behind is a stale lock that the
next process takes over at once: it locks the file and rewrites it. Taking over is safe against a race with a
process that is releasing the lock (and deletes the file) because after locking the file we check that the path
still names the inode we locked, and start again if not.

A stage dir under a locked run dir belongs to that run: a process that is not the run's (nor one of its workers)
is refused there too. Locks are re-entrant within a process (``run`` holds the run dir while its in-process stages
and ``report`` lock their own dirs).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from .configs import ConfigError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_HELD: dict[str, list] = {}  # resolved dir -> [fd, depth]


def _resolved(directory: Path) -> str:
    return str(directory.resolve())


def _info() -> dict:
    return {
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": socket.gethostname(),
    }


def read_lock(path: Path, wait: float = 0.5) -> dict:
    """The holder's record in a lock file ({} if unreadable); a holder that has just locked the file may not have
    written it yet, so an empty file is re-read for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            text = path.read_text()
        except OSError:
            text = ""
        if text.strip():
            try:
                info = json.loads(text)
                return info if isinstance(info, dict) else {}
            except json.JSONDecodeError:
                pass
        if time.monotonic() >= deadline:
            return {}
        time.sleep(0.02)


def in_use_message(directory: Path, info: dict) -> str:
    pid = info.get("pid", "?")
    host = info.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return (
        f"{directory} is in use by PID {pid} (started {info.get('started', '?')}{where}); wait for it to finish or "
        "stop it, then rerun"
    )


def _ancestor_pids() -> set[int]:
    """This process and its ancestors (a worker of a run may work under the run's lock)."""
    pids, pid = {os.getpid()}, os.getppid()
    for _ in range(64):
        if pid <= 1 or pid in pids:
            break
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_enclosing_locks(directory: Path) -> None:
    """Refuse a dir inside a run dir that another live process (not an ancestor of this one) holds."""
    mine = _ancestor_pids()
    for parent in directory.resolve().parents:
        lock = parent / LOCK_NAME
        if str(parent) in _HELD or not lock.is_file():
            continue
        info = read_lock(lock, wait=0.0)
        pid = info.get("pid")
        if (
            isinstance(pid, int)
            and pid not in mine
            and info.get("host") == socket.gethostname()
            and _alive(pid)
            and _flock_held(lock)
        ):
            raise ConfigError(in_use_message(parent, info))


def _flock_held(lock: Path) -> bool:
    """Whether some process holds ``lock`` (tested with a shared lock, which never takes it from a holder)."""
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def acquire(directory: str | os.PathLike) -> None:
    """Lock ``directory`` (created if needed) for this process, or raise :class:`ConfigError` naming the holder."""
    import fcntl

    d = Path(directory)
    key = _resolved(d)
    if key in _HELD:
        _HELD[key][1] += 1
        return
    _check_enclosing_locks(d)  # before creating anything
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{e.filename or d}: cannot create the directory: [Errno {e.errno}] {e.strerror}") from e
    path = d / LOCK_NAME
    for _ in range(100):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"{path}: cannot create the lock file: [Errno {e.errno}] {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(in_use_message(d, read_lock(path))) from None
        # Re-check: a holder releasing the lock unlinks the file; if we locked that unlinked inode, start again.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        old = read_lock(path, wait=0.0)
        if old.get("pid") not in (None, os.getpid()):
            logger.warning("%s: taking over a stale lock of PID %s (that process is gone)", d, old.get("pid"))
        try:
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(_info()) + "\n").encode())
        except OSError as e:
            os.close(fd)
            raise ConfigError(f"{path}: cannot write the lock file: [Errno {e.errno}] {e.strerror}") from e
        _HELD[key] = [fd, 1]
        return
    raise ConfigError(f"{d}: could not take its lock (it kept being replaced)")


def release(directory: str | os.PathLike) -> None:
    """Release one level of this process's lock on ``directory``; the last one deletes the lock file."""
    d = Path(directory)
    key = _resolved(d)
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] > 0:
        return
    del _HELD[key]
    try:
        (d / LOCK_NAME).unlink(missing_ok=True)  # while still locked: a waiter re-checks the inode and starts again
    except OSError:
        pass
    os.close(held[0])


def holds(directory: str | os.PathLike) -> bool:
    """Whether this process holds the lock on ``directory``."""
    return _resolved(Path(directory)) in _HELD


class DirLock:
    """``with DirLock(path):`` holds the lock on ``path`` for the block (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def __enter__(self) -> DirLock:
        acquire(self.directory)
        return self

    def __exit__(self, *exc) -> None:
        release(self.directory)
