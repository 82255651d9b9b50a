"""Reliability: CPU runs are deterministic, a `run` killed with SIGKILL at random moments and restarted with the same
command ends with the same results as an uninterrupted run, and a training stage resumes from its last Trainer
checkpoint to exactly the model an uninterrupted run trains."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from helpers import tiny_experiment, count_markers

EXPERIMENT = tiny_experiment(
    # save_steps: kills during a training resume from its checkpoints, so the loop below exercises that path too
    train={"num_train_epochs": 2, "save_steps": 3},
    unlearn={"save_steps": 2},
    methods=["gd", "ga"],
    workers=1,
)


def _child_env() -> dict:
    import torch

    # Same thread count as this process: CPU float reductions may depend on it.
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"}


def _metrics(run_dir: Path) -> dict:
    """Every row's metrics except timings, keyed by model."""
    res = json.loads((run_dir / "results.json").read_text())
    return {
        (r["method"], r["budget"], r["seed"]): {k: v for k, v in r["metrics"].items() if not k.endswith("_seconds")}
        for r in res["rows"]
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    from llm_unlearn import run_experiment

    out = tmp_path_factory.mktemp("reference")
    run_experiment(EXPERIMENT, output_dir=str(out))
    return out


def test_same_config_and_seed_give_identical_metrics(reference, tmp_path):
    from llm_unlearn import run_experiment

    run_experiment(EXPERIMENT, output_dir=str(tmp_path / "again"))
    first, second = _metrics(reference), _metrics(tmp_path / "again")
    assert first == second
    assert {m for m, _, _ in first} == {"initial", "retrain", "gd", "ga"}


def _kill_after(proc, out: Path, n_complete: int, delay: float) -> bool:
    """SIGKILL ``proc``'s process group ``delay`` s after ``n_complete`` stages finished; False if it exited first."""
    deadline = None
    while proc.poll() is None:
        if deadline is None and count_markers(out) >= n_complete:
            deadline = time.monotonic() + delay
        if deadline is not None and time.monotonic() >= deadline:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, as a crash or an OOM kill would
            proc.wait()
            return True
        time.sleep(0.02)
    return False


def test_sigkill_at_random_moments_then_rerun_gives_same_results(reference, tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(EXPERIMENT))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "llm_unlearn", "run", "--config", str(config), "--output_dir", str(out)]
    rng = random.Random(6)
    # Kill points: after a random number of finished stages (of 10), plus a random delay into the next one(s), so the
    # kills land inside different stages (training steps, checkpoint saves, evaluation, writing results).
    points = [(k, rng.uniform(0.0, 2.5)) for k in sorted(rng.sample(range(0, 9), 3))]
    killed_at = []
    for n_complete, delay in points:
        proc = subprocess.Popen(
            cmd, env=_child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        if _kill_after(proc, out, n_complete, delay):
            killed_at.append(count_markers(out))
    proc = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(killed_at) >= 2, killed_at  # the kill points were reached before the run could finish
    assert _metrics(out) == _metrics(reference)
    for stage in ("poison", "initial", "retrain", "unlearn/gd_b0.2", "unlearn/ga_b0.2", "eval/ga_b0.2"):
        assert (out / "seed_0" / stage / ".complete").is_file(), stage
    assert not list(out.rglob("checkpoint-*")), "training checkpoints must be removed when a stage completes"


KILL_AT_STEP = textwrap.dedent(
    """
    import importlib, json, os, signal, sys
    import transformers

    module, cls, *stage_module = sys.argv[1].split(":")  # the config's module, its class[, the stage's module]
    step = transformers.Trainer.training_step

    def training_step(self, *args, **kwargs):
        if self.state.global_step == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: as a crash would leave it
        return step(self, *args, **kwargs)

    transformers.Trainer.training_step = training_step
    config_cls = getattr(importlib.import_module(module), cls)
    stage = importlib.import_module(stage_module[0] if stage_module else module)
    stage.main(config_cls(**json.loads(sys.argv[2])))
    """
)


def _killed_at_step(stage: str, cfg: dict, step: int) -> None:
    """Run ``stage`` ("module:ConfigClass") with ``cfg`` in a child that SIGKILLs itself when ``step`` begins."""
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_STEP, stage, json.dumps(cfg), str(step)],
        env=_child_env(),
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]


def _assert_same_tensors(a_file: Path, b_file: Path) -> None:
    import torch
    from safetensors.torch import load_file

    a, b = load_file(a_file), load_file(b_file)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_training_resumes_from_last_checkpoint_to_the_same_model(tiny_dir, gaussian_dir, tmp_path):
    from llm_unlearn.stages.train import TrainConfig, main
    from llm_unlearn.files import read_json

    def cfg(name):
        # 120 examples / batch 16 = 8 steps an epoch, 3 epochs; checkpoints every 4 steps
        return dict(
            model_name_or_path=tiny_dir,
            dataset_dir=gaussian_dir,
            output_dir=str(tmp_path / name),
            num_train_epochs=3,
            per_device_train_batch_size=16,
            save_steps=4,
            progress=False,
        )

    main(TrainConfig(**cfg("straight")))
    # Killed at step 10, mid-way through the second epoch: the last complete checkpoint is step 8.
    _killed_at_step("llm_unlearn.stages.train:TrainConfig", cfg("resumed"), 10)
    resumed = tmp_path / "resumed"
    assert (resumed / "trainer" / "checkpoint-8").is_dir() and not (resumed / ".complete").exists()
    main(TrainConfig(**cfg("resumed")))

    info, ref_info = read_json(resumed / "training_info.json"), read_json(tmp_path / "straight" / "training_info.json")
    assert info["resumed_from_step"] == 8 and ref_info["resumed_from_step"] is None
    assert info["steps"] == ref_info["steps"] == 24
    assert info["compute_tokens"] == ref_info["compute_tokens"]
    _assert_same_tensors(tmp_path / "straight" / "model.safetensors", resumed / "model.safetensors")
    for d in (resumed, tmp_path / "straight"):
        assert not (d / "trainer").exists(), "checkpoints are removed at the end"
        assert not [p for p in d.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]


@pytest.mark.parametrize(
    ("method", "use_peft", "weights", "scale"),
    [
        ("ngd", True, "adapter_model.safetensors", 2),  # LoRA, gradient noise drawn per step
        # all weights, with a separate frozen reference model; a step costs ~2.5x GD's (forget, retain, reference)
        ("npo", False, "model.safetensors", 5),
    ],
)
def test_unlearning_resumes_from_last_checkpoint_to_the_same_model(
    trained_dirs, gaussian_dir, tmp_path, method, use_peft, weights, scale
):
    from llm_unlearn.stages.unlearn import UnlearnConfig, main
    from llm_unlearn.files import read_json

    initial, retrain = trained_dirs
    ref_tokens = read_json(Path(retrain) / "training_info.json")["compute_tokens"]

    def cfg(name):
        return dict(
            model_dir=initial,
            dataset_dir=gaussian_dir,
            output_dir=str(tmp_path / name),
            # ~17 steps of 8 over the 108-example retain set (14 an epoch): the resumed run crosses an epoch boundary
            reference_compute_tokens=scale * ref_tokens,
            method=method,
            use_peft=use_peft,
            budget=0.6,
            per_device_train_batch_size=8,
            save_steps=5,
            progress=False,
        )

    main(UnlearnConfig(**cfg("straight")))
    straight = read_json(tmp_path / "straight" / "unlearn_info.json")
    assert straight["steps"] > 16 and straight["resumed_from_step"] is None
    _killed_at_step("llm_unlearn.stages.unlearn:UnlearnConfig", cfg("resumed"), 16)
    resumed = tmp_path / "resumed"
    assert (resumed / "trainer" / "checkpoint-15").is_dir() and not (resumed / ".complete").exists()
    main(UnlearnConfig(**cfg("resumed")))

    info = read_json(resumed / "unlearn_info.json")
    assert info["resumed_from_step"] == 15
    # The budget counts the compute spent before the kill: the resumed run stops at the same step.
    assert info["steps"] == straight["steps"] and info["compute_tokens"] == straight["compute_tokens"]
    _assert_same_tensors(tmp_path / "straight" / weights, resumed / weights)
    for d in (resumed, tmp_path / "straight"):
        assert not (d / "trainer").exists(), "checkpoints are removed at the end"
        assert not [p for p in d.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]


def test_image_unlearning_resumes_with_the_same_augmentations(image_dirs, tmp_path):
    from image_track.task import ImageUnlearnConfig
    from llm_unlearn.stages.unlearn import main
    from llm_unlearn.files import read_json

    ds, initial, retrain = image_dirs

    def cfg(name):
        return dict(
            model_dir=initial,
            dataset_dir=ds,
            retrain_dir=retrain,
            output_dir=str(tmp_path / name),
            method="neggrad_plus",
            budget=1.0,  # ~18 steps of 8 forget + 8 retain examples
            per_device_train_batch_size=8,
            augment="crop_flip",  # drawn from the task's generator: its state must travel with the checkpoint
            save_steps=4,
        )

    main(ImageUnlearnConfig(**cfg("straight")))
    straight = read_json(tmp_path / "straight" / "unlearn_info.json")
    assert straight["steps"] > 10
    _killed_at_step("image_track.task:ImageUnlearnConfig:llm_unlearn.stages.unlearn", cfg("resumed"), 10)
    resumed = tmp_path / "resumed"
    assert (resumed / "trainer" / "checkpoint-8").is_dir()
    main(ImageUnlearnConfig(**cfg("resumed")))
    info = read_json(resumed / "unlearn_info.json")
    assert info["resumed_from_step"] == 8
    assert info["steps"] == straight["steps"] and info["compute_tokens"] == straight["compute_tokens"]
    _assert_same_tensors(tmp_path / "straight" / "model.safetensors", resumed / "model.safetensors")
    assert not (resumed / "trainer").exists()


def test_a_half_written_checkpoint_is_ignored(tmp_path):
    from llm_unlearn.training import CHECKPOINT_STATE, latest_checkpoint
    from llm_unlearn.files import write_json

    for step, complete in ((4, True), (8, True), (12, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x")
        if complete:
            write_json(d / CHECKPOINT_STATE.format(rank=0), {"compute_tokens": step * 100})
    path, state = latest_checkpoint(tmp_path)
    assert path == str(tmp_path / "checkpoint-8") and state == {"compute_tokens": 800}
    assert latest_checkpoint(tmp_path / "nothing") == (None, {})


def test_epoch_seeded_order_ignores_the_global_rng():
    import torch

    from llm_unlearn.seeding import epoch_seeded_sampler

    lengths = [random.Random(i).randrange(5, 40) for i in range(50)]
    s = epoch_seeded_sampler(50, seed=3, batch_size=8, lengths=lengths)
    s.set_epoch(1)
    first = list(s)
    torch.manual_seed(int(time.time()))
    torch.rand(10)
    assert list(s) == first and sorted(first) == list(range(50))
    s.set_epoch(2)
    assert list(s) != first
    plain = epoch_seeded_sampler(50, seed=3, batch_size=8)
    assert sorted(plain) == list(range(50)) and list(plain) == list(plain)


def test_a_diverging_method_is_marked_and_the_grid_goes_on(tmp_path):
    """GA at an absurd learning rate overflows to NaN/Inf: its row says so (with the step), no weights are saved,
    its evaluation is skipped, the report counts it, and the other methods' rows are complete."""
    from llm_unlearn import run_experiment

    exp = {
        **EXPERIMENT,
        "train": {**EXPERIMENT["train"], "num_train_epochs": 1, "save_steps": 0},
        "methods": ["ga", "gd"],
        "budgets": [0.5],
        "grid": {"ga": {"learning_rate": [1e30]}},
    }
    report = run_experiment(exp, output_dir=str(tmp_path))
    rows = {r["method"]: r["metrics"] for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    ga, gd = rows["ga"], rows["gd"]
    assert ga["diverged"] is True and isinstance(ga["diverged_step"], int) and ga["diverged_step"] >= 0
    assert gd["diverged"] is False and isinstance(gd["clean_accuracy"], float) and isinstance(gd["gus_z"], float)
    ga_dir = tmp_path / "seed_0" / "unlearn" / "ga_b0.5_learning_rate1e+30"
    assert (ga_dir / ".complete").is_file() and not list(ga_dir.glob("*.safetensors"))
    assert not (tmp_path / "seed_0" / "eval" / ga_dir.name / "eval_results.json").exists()
    table_row = next(line for line in report.read_text().splitlines() if line.startswith("| ga"))
    assert table_row.rstrip(" |").endswith("1/1"), table_row  # the diverged column counts the seeds that diverged


def test_a_kill_during_the_first_experiment_yaml_write_does_not_block_the_rerun(tmp_path):
    """SIGKILL between the temp file and the rename of the very first write leaves only ``.experiment.yaml.*.tmp``:
    the rerun must accept that dir as empty (a foreign file is still refused)."""
    from llm_unlearn import ConfigError, build_config
    from llm_unlearn.stages.run import ExperimentConfig, check_output_dir

    cfg = build_config(ExperimentConfig, {**EXPERIMENT, "output_dir": str(tmp_path / "out")})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".experiment.yaml.k1ll3d.tmp").write_text("seeds: [")
    check_output_dir(cfg)
    assert (tmp_path / "out" / "experiment.yaml").is_file()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        check_output_dir(build_config(ExperimentConfig, {**EXPERIMENT, "output_dir": str(tmp_path / "other")}))
