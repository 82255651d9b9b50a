"""Issue 13's concurrency and signal cases (part of the fault catalogue, README "Reliability"):

- one process per run dir or stage dir: a second one gets exit 2 and "DIR is in use by PID N (started ...)", before
  it writes anything; a stale lock left by a killed process is taken over; racing processes get exactly one winner;
- SIGTERM / SIGINT stop every worker of a ``run`` with ``workers >= 2`` (no process of the run outlives it), nothing
  unfinished is marked complete, one line says how to resume; a second Ctrl-C kills at once; a SIGKILLed run takes
  its workers with it.

The scheduler cases run the real scheduler on the fake stage of ``tests/helpers.py`` (seconds); one case runs the
real ``llm-unlearn run`` on the tiny model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from helpers import tiny_experiment, count_markers

TESTS = str(Path(__file__).parent)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": TESTS}


def _wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by a dead parent's reaper) runs nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


HOLD = textwrap.dedent(
    """
    import sys, time
    from llm_unlearn.locks import acquire
    acquire(sys.argv[1])
    print("locked", flush=True)
    time.sleep(120)
    """
)


def _hold_lock(directory: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _cli(args, capsys) -> tuple[int, str]:
    from llm_unlearn.cli import main

    capsys.readouterr()
    rc = main(args)
    return rc, capsys.readouterr().err


def test_second_run_on_a_locked_run_dir_is_refused(tmp_path, capsys, monkeypatch):
    """Issue 13 case 3: two `run`s on one output_dir. The second exits 2 naming the holder, before any work."""
    import llm_unlearn.stages.run as run

    out = tmp_path / "run"
    holder = _hold_lock(out)
    try:
        monkeypatch.setattr(run, "execute", lambda *a, **k: pytest.fail("the second run started work"))
        rc, err = _cli(["run", "--output_dir", str(out), "--seeds", "[0]"], capsys)
        assert rc == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err
        assert f"{out} is in use by PID {holder.pid} (started " in lines[0]
        assert sorted(p.name for p in out.iterdir()) == [".lock"], "the refused run wrote into the dir"
        # A single stage inside the locked run dir is refused too (it would write into the holder's run).
        rc, err = _cli(["poison", "--output_dir", str(out / "seed_0" / "poison")], capsys)
        assert rc == 2 and f"{out} is in use by PID {holder.pid}" in err
        assert not (out / "seed_0").exists()
    finally:
        holder.kill()
        holder.wait()


def test_second_stage_command_on_a_locked_stage_dir_is_refused(tmp_path, capsys):
    out = tmp_path / "poison"
    holder = _hold_lock(out)
    try:
        rc, err = _cli(["poison", "--output_dir", str(out)], capsys)
        assert rc == 2 and f"{out} is in use by PID {holder.pid} (started " in err
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
    from llm_unlearn import locks

    out = tmp_path / "run"
    holder = _hold_lock(out)
    holder.send_signal(signal.SIGKILL)  # no cleanup: its .lock file stays behind
    holder.wait()
    lock = out / locks.LOCK_NAME
    assert json.loads(lock.read_text())["pid"] == holder.pid
    with locks.DirLock(out):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"taking over a stale lock of PID {holder.pid}" in caplog.text
    assert not lock.exists(), "a released lock leaves no file"


RACE = textwrap.dedent(
    """
    import sys, time
    from llm_unlearn.configs import ConfigError
    from llm_unlearn.locks import acquire
    start = float(sys.argv[2])
    while time.time() < start:
        pass
    try:
        acquire(sys.argv[1])
    except ConfigError:
        print("refused", flush=True)
    else:
        print("won", flush=True)
        time.sleep(1)
    """
)


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "stale_lock_file"])
def test_racing_processes_get_exactly_one_lock(tmp_path, stale):
    out = tmp_path / "run"
    out.mkdir()
    if stale:  # a killed process's lock file: every racer sees it and tries to take it over
        (out / ".lock").write_text(json.dumps({"pid": 999999, "started": "then", "host": os.uname().nodename}))
    start = time.time() + 1.5  # every racer imported and spinning by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, str(out), str(start)], stdout=subprocess.PIPE, text=True, env=_env()
        )
        for _ in range(6)
    ]
    results = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(results) == ["refused"] * 5 + ["won"], results


# --- signals: the real scheduler, fake stages in worker processes ---

SCHEDULE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from helpers import FakeStageConfig
    from llm_unlearn.scheduler import Interrupted, Job, execute

    out, ignore = Path(sys.argv[1]), sys.argv[2] == "ignore"
    jobs = [
        Job(f"j{i}", "helpers", FakeStageConfig(str(out / f"j{i}"), sleep=60, pid_dir=str(out / "pids"),
                                                ignore_sigterm=ignore), [])
        for i in range(3)
    ]
    try:
        execute(jobs, workers=2)
    except Interrupted as e:
        print(f"run: {e}", file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    """
)


def _start_schedule(out: Path, ignore_sigterm: bool = False) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCHEDULE, str(out), "ignore" if ignore_sigterm else "-"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,
    )
    pids = out / "pids"
    _wait_for(lambda: pids.is_dir() and len(list(pids.iterdir())) == 2, what="two workers running their stage")
    return proc, [int(p.name) for p in pids.iterdir()]


def _no_complete(out: Path) -> bool:
    return count_markers(out) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_every_worker_and_says_how_to_resume(tmp_path, sig):
    """Issue 13 case 2: SIGTERM with workers >= 2 orphaned the workers, which went on writing into the run dir."""
    out = tmp_path / "run"
    proc, workers = _start_schedule(out)
    proc.send_signal(sig)  # to the run alone, as `kill PID` or a Ctrl-C on the run's terminal would
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {signal.Signals(sig).name}" in err and "rerun the same command to resume" in err, err
    assert "Traceback" not in err, err
    _wait_for(lambda: not any(_alive(p) for p in workers), timeout=5, what="the workers to be gone")
    time.sleep(1.0)  # an orphan would write its .complete now
    assert _no_complete(out), "a stopped stage was marked complete"


def test_second_ctrl_c_kills_at_once(tmp_path):
    out = tmp_path / "run"
    proc, workers = _start_schedule(out, ignore_sigterm=True)  # workers that do not stop when asked
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None, "the first Ctrl-C should wait (a grace period) for the workers to stop"
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert time.monotonic() - start < 3, "the second Ctrl-C did not kill at once"
    assert proc.returncode == 130 and "killed at once" in err, err
    _wait_for(lambda: not any(_alive(p) for p in workers), timeout=5, what="the workers to be gone")
    assert _no_complete(out)


def test_sigkilled_run_takes_its_workers_with_it(tmp_path):
    out = tmp_path / "run"
    proc, workers = _start_schedule(out)
    proc.send_signal(signal.SIGKILL)  # no handler runs: the kernel kills the workers (parent-death signal)
    proc.wait(timeout=10)
    _wait_for(lambda: not any(_alive(p) for p in workers), timeout=5, what="the workers to die with the run")
    time.sleep(1.0)
    assert _no_complete(out)


# --- the real `llm-unlearn run` with two workers ---

EXPERIMENT = tiny_experiment(train={"num_train_epochs": 2}, workers=2)


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to list the run's processes")
def test_sigterm_on_a_real_run_with_two_workers(tmp_path):
    from llm_unlearn.outputs import record_problem
    from llm_unlearn.files import read_marker

    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(EXPERIMENT))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_unlearn", "run", "--config", str(config), "--output_dir", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,
    )
    # Stop it once both workers exist and the first stage is done (the others are being worked on).
    _wait_for(lambda: count_markers(out) >= 1, timeout=120, what="a first finished stage")
    _wait_for(lambda: len(_descendants(proc.pid)) >= 2, timeout=60, what="the worker processes")
    family = _descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("llm-unlearn run: stopped by SIGTERM") and "rerun the same command to resume" in last
    assert "Traceback" not in err
    _wait_for(lambda: not any(_alive(p) for p in family), timeout=10, what="every process of the run to be gone")
    complete = sorted(p.parent for p in out.rglob(".complete"))
    time.sleep(1.5)
    assert sorted(p.parent for p in out.rglob(".complete")) == complete, "a process of the run outlived it"
    for d in complete:  # what is marked complete is complete: its config and records as the stage wrote them
        assert (d / "config.yaml").is_file() and record_problem(d, read_marker(d)) is None, d
    assert not (out / ".lock").exists(), "the stopped run left its lock"


SECOND = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import llm_unlearn.cli, llm_unlearn.stages.run, transformers  # imported before the first run takes its lock
    from transformers import TrainingArguments
    print("ready", flush=True)
    while not Path(sys.argv[1]).exists():
        time.sleep(0.01)
    sys.exit(llm_unlearn.cli.main(sys.argv[2:]))
    """
)


def test_two_real_runs_on_one_output_dir(tmp_path):
    """Issue 13 case 3 as reported: two `run`s on one output_dir. The second is refused at once (exit 2, one line, no
    traceback); the first finishes undisturbed."""
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({**EXPERIMENT, "workers": 1}))
    out, go = tmp_path / "run", tmp_path / "go"
    args = ["run", "--config", str(config), "--output_dir", str(out)]
    second = subprocess.Popen(
        [sys.executable, "-c", SECOND, str(go), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert second.stdout.readline().strip() == "ready"
    first = subprocess.Popen(
        [sys.executable, "-m", "llm_unlearn", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    _wait_for(lambda: (out / ".lock").is_file() or first.poll() is not None, what="the first run's lock")
    go.touch()
    _, err2 = second.communicate(timeout=120)
    assert first.poll() is None, "the first run ended before the second tried"
    assert second.returncode == 2, err2[-2000:]
    line = err2.strip().splitlines()[-1]
    assert line.startswith(f"llm-unlearn run: error: {out} is in use by PID {first.pid} (started ")
    assert "Traceback" not in err2
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert (out / "results.json").is_file() and not (out / ".lock").exists()
