"""A tiny end-to-end `run` (one seed, seconds per stage) through the Python API and the CLI's error path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llm_unlearn.methods import METHODS
from helpers import tiny_experiment

TINY_EXPERIMENT = tiny_experiment(
    methods=sorted(METHODS),
    grid={"gd": {"learning_rate": [1e-3, 3e-3]}},  # two grid points: the report selects one
    diagnostics=True,
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from llm_unlearn import run_experiment

    out = tmp_path_factory.mktemp("run")
    report = run_experiment(TINY_EXPERIMENT, output_dir=str(out))
    assert report == out / "report.md"
    return out


def test_results_json_schema(run_dir):
    res = json.loads((run_dir / "results.json").read_text())
    assert set(res) == {"config", "environment", "rows"}
    assert res["environment"]["seeds"] == [0]
    assert res["environment"]["packages"]["torch"].startswith("2.13.0")
    rows = res["rows"]
    assert {r["method"] for r in rows} == {"initial", "retrain", *METHODS}
    for r in rows:
        assert set(r) == {
            "attack",
            "method",
            "budget",
            "variant",
            "seed",
            "metrics",
            "selected",
            "within_tolerance",
            "relearn_steps",
        }
        assert r["relearn_steps"] == 0  # no relearn section: every row is a model as trained or unlearned
        assert r["attack"] == "gaussian" and r["seed"] == 0
        assert (r["budget"] is None) == (r["method"] in ("initial", "retrain"))
        m = r["metrics"]
        for key in ("compute_fraction", "wall_seconds", "diverged", "gap_closed"):
            assert key in m
        if m["diverged"]:
            continue
        for key in (
            "clean_accuracy",
            "gus_mean",
            "gus_z",
            "gus_p",
            "gus_auc",
            "gus_tpr_at_1pct_fpr",
            "fresh_gus_mean",
            "fresh_gus_z",
            "mia_auc",
            "mia_tpr_at_1pct_fpr",
        ):
            assert isinstance(m[key], float), key
        assert 0.0 <= m["clean_accuracy"] <= 1.0
        assert m["n_poison"] == 8 and m["n_fresh"] == 24
        if r["budget"] is not None:  # section 6 diagnostics of every unlearned model
            assert m["shift_norm_updated"] > 0 and -1 <= m["shift_cosine"] <= 1 and m["dist_ratio"] > 0
    gd = [r for r in rows if r["method"] == "gd"]
    assert sorted(r["variant"] for r in gd) == ["gd_b0.2_learning_rate0.001", "gd_b0.2_learning_rate0.003"]
    assert sorted(r["metrics"]["overrides"]["learning_rate"] for r in gd) == [1e-3, 3e-3]
    assert sum(r["selected"] for r in gd) == 1  # one grid point per method and budget
    assert all(r["selected"] for r in rows if r["method"] not in ("gd", "initial", "retrain"))
    init = next(r for r in rows if r["method"] == "initial")["metrics"]
    retr = next(r for r in rows if r["method"] == "retrain")["metrics"]
    assert init["gap_closed"] == 0.0 and retr["gap_closed"] == 1.0
    for r in rows:
        if r["budget"] is not None:
            # Stops within one step of the budget. A step of this tiny run costs ~0.1-0.2 of the budget unit (SSD's,
            # a batch of the training set plus a forget batch, ~0.2): bound the overshoot by its mean step cost.
            spent, steps = r["metrics"]["compute_fraction"], r["metrics"]["steps"]
            assert 0.2 <= spent < 0.2 + 1.5 * spent / steps, (r["variant"], spent, steps)


def test_report_and_plots(run_dir):
    text = (run_dir / "report.md").read_text()
    assert "pooled z" in text and "neggrad_plus" in text
    assert "Every grid point" in text and "section 6 diagnostics" in text
    for png in ("gap_closed.png", "gus_hist.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_stage_wrote_config_and_safetensors(run_dir):
    seed = run_dir / "seed_0"
    for stage in (
        "poison",
        "initial",
        "retrain",
        "unlearn/npo_b0.2",
        "eval/initial",
        "eval/npo_b0.2",
        "diag/npo_b0.2",
    ):
        assert (seed / stage / "config.yaml").is_file(), stage
        assert (seed / stage / ".complete").is_file(), stage
    assert (seed / "initial" / "model.safetensors").is_file()
    assert (seed / "unlearn" / "npo_b0.2" / "adapter_model.safetensors").is_file()
    assert not list(run_dir.rglob("*.bin")) and not list(run_dir.rglob("*.pt"))


def test_rerun_skips_complete_stages(run_dir):
    from llm_unlearn import run_experiment

    model = run_dir / "seed_0" / "initial" / "model.safetensors"
    before = model.stat().st_mtime_ns
    run_experiment(TINY_EXPERIMENT, output_dir=str(run_dir))
    assert model.stat().st_mtime_ns == before


def test_other_experiment_in_same_dir_is_refused(run_dir):
    from llm_unlearn import ConfigError, run_experiment

    other = {**TINY_EXPERIMENT, "seeds": [1]}
    with pytest.raises(ConfigError, match="holds a different experiment"):
        run_experiment(other, output_dir=str(run_dir))


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--methods", "[gd, bogus]"], "unknown method 'bogus'; choose from"),
        (["run", "--poison.poison_fraction", "1.5"], "poison_fraction must be in (0, 1)"),
        (["poison", "--attack", "label_flip"], "unknown attack 'label_flip'"),
        (["eval", "--backend", "tensorrt"], "unknown generation backend"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ],
)
def test_cli_errors_exit_2_without_traceback(tmp_path, args, message):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "llm_unlearn", *args, "--output_dir", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
