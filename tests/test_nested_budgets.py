"""Nested budgets: one unlearning run saves its model as its compute crosses each smaller budget, and that model is the
one a run with that budget ends with (bit for bit, under the constant schedule); a killed nested run resumes to the
same models; `run` plans one unlearn job per grid point only where the schedule and the method allow it, and says why
elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TINY_SHAPE
from test_resume import _assert_same_tensors, _killed_at_step

from llm_unlearn.configs import ConfigError
from llm_unlearn.files import read_json


def _cfg(initial, retrain, dataset, out, **kw):
    # 3x the gold run's compute as the budget's 100 %: budget 0.1 then buys ~4 steps of 8 examples, 0.3 ~12
    ref = 3 * read_json(Path(retrain) / "training_info.json")["compute_tokens"]
    return dict(
        model_dir=initial,
        dataset_dir=dataset,
        output_dir=str(out),
        reference_compute_tokens=ref,
        per_device_train_batch_size=8,
        progress=False,
        **kw,
    )


@pytest.mark.parametrize(
    ("method", "use_peft", "weights"),
    [
        ("ngd", True, "adapter_model.safetensors"),  # LoRA; gradient noise drawn per step
        ("scrub", False, "model.safetensors"),  # all weights; max/min epochs scheduled by step index; a teacher
    ],
)
def test_the_model_saved_at_a_budget_is_the_run_with_that_budget(
    trained_dirs, gaussian_dir, tmp_path, method, use_peft, weights
):
    from llm_unlearn.stages.unlearn import UnlearnConfig, main

    initial, retrain = trained_dirs
    common = dict(method=method, use_peft=use_peft, learning_rate=1e-3)
    nested = tmp_path / "nested"
    marks = dict(budget=0.3, save_at_budgets=[0.1, 0.2])
    main(UnlearnConfig(**_cfg(initial, retrain, gaussian_dir, nested, **marks, **common)))
    ref = _cfg(initial, retrain, gaussian_dir, nested)["reference_compute_tokens"]
    steps = []
    for f in (0.1, 0.2):
        alone = tmp_path / f"alone_{f}"
        main(UnlearnConfig(**_cfg(initial, retrain, gaussian_dir, alone, budget=f, **common)))
        snap = nested / f"at_budget_{f:g}"
        assert (snap / ".complete").is_file() and (snap / "config.yaml").is_file()
        _assert_same_tensors(alone / weights, snap / weights)
        a, s = read_json(alone / "unlearn_info.json"), read_json(snap / "unlearn_info.json")
        assert s["steps"] == a["steps"] and s["compute_tokens"] == a["compute_tokens"]
        assert s["budget"] == f and s["compute_fraction"] == pytest.approx(s["compute_tokens"] / ref)
        assert f <= s["compute_fraction"] < f + 0.03  # crossed at the end of the step that spent it
        steps.append(s["steps"])
    top = read_json(nested / "unlearn_info.json")
    assert steps[0] < steps[1] < top["steps"] and top["budget"] == 0.3
    # the snapshot's config is the config of that run: the stage reading it alone keeps it as finished
    from llm_unlearn.outputs import output_state

    snap_cfg = UnlearnConfig(**_cfg(initial, retrain, gaussian_dir, nested / "at_budget_0.1", budget=0.1, **common))
    assert output_state(snap_cfg)[0] == "current"


def test_a_killed_nested_run_resumes_to_the_same_models(trained_dirs, gaussian_dir, tmp_path):
    from llm_unlearn.stages.unlearn import UnlearnConfig, main

    initial, retrain = trained_dirs
    kw = dict(method="gd", use_peft=True, budget=0.3, save_at_budgets=[0.1, 0.2], save_steps=2)
    main(UnlearnConfig(**_cfg(initial, retrain, gaussian_dir, tmp_path / "straight", **kw)))
    straight = tmp_path / "straight"
    s1 = read_json(straight / "at_budget_0.1" / "unlearn_info.json")["steps"]
    s2 = read_json(straight / "at_budget_0.2" / "unlearn_info.json")["steps"]
    kill = s1 + 2  # past the first snapshot and its checkpoint, before the second
    assert kill < s2
    cfg = _cfg(initial, retrain, gaussian_dir, tmp_path / "resumed", **kw)
    _killed_at_step("llm_unlearn.stages.unlearn:UnlearnConfig", cfg, kill)
    resumed = tmp_path / "resumed"
    assert (resumed / "at_budget_0.1" / ".complete").is_file() and not (resumed / "at_budget_0.2").exists()
    main(UnlearnConfig(**cfg))
    assert read_json(resumed / "unlearn_info.json")["resumed_from_step"] is not None
    for d in ("", "at_budget_0.1", "at_budget_0.2"):
        _assert_same_tensors(straight / d / "adapter_model.safetensors", resumed / d / "adapter_model.safetensors")
    assert not list(resumed.glob(".*.tmp")) and not (resumed / "trainer").exists()


def test_a_resume_past_a_budget_whose_model_is_gone_is_refused(trained_dirs, gaussian_dir, tmp_path):
    import shutil

    from llm_unlearn.harness import StageFault
    from llm_unlearn.stages.unlearn import UnlearnConfig, main

    initial, retrain = trained_dirs
    cfg = _cfg(initial, retrain, gaussian_dir, tmp_path / "r", method="gd", budget=0.3, save_at_budgets=[0.1])
    cfg["save_steps"] = 2
    straight = tmp_path / "s"
    main(UnlearnConfig(**{**cfg, "output_dir": str(straight)}))
    kill = read_json(straight / "at_budget_0.1" / "unlearn_info.json")["steps"] + 2
    _killed_at_step("llm_unlearn.stages.unlearn:UnlearnConfig", cfg, kill)
    shutil.rmtree(tmp_path / "r" / "at_budget_0.1")
    with pytest.raises(StageFault, match=r"budgets \[0.1\] whose saved models are gone"):
        main(UnlearnConfig(**cfg))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(save_at_budgets=[0.1, 0.3]), r"save_at_budgets must be distinct fractions in \(0, budget=0.2\)"),
        (dict(save_at_budgets=[0.1, 0.1]), "must be distinct"),
        (dict(save_at_budgets=[0.1], lr_scheduler_type="linear"), "lr_scheduler_type linear .* follows the total"),
        (dict(save_at_budgets=[0.1], warmup_ratio=0.1), "warmup_ratio 0.1 follows the total budget"),
        (dict(save_at_budgets=[0.1], method="ssd", use_peft=False), "ssd's result depends on its total budget"),
    ],
)
def test_save_at_budgets_is_refused_where_the_models_would_differ(kw, message):
    from llm_unlearn.stages.unlearn import UnlearnConfig

    with pytest.raises(ConfigError, match=message):
        UnlearnConfig(budget=0.2, **kw).validate()


EXPERIMENT = {
    "seeds": [0],
    "tiny": dict(TINY_SHAPE),
    "poison": {"attack": "gaussian", "poison_fraction": 0.1, "embedded_n_train": 80, "embedded_n_test": 30},
    "methods": ["gd", "ssd"],
    "budgets": [0.1, 0.05, 0.2],
    "grid": {"gd": {"learning_rate": [1e-3, 1e-4]}},
    "diagnostics": False,
}


def _experiment(tmp_path, **kw):
    from llm_unlearn.configs import load_config
    from llm_unlearn.stages.run import ExperimentConfig

    cfg = load_config(ExperimentConfig, {**EXPERIMENT, "output_dir": str(tmp_path), **kw})
    cfg.validate()
    return cfg


def test_run_plans_one_unlearn_job_per_grid_point_and_says_why_not_elsewhere(tmp_path):
    from llm_unlearn.protocol import nesting_notes
    from llm_unlearn.stages.run import UnlearnConfig, plan

    jobs = {j.name: j for j in plan(_experiment(tmp_path))}
    unlearn = sorted(n for n in jobs if "/unlearn/" in n)
    # gd: one run per learning rate at the largest budget; ssd: every budget alone
    assert unlearn == sorted(
        ["s0/unlearn/gd_b0.2_learning_rate0.001", "s0/unlearn/gd_b0.2_learning_rate0.0001"]
        + [f"s0/unlearn/ssd_b{b:g}" for b in (0.1, 0.05, 0.2)]
    )
    top = jobs["s0/unlearn/gd_b0.2_learning_rate0.0001"]
    assert top.config.save_at_budgets == [0.05, 0.1] and top.config.learning_rate == 1e-4
    ev = jobs["s0/eval/gd_b0.05_learning_rate0.0001"]
    assert ev.deps == ["s0/unlearn/gd_b0.2_learning_rate0.0001"]
    assert ev.config.adapter_dir == str(tmp_path / "seed_0/unlearn/gd_b0.2_learning_rate0.0001/at_budget_0.05")
    assert len([n for n in jobs if "/eval/" in n]) == 2 + 2 * 3 + 3
    notes = " ".join(nesting_notes(_experiment(tmp_path), UnlearnConfig))
    assert "nested for gd" in notes and "ssd: each budget is a run of its own, because ssd's result" in notes

    linear = _experiment(tmp_path, unlearn={"lr_scheduler_type": "linear"})
    assert sum("/unlearn/" in j.name for j in plan(linear)) == 9
    assert "follows the total budget" in " ".join(nesting_notes(linear, UnlearnConfig))
    separate = _experiment(tmp_path, nested_budgets=False)
    assert sum("/unlearn/" in j.name for j in plan(separate)) == 9
    with pytest.raises(ConfigError, match="save_at_budgets"):
        _experiment(tmp_path, unlearn={"save_at_budgets": [0.1]})


def test_a_nested_grid_reports_a_row_per_budget_within_it(tmp_path):
    from llm_unlearn import run_experiment

    exp = {
        **EXPERIMENT,
        "methods": ["gd", "ga"],
        "grid": {},
        "train": {"num_train_epochs": 2, "per_device_train_batch_size": 16, "progress": False},
        "unlearn": {"per_device_train_batch_size": 8, "progress": False},
        "eval": {"fresh_noise_draws": 3},
        "workers": 2,
    }
    out = tmp_path / "run"
    run_experiment(exp, output_dir=str(out))
    rows = read_json(out / "results.json")["rows"]
    got = {(r["method"], r["budget"]): r["metrics"] for r in rows if r["budget"] is not None}
    assert set(got) == {(m, b) for m in ("gd", "ga") for b in (0.05, 0.1, 0.2)}
    for (m, b), metrics in got.items():
        assert b <= metrics["compute_fraction"] < b + 0.05, (m, b, metrics["compute_fraction"])
        assert "gus_z" in metrics
    seed = out / "seed_0" / "unlearn"
    assert sorted(p.name for p in seed.iterdir() if p.is_dir()) == ["ga_b0.2", "gd_b0.2"]
    assert "Budgets are nested for ga, gd" in (out / "report.md").read_text()
    from llm_unlearn.hub import locate

    pushed = locate(seed / "gd_b0.2" / "at_budget_0.05")  # `llm-unlearn push` of a nested budget's model
    assert (pushed.variant, pushed.seed) == ("gd_b0.05", 0)
    # rerunning the same command keeps everything (the snapshots are finished outputs their evaluations recorded)
    before = {p: p.read_text() for p in out.rglob(".complete")}
    run_experiment(exp, output_dir=str(tmp_path / "run"))
    assert {p: p.read_text() for p in out.rglob(".complete")} == before
