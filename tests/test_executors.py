"""``executor: ray | slurm``: the scheduler's DAG loop driving Ray tasks and submitit jobs.

- Ray: the tiny grid (1 seed) on a Ray instance the run starts on 127.0.0.1, SIGKILLed while unlearning and rerun,
  ends with metrics identical to ``executor: local``; the killed run leaves no process behind. With stand-in stages:
  resources no node has are refused before work, a job's refusal is raised as itself with its log named.
- SLURM: the same pool code through submitit's own local executor (``slurm.cluster: local``, each job a process):
  dependencies respected, complete jobs skipped on a rerun, a job's refusal raised as itself with its log named,
  a node that does not see the run dir refused before any job.
- Bad executor keys are one line before any work; the docs' cluster commands parse.
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
from helpers import assert_run_refused, tiny_experiment, FakeStageConfig

from llm_unlearn.configs import ConfigError
from llm_unlearn.outputs import STARTED
from llm_unlearn.scheduler import Job, execute

ROOT = Path(__file__).parents[1]
TESTS = Path(__file__).parent

# tests/test_resume.py's small experiment with one method (the machine is shared: the test runs the grid 2.5 times);
# two jobs at a time, as the local pool runs them.
EXPERIMENT = tiny_experiment(train={"num_train_epochs": 2}, workers=2)


def _metrics(run_dir: Path) -> dict:
    res = json.loads((run_dir / "results.json").read_text())
    return {
        (r["method"], r["budget"], r["seed"]): {k: v for k, v in r["metrics"].items() if not k.endswith("_seconds")}
        for r in res["rows"]
    }


def _env(tag: str) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "EXECUTOR_TEST_TAG": tag}


def _tagged(tag: str) -> list[int]:
    """Live processes whose environment holds ``EXECUTOR_TEST_TAG=tag`` (the run, Ray's servers and workers)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if f"EXECUTOR_TEST_TAG={tag}".encode() in (p / "environ").read_bytes().split(b"\0"):
                if "\nState:\tZ" not in (p / "status").read_text():
                    pids.append(int(p.name))
        except OSError:
            continue
    return pids


def _wait_gone(tag: str) -> list[int]:
    deadline = time.monotonic() + 60  # (a wait, not a timing claim)
    while _tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _tagged(tag)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find processes left running")
def test_ray_run_killed_while_unlearning_resumes_to_the_local_metrics(tmp_path):
    pytest.importorskip("ray")
    from llm_unlearn import run_experiment

    threads = max(1, (os.cpu_count() or 1) // EXPERIMENT["workers"])  # the local pool's threads per job
    run_experiment(EXPERIMENT, output_dir=str(tmp_path / "local"))

    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({**EXPERIMENT, "resources": {"default": {"num_cpus": threads}}}))
    out = tmp_path / "ray"
    cmd = [sys.executable, "-m", "llm_unlearn", "run", "--config", str(config), "--output_dir", str(out)]
    cmd += ["--executor", "ray"]
    unlearn = [out / "seed_0" / "unlearn" / "gd_b0.2"]
    tag = uuid.uuid4().hex
    killed_log = tmp_path / "killed.log"
    with open(killed_log, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(tag), stdout=log, stderr=log, start_new_session=True)
        killed = False
        while proc.poll() is None:
            if any((d / STARTED).is_file() for d in unlearn):
                os.killpg(proc.pid, signal.SIGKILL)  # the run, as an OOM kill or a lost terminal would
                proc.wait()
                killed = True
                break
            time.sleep(0.02)
    assert killed, f"the run ended (exit {proc.returncode}) before it was killed:\n{killed_log.read_text()[-6000:]}"
    # Ray's servers and workers run in process groups of their own: they must still go with the run.
    assert not _wait_gone(tag), "processes of the killed run (Ray workers?) are still running"
    assert not any((d / ".complete").is_file() for d in unlearn)  # no orphan finished a stage after the kill
    stamps = {d: (out / "seed_0" / d / ".complete").read_text() for d in ("initial", "retrain")}

    proc = subprocess.run(cmd, cwd=ROOT, env=_env(tag), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert {d: (out / "seed_0" / d / ".complete").read_text() for d in stamps} == stamps  # kept, not redone
    assert _metrics(out) == _metrics(tmp_path / "local")
    assert {m for m, _, _ in _metrics(out)} == {"initial", "retrain", "gd"}
    assert "job output" in (out / "seed_0" / "retrain.ray.log").read_text()  # each job's output beside its dir
    assert not (out / ".executor-probe").exists()
    assert not _wait_gone(tag), "the finished run left Ray processes running"


# --- the submitit path, with stand-in stages (tests/helpers.py) run as submitit's local jobs ---


@pytest.fixture
def slurm_local(monkeypatch):
    pytest.importorskip("submitit")
    from llm_unlearn.executors import SlurmConfig
    from llm_unlearn.executors.slurm_pool import SlurmPool

    # The jobs import the stand-in stage module (tests/helpers.py) in processes of their own.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p))

    def pool(run_dir: Path, **slurm):
        return SlurmPool(SlurmConfig(cluster="local", **slurm), {"default": {"num_cpus": 1}}, [str(run_dir)])

    return pool


def _fake_jobs(root: Path, fail: str | None = None) -> list[Job]:
    log = str(root / "order")
    return [
        Job("a", "helpers", FakeStageConfig(str(root / "a"), log=log, fail=fail), []),
        Job("b", "helpers", FakeStageConfig(str(root / "b"), log=log), ["a"]),
        Job("c", "helpers", FakeStageConfig(str(root / "c"), log=log), ["b"]),
    ]


def _order(root: Path) -> list[str]:
    log = root / "order"
    out = log.read_text().split() if log.is_file() else []
    log.unlink(missing_ok=True)
    return out


def test_slurm_path_respects_dependencies_and_skips_complete_jobs_on_a_rerun(tmp_path, slurm_local):
    execute(_fake_jobs(tmp_path), workers=3, pool=slurm_local(tmp_path))
    assert _order(tmp_path) == ["a", "b", "c"]  # three in flight allowed, but each waits for its input
    assert all((tmp_path / n / ".complete").is_file() for n in "abc")
    assert "job output" in (tmp_path / "b.slurm.log").read_text()
    assert not (tmp_path / ".executor-probe").exists()
    assert any((tmp_path / "submitit").iterdir())  # submitit's own files, under the run dir by default

    execute(_fake_jobs(tmp_path), workers=3, pool=slurm_local(tmp_path))
    assert _order(tmp_path) == []


def test_slurm_path_raises_a_job_refusal_as_itself_naming_its_log(tmp_path, slurm_local):
    with pytest.raises(ConfigError, match=r"value out of range \(job a; its log: .*a\.slurm\.log\)"):
        execute(_fake_jobs(tmp_path, fail="value out of range"), workers=2, pool=slurm_local(tmp_path))
    assert _order(tmp_path) == []  # its dependents never ran
    assert "ConfigError: value out of range" in (tmp_path / "a.slurm.log").read_text()  # the traceback


def test_slurm_path_refuses_a_node_that_does_not_see_the_run_dir(tmp_path, slurm_local):
    # A job whose filesystem holds another file at the run dir's path: as a node without the shared mount would.
    marker = tmp_path / ".executor-probe"
    pool = slurm_local(tmp_path, setup=[f"echo another-run > {marker}"])
    with pytest.raises(ConfigError, match="does not see this run's files .*holds another run's token.*shared"):
        execute(_fake_jobs(tmp_path), workers=2, pool=pool)
    assert _order(tmp_path) == []


def test_ray_path_raises_a_job_refusal_as_itself_naming_its_log(tmp_path, monkeypatch):
    """The Ray pool in this process, with stand-in stages: resources no node has are refused before work; a refusal is
    the job's own ConfigError with its log named, its dependents never run, and the Ray instance the run started is
    gone afterwards."""
    ray = pytest.importorskip("ray")
    from llm_unlearn.executors.ray_pool import RayPool

    if ray.is_initialized():
        pytest.skip("a Ray session is already open in this process")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # (what the pool sets: restored after the test)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p))
    # A stage no node can hold would wait for ever: refused before any job.
    pool = RayPool(None, {"unlearn": {"num_gpus": 1000}}, [str(tmp_path)])
    with pytest.raises(ConfigError, match="an unlearn job asks for 1 CPUs and 1000 GPUs .*but the largest node has"):
        execute(_fake_jobs(tmp_path), workers=2, pool=pool)
    assert _order(tmp_path) == [] and not ray.is_initialized()

    pool = RayPool(None, {}, [str(tmp_path)])
    with pytest.raises(ConfigError, match=r"value out of range \(job a; its log: .*a\.ray\.log\)"):
        execute(_fake_jobs(tmp_path, fail="value out of range"), workers=2, pool=pool)
    assert _order(tmp_path) == []
    assert "ConfigError: value out of range" in (tmp_path / "a.ray.log").read_text()
    assert not ray.is_initialized() and not (tmp_path / ".executor-probe").exists()


def test_slurm_jobs_become_sbatch_scripts_with_the_slurm_section_and_the_stage_resources(tmp_path, monkeypatch):
    """The real SLURM path up to sbatch: the script submitit would submit for a train job (read through submitit's
    own script writer; an ``srun`` on PATH is all it needs to believe it is on a cluster)."""
    pytest.importorskip("submitit")
    from llm_unlearn.executors import SlurmConfig, job_resources
    from llm_unlearn.executors.slurm_pool import SlurmPool

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    slurm = SlurmConfig(
        partition="gpu",
        account="lab",
        time_min=720,
        setup=["module load cuda/12.4"],
        additional={"constraint": "h100"},
    )
    resources = {"train": {"num_gpus": 8, "num_cpus": 32, "memory_gb": 200}, "default": {"num_cpus": 4}}
    pool = SlurmPool(slurm, resources, [str(tmp_path / "run")])
    job = Job("s0/initial", "llm_unlearn.stages.train", {"output_dir": str(tmp_path / "run" / "initial")}, [])
    assert job_resources(resources, job) == {"num_cpus": 32, "num_gpus": 8, "memory_gb": 200}

    monkeypatch.setenv("PATH", str(bin_dir))
    ex = pool.executor("llm-unlearn:s0/initial", job_resources(resources, job))
    script = ex._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --time=720",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=32",
        "#SBATCH --mem=200GB",
        "#SBATCH --constraint=h100",
        "#SBATCH --job-name=llm-unlearn:s0/initial",
        "module load cuda/12.4",
    ):
        assert line in script.splitlines(), (line, script)
    assert f"{tmp_path / 'run' / 'submitit'}/%j/%j_0_log.err" in script  # submitit's files under the run dir

    (bin_dir / "srun").unlink()  # not a SLURM machine: one clear error, before any job
    with pytest.raises(ConfigError, match=r"executor slurm: .*srun.*slurm\.cluster: local"):
        pool.executor("x", job_resources(resources, job))


# --- config checks and the docs ---


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--executor", "k8s"], "executor: 'k8s' is not allowed; choose from ['local', 'ray', 'slurm']"),
        (["--resources", "{trian: {num_gpus: 1}}"], "resources.trian: unknown stage; choose from ['default', 'base'"),
        (["--resources", "{train: {gpus: 1}}"], "resources.train.gpus: unknown key; choose from ['num_cpus'"),
        (["--resources", "{train: {num_cpus: 0}}"], "resources.train.num_cpus: must be > 0, got 0"),
        (
            ["--executor", "slurm", "--resources", "{unlearn: {num_gpus: 0.5}}"],
            "resources.unlearn.num_gpus: executor slurm allocates whole CPUs and GPUs, got 0.5",
        ),
        (["--slurm.time_min", "0"], "slurm.time_min must be >= 1 (minutes), got 0"),
        (["--slurm.partitio", "gpu"], "slurm.partitio"),
    ],
    ids=["unknown_executor", "unknown_stage", "unknown_key", "zero_cpus", "fractional_gpu", "zero_time", "typo"],
)
def test_bad_executor_keys_are_one_line_before_any_work(tmp_path, capsys, flags, message):
    assert_run_refused(tmp_path, capsys, EXPERIMENT, flags, message)


@pytest.mark.parametrize(("executor", "module"), [("ray", "ray"), ("slurm", "submitit")])
def test_a_missing_executor_package_names_the_extra(tmp_path, monkeypatch, executor, module):
    import importlib.util

    from llm_unlearn.configs import build_config
    from llm_unlearn.stages.run import ExperimentConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(
        ConfigError, match=rf"executor {executor} needs the {module} package: pip install llm-unlearn\["
    ):
        build_config(ExperimentConfig, {**EXPERIMENT, "output_dir": str(tmp_path / "o")}, executor=executor)


def _executor_doc() -> Path:
    return ROOT / "README.md"


def test_the_cluster_commands_of_the_docs_parse(monkeypatch):
    from test_recipe_scripts import _parse_llm_unlearn, _words

    doc = _executor_doc()
    text = doc.read_text()
    section = text[text.index("## Running the grid on a Ray cluster or on SLURM") :]
    section = section[: section.find("\n## ", 1)] if "\n## " in section[1:] else section
    commands, lines, i = [], section.splitlines(), 0
    in_bash = False
    while i < len(lines):  # ```bash blocks, continuation lines joined (as tests/test_recipe_scripts.py reads them)
        line = lines[i]
        if line.startswith("```"):
            in_bash = not in_bash and line.strip() == "```bash"
        elif in_bash:
            while line.rstrip().endswith("\\"):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            if line.startswith("llm-unlearn "):
                commands.append(line)
        i += 1
    llama = [c for c in commands if "recipes/llama-3.2-1b-imdb/" in c]
    assert {"ray", "slurm"} <= {_words(c)[_words(c).index("--executor") + 1] for c in llama}, commands
    monkeypatch.chdir(ROOT)
    for cmd in commands:
        words = _words(cmd)
        assert (ROOT / words[words.index("--config") + 1]).is_file(), cmd
        _parse_llm_unlearn(words[1:])  # every key real, every value typed; the tiny ones fully validated
