"""Hyper-parameter grids: expansion into variants, validation before any work, and the report's selection rule."""

from __future__ import annotations

import pytest

from llm_unlearn.configs import ConfigError, build_config
from llm_unlearn.stages.report import select_variants
from llm_unlearn.stages.run import RUN_OWNED, ExperimentConfig, plan, unlearn_variants
from llm_unlearn.stages.unlearn import UnlearnConfig


def _cfg(**kw):
    return build_config(ExperimentConfig, {"output_dir": "/tmp/unused", **kw})


def test_grid_expands_methods_x_budgets_x_points():
    cfg = _cfg(
        methods=["gd", "npo"],
        grid={"npo": {"learning_rate": [1e-4, "1e-3"], "beta": [0.1, 0.5]}},  # "1e-3": YAML 1.1 reads it as a str
        budgets=[0.05, 0.1],
    )
    vs = unlearn_variants(cfg, UnlearnConfig, RUN_OWNED)
    assert len(vs) == 2 + 2 * 2 * 2
    assert [v.model_id for v in vs[:2]] == ["gd_b0.05", "gd_b0.1"]
    npo = [v for v in vs if v.method == "npo"]
    assert npo[0].model_id == "npo_b0.05_learning_rate0.0001_beta0.1"
    assert {v.overrides["learning_rate"] for v in npo} == {1e-4, 1e-3}  # coerced to float
    assert {v.method_args["beta"] for v in npo} == {0.1, 0.5}
    assert all("learning_rate" not in v.method_args and "beta" not in v.overrides for v in npo)
    assert len({v.model_id for v in vs}) == len(vs)


def test_plan_applies_grid_points_to_unlearn_jobs():
    cfg = _cfg(seeds=[0], methods=["npo"], grid={"npo": {"learning_rate": [1e-4, 1e-3]}}, budgets=[0.1])
    jobs = {j.name: j for j in plan(cfg)}
    a = jobs["s0/unlearn/npo_b0.1_learning_rate0.0001"].config
    b = jobs["s0/unlearn/npo_b0.1_learning_rate0.001"].config
    assert (a.learning_rate, b.learning_rate) == (1e-4, 1e-3)
    assert a.output_dir.endswith("unlearn/npo_b0.1_learning_rate0.0001")
    assert "s0/diag/npo_b0.1_learning_rate0.001" in jobs and "s0/eval/npo_b0.1_learning_rate0.001" in jobs
    assert not any("/diag/" in n for n in {j.name for j in plan(_cfg(seeds=[0], diagnostics=False))})


@pytest.mark.parametrize(
    "grid, message",
    [
        ({"npo": {"lr": [1e-3]}}, "grid.npo.lr: unknown key; choose from the unlearn keys"),
        ({"npo": {"learning_rate": []}}, "grid.npo.learning_rate: expected a non-empty list"),
        ({"npo": {"learning_rate": 1e-3}}, "grid.npo.learning_rate: expected a non-empty list"),
        ({"npo": {"beta": ["high"]}}, "grid.npo.beta: expected a number, got 'high'"),
        ({"npo": {"beta": [0.1, 0.1]}}, "values must be distinct"),
        ({"npo": {"learning_rate": [-1.0]}}, "learning_rate must be a positive number"),
        ({"npo": {"method_args": [{}]}}, "grid.npo.method_args: unknown key"),  # run owns it
        ({"gdd": {"learning_rate": [1e-3]}}, "grid.gdd: 'gdd' is not in methods=['npo'] and is no registered method"),
        ({"npo": ["learning_rate"]}, "grid.npo: expected a mapping"),
    ],
)
def test_bad_grids_are_rejected_before_work(grid, message):
    with pytest.raises(ConfigError) as e:
        _cfg(methods=["npo"], grid=grid)
    assert message in str(e.value)


def _row(method, budget, variant, seed, acc, gap, diverged=False):
    return {
        "method": method,
        "budget": budget,
        "variant": variant,
        "seed": seed,
        "metrics": {"clean_accuracy": acc, "gap_closed": gap, "diverged": diverged},
    }


def test_selection_picks_best_gap_within_accuracy_tolerance():
    rows = [_row("initial", None, "initial", s, 0.90, 0.0) for s in (0, 1)]
    rows += [_row("ga", 0.1, "ga_lr_small", s, 0.89, 0.2) for s in (0, 1)]  # 1 point lost: eligible
    rows += [_row("ga", 0.1, "ga_lr_mid", s, acc, 0.5) for s, acc in ((0, 0.89), (1, 0.87))]  # mean 0.88: eligible
    rows += [_row("ga", 0.1, "ga_lr_big", s, 0.50, 1.0) for s in (0, 1)]  # best gap, accuracy collapsed
    chosen = select_variants(rows, tolerance=0.02)
    assert chosen[("ga", 0.1)] == ("ga_lr_mid", True)
    assert [r["variant"] for r in rows if r.get("selected")] == ["ga_lr_mid", "ga_lr_mid"]
    # a tighter tolerance excludes the mid point; a looser one admits the collapsed one
    assert select_variants(rows, tolerance=0.01)[("ga", 0.1)] == ("ga_lr_small", True)
    assert select_variants(rows, tolerance=0.5)[("ga", 0.1)] == ("ga_lr_big", True)


def test_selection_excludes_diverged_and_flags_when_nothing_qualifies():
    rows = [_row("initial", None, "initial", 0, 0.90, 0.0)]
    rows += [_row("npo", 0.1, "npo_a", 0, None, None, diverged=True)]
    rows += [_row("npo", 0.1, "npo_b", 0, 0.60, 0.7)]
    assert select_variants(rows, tolerance=0.02)[("npo", 0.1)] == ("npo_b", False)
    flagged = next(r for r in rows if r["variant"] == "npo_b")
    assert flagged["selected"] and flagged["within_tolerance"] is False
