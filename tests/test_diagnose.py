"""Section 6 diagnostics: shift norms/cosine on hand-made weights, the orthogonal share, the exact linear toy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llm_unlearn.metrics.shift import orthogonal_share, shift_diagnostics, span_projector
from llm_unlearn.stages.diagnose import DiagnoseConfig, format_toy, linear_toy


def _w(*vals):
    return {"a": torch.tensor(vals[:2], dtype=torch.float32), "b": torch.tensor([vals[2:]], dtype=torch.float32)}


def test_shift_halfway_to_retrain():
    init, retrain = _w(0, 0, 0, 0), _w(3, 0, 0, 4)  # ||delta|| = 5
    upd = _w(1.5, 0, 0, 2)
    d = shift_diagnostics(init, retrain, upd)
    assert d["shift_norm_retrain"] == pytest.approx(5.0)
    assert d["shift_norm_updated"] == pytest.approx(2.5)
    assert d["shift_ratio"] == pytest.approx(0.5)
    assert d["shift_cosine"] == pytest.approx(1.0)
    assert d["dist_to_retrain"] == pytest.approx(2.5)
    assert d["dist_ratio"] == pytest.approx(0.5)
    assert d["n_params"] == 4


def test_shift_orthogonal_and_opposite():
    init, retrain = _w(1, 1, 1, 1), _w(2, 1, 1, 1)
    orth = shift_diagnostics(init, retrain, _w(1, 3, 1, 1))
    assert orth["shift_cosine"] == pytest.approx(0.0)
    assert orth["dist_to_retrain"] == pytest.approx(math.sqrt(1 + 4))
    opposite = shift_diagnostics(init, retrain, _w(0, 1, 1, 1))
    assert opposite["shift_cosine"] == pytest.approx(-1.0)
    assert opposite["dist_ratio"] == pytest.approx(2.0)
    unchanged = shift_diagnostics(init, retrain, init)
    assert unchanged["shift_norm_updated"] == 0 and unchanged["shift_cosine"] is None
    assert unchanged["dist_ratio"] == pytest.approx(1.0)


def test_shift_rejects_mismatched_models():
    with pytest.raises(ValueError, match="shapes"):
        shift_diagnostics(_w(0, 0, 0, 0), _w(0, 0, 0, 0), {"a": torch.zeros(3), "b": torch.zeros(1, 2)})
    with pytest.raises(ValueError, match="share no"):
        shift_diagnostics({"x": torch.zeros(2)}, {"y": torch.zeros(2)}, {"x": torch.zeros(2)})


def test_orthogonal_share_and_projector():
    rows = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])  # spans the x-y plane
    P = span_projector(rows)
    assert np.allclose(P, np.diag([1.0, 1.0, 0.0]))
    assert orthogonal_share(np.array([2.0, -1.0, 0.0]), rows) == pytest.approx(0.0)
    assert orthogonal_share(np.array([0.0, 0.0, 5.0]), rows) == pytest.approx(1.0)
    assert orthogonal_share(np.array([3.0, 0.0, 4.0]), rows) == pytest.approx(0.8)


def test_linear_toy_gd_on_retain_leaves_the_orthogonal_part_unchanged():
    res = linear_toy(DiagnoseConfig(toy="linear"))
    assert res["orthogonal_share"] > 0.5  # the poisons mostly shift theta outside the retain row space
    gd = res["methods"]["gd"]
    # GD moved theta (its gradients are not zero: clean + poison rows over-determine theta_initial) ...
    assert gd["dist_to_retrain"] != pytest.approx(res["shift_norm"], rel=1e-6)
    # ... but not the component no retain gradient can reach.
    assert gd["orthogonal_residual_after"] == pytest.approx(gd["orthogonal_residual_before"], rel=1e-9)
    # Forget gradients do reach it.
    npp = res["methods"]["neggrad_plus"]
    assert abs(npp["orthogonal_residual_after"] - npp["orthogonal_residual_before"]) > 1e-4
    assert "share orthogonal" in format_toy(res)


def test_linear_toy_gd_from_a_perturbed_start():
    """Another size and seed, with enough steps for GD to fit the retain set: the orthogonal part still never moves."""
    cfg = DiagnoseConfig(toy="linear", dim=30, n_retain=20, n_poison=5, steps=500, seed=3)
    res = linear_toy(cfg)
    assert res["methods"]["gd"]["orthogonal_residual_after"] == pytest.approx(
        res["methods"]["gd"]["orthogonal_residual_before"], rel=1e-9
    )
    # and GD fits the retain set (the part it can reach), so the retain loss goes down to ~0
    assert res["methods"]["gd"]["retain_mse"] < 1e-3


def test_diagnose_cli_toy(capsys):
    from llm_unlearn.cli import main

    assert main(["diagnose", "--toy", "linear", "--dim", "20", "--n_retain", "10", "--n_poison", "4"]) == 0
    assert "gd" in capsys.readouterr().out
    assert main(["diagnose", "--toy", "quadratic"]) == 2
    assert main(["diagnose"]) == 2  # neither a toy nor model dirs


def test_model_diagnostics_on_trained_models(trained_dirs, tmp_path):
    from llm_unlearn.stages.diagnose import main

    initial, retrain = trained_dirs
    same = main(
        DiagnoseConfig(initial_dir=initial, retrain_dir=retrain, model_dir=initial, output_dir=str(tmp_path / "a"))
    )
    assert same["shift_norm_updated"] == 0 and same["dist_ratio"] == pytest.approx(1.0)
    assert same["shift_norm_retrain"] > 0
    gold = main(
        DiagnoseConfig(initial_dir=initial, retrain_dir=retrain, model_dir=retrain, output_dir=str(tmp_path / "b"))
    )
    assert gold["shift_cosine"] == pytest.approx(1.0, abs=1e-6) and gold["dist_to_retrain"] == pytest.approx(0.0)
    assert (tmp_path / "b" / "diagnostics.json").is_file() and (tmp_path / "b" / "config.yaml").is_file()
