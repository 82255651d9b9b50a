"""Issue 13's faults during and after work (part of the fault catalogue, README "Reliability"), on one small real
run (the tiny model, one seed, seconds a stage) that each test copies:

- single-stage commands compare a finished output's config with theirs: refuse (exit 2, naming ``--overwrite``) or,
  with ``--overwrite true``, redo it saying so (case 1);
- a removed upstream ``.complete`` redoes its dependents (case 4), by content: markers record their inputs' stamps;
- a corrupted or emptied JSON file: ``run`` redoes that stage with a warning naming it, ``report`` names it and
  exits 2 (case 5);
- disk full during a stage: one line naming the path and errno, exit 1 (exit 2 before work), and the rerun
  resumes (case 6); a SIGKILLed stage resumes from where it was;
- degenerate experiments: the report's verdict says there is no poison effect to unlearn (case 8);
- a killed report's temporary files are removed by the next report (case 9).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import tiny_experiment

EXPERIMENT = tiny_experiment(diagnostics=True)
SEED = "seed_0"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    from llm_unlearn import run_experiment

    out = tmp_path_factory.mktemp("faults") / "run"
    run_experiment(EXPERIMENT, output_dir=str(out))
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A copy of the finished run (the copy's stage configs still name the original's paths, which the markers
    resolve: a moved run dir is the same run)."""
    dest = tmp_path / "run"
    shutil.copytree(finished_run, dest)
    return dest


def _cli(args, capsys) -> tuple[int, str]:
    from llm_unlearn.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("llm-unlearn ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _stamp(d: Path) -> str:
    return json.loads((d / ".complete").read_text())["stamp"]


# --- case 1: single stages and finished outputs of another config ---


def test_single_stage_refuses_a_finished_output_of_another_config(run_copy, capsys, caplog):
    poison = run_copy / SEED / "poison"
    before = _stamp(poison)
    # The same config (its saved config.yaml as the command's config): kept, nothing redone.
    rc, err = _cli(["poison", "--config", poison / "config.yaml", "--output_dir", poison], capsys)
    assert rc == 0, err
    assert _stamp(poison) == before
    # Another config: refused, naming the difference and --overwrite; nothing touched.
    rc, err = _cli(
        ["poison", "--config", poison / "config.yaml", "--output_dir", poison, "--poison_fraction", "0.5"], capsys
    )
    line = _one_line(err)
    assert rc == 2 and "holds a finished poison output made with another config" in line
    assert "poison_fraction: 0.1 -> 0.5" in line and "--overwrite true" in line
    assert _stamp(poison) == before
    # --overwrite true: redone, saying so.
    with caplog.at_level(logging.WARNING):
        rc, err = _cli(
            ["poison", "--config", poison / "config.yaml", "--output_dir", poison]
            + ["--poison_fraction", "0.5", "--overwrite", "true"],
            capsys,
        )
    assert rc == 0, err
    assert "poison_fraction: 0.1 -> 0.5; redoing the poison stage" in caplog.text
    assert json.loads((poison / "manifest.json").read_text())["poison_fraction"] == 0.5
    assert _stamp(poison) != before


def test_unlearn_and_eval_refuse_other_method_and_other_model(run_copy, capsys):
    unlearn = run_copy / SEED / "unlearn" / "gd_b0.2"
    rc, err = _cli(["unlearn", "--config", unlearn / "config.yaml", "--output_dir", unlearn, "--method", "ga"], capsys)
    line = _one_line(err)
    assert rc == 2 and "method: 'gd' -> 'ga'" in line and "--overwrite" in line
    assert (unlearn / "adapter_model.safetensors").is_file() and "gd" in (unlearn / "config.yaml").read_text()

    ev = run_copy / SEED / "eval" / "initial"
    other = run_copy / SEED / "retrain"
    rc, err = _cli(["eval", "--config", ev / "config.yaml", "--output_dir", ev, "--model_dir", other], capsys)
    line = _one_line(err)
    assert rc == 2 and "made with another config (model_dir: " in line and str(other) in line
    assert "--overwrite" in line


# --- case 4: dependencies by content ---


def test_removed_upstream_marker_redoes_its_dependents(run_copy, capsys, caplog):
    from llm_unlearn import run_experiment

    d = run_copy / SEED
    stages = ["base", "poison", "initial", "retrain", "eval/initial", "eval/retrain", "unlearn/gd_b0.2"]
    stages += ["eval/gd_b0.2", "diag/gd_b0.2"]
    before = {s: _stamp(d / s) for s in stages}
    (d / "initial" / ".complete").unlink()
    # A single stage that reads the unfinished input is refused before any work ...
    ev = d / "eval" / "initial"
    rc, err = _cli(["eval", "--config", ev / "config.yaml", "--output_dir", ev, "--model_dir", d / "initial"], capsys)
    assert rc == 2 and "is an unfinished stage output (no .complete marker" in _one_line(err)
    # ... and `run` redoes it and everything built on it, and nothing else.
    with caplog.at_level(logging.WARNING):
        run_experiment(EXPERIMENT, output_dir=str(run_copy))
    after = {s: _stamp(d / s) for s in stages}
    redone = sorted(s for s in stages if after[s] != before[s])
    assert redone == sorted(["initial", "eval/initial", "unlearn/gd_b0.2", "eval/gd_b0.2", "diag/gd_b0.2"])
    assert f"e0/s0/eval/initial: its input model_dir {d / 'initial'} has no .complete marker" in caplog.text


def test_redone_input_makes_a_single_stage_redo(run_copy, capsys, caplog):
    """A stage whose input was redone since it ran (new stamp at the same path) is redone, saying so."""
    d = run_copy / SEED
    ev = d / "eval" / "retrain"
    args = ["eval", "--config", ev / "config.yaml", "--output_dir", ev, "--model_dir", d / "retrain"]
    args += ["--dataset_dir", d / "poison"]
    assert _cli(args, capsys)[0] == 0  # first from the copy's own inputs: recorded with the copy's paths
    before = _stamp(ev)
    assert _cli(args, capsys)[0] == 0 and _stamp(ev) == before  # unchanged: kept
    from llm_unlearn.files import mark_complete

    marker = json.loads((d / "retrain" / ".complete").read_text())
    mark_complete(d / "retrain", {k: v for k, v in marker.items() if k not in ("stamp", "finished")})  # "redone"
    with caplog.at_level(logging.WARNING):
        rc, err = _cli(args, capsys)
    assert rc == 0, err
    assert _stamp(ev) != before
    assert f"its input model_dir {d / 'retrain'} was redone since it ran; redoing the eval stage" in caplog.text


# --- case 5: corrupted and emptied records ---


def test_corrupted_json_report_names_it_and_run_redoes_it(run_copy, capsys, caplog):
    from llm_unlearn import run_experiment

    bad = run_copy / SEED / "eval" / "initial" / "eval_results.json"
    bad.write_text(bad.read_text()[:40])  # a truncated write
    rc, err = _cli(["report", "--run_dir", run_copy], capsys)
    line = _one_line(err)
    assert rc == 2 and f"{bad} does not parse" in line and "rerun `llm-unlearn run`" in line
    with caplog.at_level(logging.WARNING):
        run_experiment(EXPERIMENT, output_dir=str(run_copy))
    assert f"{bad} does not parse" in caplog.text and "redoing it" in caplog.text
    assert "clean_accuracy" in json.loads(bad.read_text())
    assert _cli(["report", "--run_dir", run_copy], capsys)[0] == 0


def test_emptied_json_report_names_it_and_run_redoes_it(run_copy, capsys, caplog):
    from llm_unlearn import run_experiment

    bad = run_copy / SEED / "eval" / "gd_b0.2" / "eval_results.json"
    bad.write_text("{}")  # shown as "–" without a word before issue 13
    rc, err = _cli(["report", "--run_dir", run_copy], capsys)
    line = _one_line(err)
    assert rc == 2 and f"{bad} holds no 'clean_accuracy'" in line
    with caplog.at_level(logging.WARNING):
        run_experiment(EXPERIMENT, output_dir=str(run_copy))
    assert f"{bad} was changed after its stage finished" in caplog.text
    assert "clean_accuracy" in json.loads(bad.read_text())


# --- case 6: disk full and other OSErrors ---


def _full_disk(monkeypatch, target):
    """Make safetensors' writes fail as on a full disk (the error type and text safetensors raises)."""
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    for module, name in target:
        monkeypatch.setattr(module, name, full)


def test_disk_full_during_run_is_one_line_exit_1_and_the_rerun_resumes(tmp_path, capsys, monkeypatch):
    import transformers.modeling_utils as mu

    out = tmp_path / "run"
    config = tmp_path / "exp.yaml"
    import yaml

    config.write_text(yaml.safe_dump(EXPERIMENT))
    _full_disk(monkeypatch, [(mu, "safe_save_file")])
    rc, err = _cli(["run", "--config", config, "--output_dir", out], capsys)
    line = _one_line(err)
    assert rc == 1 and line.startswith("llm-unlearn run: fault: ") and "[Errno 28] No space left on device" in line
    assert str(out / SEED) in line  # names the stage dir that could not be written
    monkeypatch.undo()  # space freed
    rc, err = _cli(["run", "--config", config, "--output_dir", out], capsys)
    assert rc == 0, err[-3000:]
    assert (out / "results.json").is_file() and not list(out.rglob(".weights.tmp"))
    assert (out / SEED / "poison" / ".complete").is_file()


def test_oserror_writing_a_record_names_path_and_errno(run_copy, capsys, monkeypatch):
    import llm_unlearn.files as utils

    d = run_copy / SEED
    ev = d / "eval" / "retrain"
    shutil.rmtree(ev)
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        if str(dst).endswith("eval_results.json"):
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(utils.os, "replace", replace)
    args = ["eval", "--model_dir", d / "retrain", "--dataset_dir", d / "poison", "--output_dir", ev]
    args += ["--fresh_noise_draws", "3"]
    rc, err = _cli(args, capsys)
    line = _one_line(err)
    assert rc == 1 and f"{ev / 'eval_results.json'}: [Errno 5] Input/output error" in line
    assert not (ev / ".complete").exists()
    monkeypatch.undo()
    rc, err = _cli(args, capsys)
    assert rc == 0 and (ev / ".complete").is_file(), err


def test_oserror_before_work_is_exit_2(tmp_path, capsys, monkeypatch):
    import llm_unlearn.locks as locks

    real_open = os.open

    def full_open(path, *a, **k):
        if str(path).endswith(".lock"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(locks.os, "open", full_open)
    out = tmp_path / "p"
    rc, err = _cli(["poison", "--output_dir", out], capsys)
    line = _one_line(err)
    assert rc == 2 and f"{out / '.lock'}: cannot create the lock file: [Errno 28] No space left on device" in line
    assert not out.exists()


def test_sigkilled_stage_resumes_on_the_next_start(finished_run, tmp_path):
    """A stage killed mid-work leaves its lock file, its started-config and temporaries; the same command resumes."""
    d = finished_run / SEED
    out = tmp_path / "retrain"
    cmd = [sys.executable, "-m", "llm_unlearn", "train", "--config", str(d / "retrain" / "config.yaml")]
    cmd += ["--output_dir", str(out), "--num_train_epochs", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / ".started.yaml").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / ".lock").is_file() and not (out / ".complete").exists()
    (out / ".training_info.json.abcd1234.tmp").write_text("{")  # as a kill mid-write leaves it
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / ".complete").is_file() and (out / "model.safetensors").is_file()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".complete"]


# --- case 8: no poison effect to unlearn ---


def test_no_poison_effect_is_the_verdict_instead_of_a_number(run_copy, capsys):
    from llm_unlearn.protocol import NO_EFFECT

    for name, z in (("initial", -0.6), ("retrain", 0.3)):  # an initial model the Gaussian test cannot tell apart
        p = run_copy / SEED / "eval" / name / "eval_results.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), "gus_z": z}))
    assert _cli(["report", "--run_dir", run_copy], capsys)[0] == 0
    text = (run_copy / "report.md").read_text()
    verdict = text.split("## Verdict: is there a poison effect to unlearn?")[1].split("## Mean")[0]
    assert f"seed 0: **{NO_EFFECT}** (the initial model's Gaussian test gives z = -0.60 (|z| < 2)" in verdict
    assert f"- gd, budget 0.2: {NO_EFFECT}." in verdict  # the words, not a gap-closed number
    table = text.split("## Mean")[1].split("\n## ")[0]
    gd_rows = [line for line in table.splitlines() if line.startswith("| gd ") or line.startswith("| **gd")]
    assert gd_rows and all("not meaningful: no poison effect" in line for line in gd_rows)  # not a number there either
    rows = json.loads((run_copy / "results.json").read_text())["rows"]
    assert all(r["metrics"]["poison_effect"] is False for r in rows)
    assert all(r["metrics"]["gap_closed_note"] == NO_EFFECT for r in rows)


@pytest.mark.parametrize(
    "metric, initial, gold, flagged",
    [
        ("gus_mean", {"gus_z": -1.9}, {"gus_z": 0.0}, True),  # |z_initial| < 2
        ("gus_mean", {"gus_z": -3.0}, {"gus_z": -1.5}, True),  # |z_initial - z_gold| < 2
        ("gus_mean", {"gus_z": -4.38}, {"gus_z": -0.27}, False),  # the main job's seed 0 (2026-12-04)
        ("gus_mean", {"gus_z": -3.47}, {"gus_z": -0.86}, False),  # the main job's seed 1 (2026-12-04)
        ("asr", {"asr": 0.3}, {"asr": 0.15}, True),
        ("asr", {"asr": 0.905}, {"asr": 0.095}, False),  # the main job's backdoor seed 2
        ("clean_accuracy", {"clean_accuracy": 0.93}, {"clean_accuracy": 0.95}, True),
        ("clean_accuracy", {"clean_accuracy": 0.833}, {"clean_accuracy": 0.967}, False),  # gradient canceling
        ("poison_success", {"poison_success": 1.0}, {"poison_success": 0.0}, False),
    ],
)
def test_poison_effect_thresholds(metric, initial, gold, flagged):
    from llm_unlearn.protocol import poison_effect_problem

    assert (poison_effect_problem(metric, initial, gold) is not None) == flagged


def test_no_verdict_section_when_every_seed_has_an_effect(run_copy, capsys):
    for name, z in (("initial", -6.0), ("retrain", 0.1)):
        p = run_copy / SEED / "eval" / name / "eval_results.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), "gus_z": z}))
    assert _cli(["report", "--run_dir", run_copy], capsys)[0] == 0
    assert "Verdict" not in (run_copy / "report.md").read_text()
    rows = json.loads((run_copy / "results.json").read_text())["rows"]
    assert all(r["metrics"]["poison_effect"] is True and "gap_closed_note" not in r["metrics"] for r in rows)


# --- case 9: a killed report's temporary files ---


def test_report_removes_what_a_killed_report_left(run_copy, capsys):
    leftovers = [run_copy / ".gap_closed.png.k1ll3d.tmp", run_copy / ".results.json.x7.tmp"]
    for p in leftovers:
        p.write_bytes(b"half")
    assert _cli(["report", "--run_dir", run_copy], capsys)[0] == 0
    assert not any(p.exists() for p in leftovers)
    assert not list(run_copy.glob(".*.tmp")) and not (run_copy / ".lock").exists()
