"""`run` with `launcher: accelerate`: every train/unlearn job is its own `accelerate launch` (2 processes, DeepSpeed
ZeRO-3 over gloo, recipes/accelerate_configs/cpu.yaml) while poison, evaluations and the report run in the pool;
resume after a SIGKILL of the whole run behaves as with the local launcher; bad launcher keys are refused before work.

The grid runs once, killed in the middle and resumed (DeepSpeed start-up dominates: each launch costs ~15 s here, so
one killed-and-resumed run is the cheapest way to check both the rows and the resume).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from helpers import assert_run_refused, tiny_experiment

from llm_unlearn.outputs import STARTED

ROOT = Path(__file__).parents[1]
CPU_CONFIG = ROOT / "recipes" / "accelerate_configs" / "cpu.yaml"
ACCELERATE = ["--launcher", "accelerate", "--accelerate_config", str(CPU_CONFIG)]

# tests/test_resume.py's small experiment, with the methods of the command.
EXPERIMENT = tiny_experiment(
    train={"num_train_epochs": 2, "per_device_train_batch_size": 8},
    unlearn={"per_device_train_batch_size": 4},
    methods=["gd", "npo"],
    budgets=[0.1, 0.2],  # nested: each launched unlearning run also saves its 0.1 model (a ZeRO-3 gather mid-run)
    workers=2,  # two launches at once (the trainings): each needs its own rendezvous port
)


def _env(tag: str) -> dict:
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "llm-unlearn" / "torch_extensions"))
    # The tag marks every process of this run, so the test can tell that none outlived a kill.
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", LAUNCH_TEST_TAG=tag)
    return env


def _cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [
        *(sys.executable, "-m", "llm_unlearn", "run", "--config", str(config), "--output_dir", str(out)),
        *ACCELERATE,
        *extra,
    ]


def _run(cmd: list[str], tag: str, log: Path) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(tag), capture_output=True, text=True, timeout=900)
    log.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]


def _tagged(tag: str) -> list[int]:
    """Live processes whose environment holds ``LAUNCH_TEST_TAG=tag``."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if f"LAUNCH_TEST_TAG={tag}".encode() in (p / "environ").read_bytes().split(b"\0"):
                status = (p / "status").read_text()
                if "\nState:\tZ" not in status:  # a zombie is dead, waiting for its parent to collect it
                    pids.append(int(p.name))
        except OSError:
            continue
    return pids


def _stamp(stage_dir: Path) -> str:
    return (stage_dir / ".complete").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find processes left running")
def test_run_with_accelerate_launcher_resumes_after_sigkill_and_records_processes(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(EXPERIMENT))
    out = tmp_path / "run"
    seed = out / "seed_0"
    unlearn = [seed / "unlearn" / f"{m}_b0.2" for m in ("gd", "npo")]

    # Kill the run (SIGKILL, the whole process group, as an OOM kill or a lost terminal would) once the trainings are
    # done and a launched unlearning job's rank 0 has begun its stage.
    tag = uuid.uuid4().hex
    cmd = _cmd(config, out)
    first_log = tmp_path / "killed.log"
    with open(first_log, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(tag), stdout=log, stderr=log, start_new_session=True)
        killed = False
        while proc.poll() is None:
            if any((d / STARTED).is_file() for d in unlearn):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                killed = True
                break
            time.sleep(0.05)
    assert killed, (
        f"the run ended (exit {proc.returncode}) before it could be killed mid-way:\n"
        + (first_log.read_text(errors="replace")[-6000:])
    )
    deadline = time.monotonic() + 60  # (a wait, not a timing claim: the kernel delivers the death signals)
    while _tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    # The launched ranks run in sessions of their own (torch elastic): only PR_SET_PDEATHSIG takes them down.
    assert not _tagged(tag), "processes of the killed run (launched ranks?) are still running"
    assert not any((d / ".complete").is_file() for d in unlearn)
    trained = {d: _stamp(seed / d) for d in ("initial", "retrain")}

    _run(cmd, tag, tmp_path / "resumed.log")
    assert {d: _stamp(seed / d) for d in trained} == trained  # finished before the kill: kept, not redone
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"initial", "retrain", "gd", "npo"}
    for d in ("initial", "retrain"):
        assert json.loads((seed / d / "training_info.json").read_text())["num_processes"] == 2
    assert {(r["method"], r["budget"]) for r in rows if r["budget"]} == {
        (m, b) for m in ("gd", "npo") for b in (0.1, 0.2)
    }
    for d, m in zip(unlearn, ("gd", "npo")):
        assert json.loads((d / "unlearn_info.json").read_text())["num_processes"] == 2
        nested = json.loads((d / "at_budget_0.1" / "unlearn_info.json").read_text())
        assert nested["num_processes"] == 2 and 0.1 <= nested["compute_fraction"] < 0.2
        spec = yaml.safe_load(d.with_name(d.name + ".launch.yaml").read_text())  # what was launched, for a rerun
        assert spec["method"] == m and spec["output_dir"] == str(d)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--launcher", "slurm"], "launcher: 'slurm' is not allowed; choose from ['local', 'accelerate']"),
        (["--launcher", "accelerate"], "launcher accelerate needs accelerate_config"),
        (["--launcher", "accelerate", "--accelerate_config", "nope.yaml"], "accelerate_config: 'nope.yaml' does not"),
        (
            ["--launcher", "accelerate", "--accelerate_config", str(CPU_CONFIG), "--num_processes", "0"],
            "num_processes",
        ),
    ],
    ids=["unknown_launcher", "no_config", "missing_config", "zero_processes"],
)
def test_bad_launcher_keys_are_one_line_before_any_work(tmp_path, capsys, flags, message):
    assert_run_refused(tmp_path, capsys, EXPERIMENT, flags, message)


def test_accelerate_not_installed_is_one_line(tmp_path, monkeypatch):
    import importlib.util

    from llm_unlearn.configs import ConfigError, build_config
    from llm_unlearn.stages.run import ExperimentConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    with pytest.raises(ConfigError, match="the accelerate package is not installed"):
        build_config(
            ExperimentConfig,
            {**EXPERIMENT, "output_dir": str(tmp_path / "o")},
            launcher="accelerate",
            accelerate_config=str(CPU_CONFIG),
        )


def test_accelerate_launcher_refuses_a_stage_config_its_command_cannot_parse(tmp_path):
    from llm_unlearn.configs import ConfigError
    from llm_unlearn.launcher import Launcher
    from llm_unlearn.scheduler import Job
    from llm_unlearn.stages.train import TrainConfig

    launcher = Launcher(str(CPU_CONFIG))
    launcher.check(Job("s0/initial", "llm_unlearn.stages.train", TrainConfig(output_dir=str(tmp_path)), []))

    class OtherTrainConfig(TrainConfig):  # another track's config for the same stage module
        pass

    job = Job("s0/initial", "llm_unlearn.stages.train", OtherTrainConfig(output_dir=str(tmp_path)), [])
    with pytest.raises(ConfigError, match="use launcher: local"):
        launcher.check(job)


def test_a_failed_launch_is_reported_with_its_stderr_and_leaves_the_stage_incomplete(tmp_path):
    from llm_unlearn.launcher import LaunchFailed, Launcher
    from llm_unlearn.scheduler import Job, run_job
    from llm_unlearn.stages.train import TrainConfig

    bad = tmp_path / "accelerate.yaml"  # accelerate itself refuses it: the cheapest launch that exits non-zero
    bad.write_text("distributed_type: NOT_A_TYPE\nnum_processes: 2\n")
    out = tmp_path / "seed_0" / "initial"
    job = Job("s0/initial", "llm_unlearn.stages.train", TrainConfig(output_dir=str(out)), [], Launcher(str(bad)))
    with pytest.raises(LaunchFailed, match=r"s0/initial: `accelerate launch \.\.\. llm_unlearn train` exited with"):
        run_job(job)
    log = out.with_name("initial.launch.log")
    assert "NOT_A_TYPE" in log.read_text()  # all of its stderr is kept
    assert yaml.safe_load(out.with_name("initial.launch.yaml").read_text())["output_dir"] == str(out)
    assert not (out / ".complete").exists()


def test_a_launch_that_loses_its_rendezvous_port_is_relaunched_on_another(tmp_path, monkeypatch):
    """Two launches starting at once can race for a port: the launch whose rendezvous found its port taken (nothing of
    the stage ran) is relaunched on a fresh one; any other failure is not retried."""
    from llm_unlearn import launcher as launching
    from llm_unlearn.scheduler import Job

    calls = []

    class Flaky(launching.Launcher):
        def command(self, job, spec):
            calls.append(launching._free_port())
            fail = len(calls) == 1 or job.name == "broken"
            msg = "RuntimeError: The server socket has failed to listen: Address already in use" if fail else "ok"
            code = f"import sys; print({msg!r}, file=sys.stderr); sys.exit({int(fail)})"
            return [sys.executable, "-c", code]

    launcher = Flaky(str(CPU_CONFIG))
    job = Job("unlearn/x", "llm_unlearn.stages.unlearn", {"output_dir": str(tmp_path / "x")}, [], launcher)
    launching.launch_job(job)
    assert len(calls) == 2 and all(20000 <= p <= 32000 for p in calls)
    assert (tmp_path / "x.launch.log").read_text().strip() == "ok"  # the log is the launch that ran

    calls.clear()
    broken = Job("broken", "llm_unlearn.stages.unlearn", {"output_dir": str(tmp_path / "y")}, [], launcher)
    with pytest.raises(launching.LaunchFailed, match="Address already in use"):
        launching.launch_job(broken)
    assert len(calls) == launching.PORT_ATTEMPTS
