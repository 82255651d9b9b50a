"""Mechanistic diagnostics (the paper's section 6): ``llm-unlearn diagnose``.

Two modes:
- on models (what ``run`` does for every unlearned model): parameter-shift norms and the cosine between the
  unlearning update and the retrain direction (``metrics/shift.py``), written to ``diagnostics.json``;
- ``--toy linear``: over-parameterised least squares, where everything is exact. Gradients of the retain loss
  X_r^T (X_r theta - y_r) / n all lie in the row space of X_r, so any retain-only method (GD, NGD without noise,
  CF on all weights) leaves the part of theta - theta_retrain orthogonal to that space unchanged; the poisons put most
  of the shift theta_initial - theta_retrain there. Methods that use forget gradients (GA, NegGrad+) can move it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..configs import ConfigError
from ..harness import parse_stage, run_stage, stage_parser


@dataclass
class DiagnoseConfig:
    """Parameter-shift diagnostics of an unlearned model, or the exact linear-regression toy (``--toy linear``)."""

    toy: Literal["linear"] | None = field(default=None, metadata={"help": "run a toy instead of reading models"})
    task: str = field(
        default="causal_lm",
        metadata={"help": "the models' task: causal_lm or an installed one, e.g. image_classification"},
    )
    initial_dir: str | None = field(default=None, metadata={"help": "the initial (poisoned) model"})
    retrain_dir: str | None = field(default=None, metadata={"help": "the gold model retrained without poisons"})
    model_dir: str | None = field(default=None, metadata={"help": "the unlearned model (or the base of adapter_dir)"})
    adapter_dir: str | None = field(default=None, metadata={"help": "the unlearned LoRA adapter, if any"})
    output_dir: str | None = field(default=None, metadata={"help": "where diagnostics.json goes (toy: optional)"})
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={"help": "weights dtype"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the Hub"})
    # The linear toy. Defaults: 80 retain rows in 100 dimensions (over-parameterised on the retain set) and 30 noisy
    # copies as poisons, so that clean + poison rows over-determine the initial fit: its gradients are not zero.
    dim: int = field(
        default=100, metadata={"help": "toy: features (> n_retain: the retain set under-determines theta)"}
    )
    n_retain: int = field(default=80, metadata={"help": "toy: clean training rows"})
    n_poison: int = field(default=30, metadata={"help": "toy: poison rows (clean rows + Gaussian noise, same label)"})
    noise_std: float = field(default=1.0, metadata={"help": "toy: std of the poison noise per feature"})
    steps: int = field(default=100, metadata={"help": "toy: unlearning steps of each method"})
    lr: float = field(default=0.02, metadata={"help": "toy: step size (stable below 2 / largest Hessian eigenvalue)"})
    beta: float = field(default=0.9, metadata={"help": "toy: NegGrad+ weight of the retain loss"})
    seed: int = field(default=0, metadata={"help": "toy: data seed"})

    def validate(self) -> None:
        if self.toy is None:
            missing = [k for k in ("initial_dir", "retrain_dir", "model_dir") if getattr(self, k) is None]
            if missing:
                raise ConfigError(f"{', '.join(missing)} required (or pass --toy linear)")
        for name in ("dim", "n_retain", "n_poison", "steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.noise_std > 0 and self.lr > 0):
            raise ConfigError(f"noise_std and lr must be > 0, got {self.noise_std}, {self.lr}")
        if not 0 <= self.beta <= 1:
            raise ConfigError(f"beta must be in [0, 1], got {self.beta}")


def _params(model) -> dict:
    return {n: p.detach() for n, p in model.named_parameters()}


def model_diagnostics(cfg: DiagnoseConfig) -> dict:
    """Shift diagnostics of the unlearned model (merged adapter, if any) against the initial and retrain models."""
    from ..metrics.shift import shift_diagnostics
    from ..modeling import check_model_path, load_model
    from ..tasks import stage_task

    task = stage_task(cfg)

    def load(path):
        return load_model(path, cfg.dtype, cfg.trust_remote_code) if task is None else task.load_model(path, cfg)

    initial, retrain = _params(load(cfg.initial_dir)), _params(load(cfg.retrain_dir))
    updated = load(cfg.model_dir)
    if cfg.adapter_dir:
        from peft import PeftModel

        check_model_path(cfg.adapter_dir, "adapter_dir")
        updated = PeftModel.from_pretrained(updated, cfg.adapter_dir).merge_and_unload()
    return shift_diagnostics(initial, retrain, _params(updated))


def _least_squares_grad(X, y, theta):
    return X.T @ (X @ theta - y) / len(X)


def linear_toy(cfg: DiagnoseConfig) -> dict:
    """The exact toy: least squares on clean + poison rows (min-norm: what GD from 0 converges to) vs clean rows only,
    then ``steps`` of GD (retain), GA (forget) and NegGrad+ from theta_initial. Returns the orthogonal share of the
    poison shift and, per method, the orthogonal residual ||(I - P)(theta - theta_retrain)|| before and after."""
    import numpy as np  # (here, not at the top: `llm-unlearn run` imports this module for its config class)

    from ..metrics.shift import orthogonal_share, span_projector

    rng = np.random.default_rng(cfg.seed)
    w_true = rng.normal(size=cfg.dim) / np.sqrt(cfg.dim)
    X_r = rng.normal(size=(cfg.n_retain, cfg.dim))
    y_r = X_r @ w_true + 0.1 * rng.normal(size=cfg.n_retain)
    src = rng.integers(0, cfg.n_retain, size=cfg.n_poison)  # poisons: noisy copies of clean rows, labels unchanged
    X_p = X_r[src] + cfg.noise_std * rng.normal(size=(cfg.n_poison, cfg.dim))
    y_p = y_r[src]
    X_all, y_all = np.vstack([X_r, X_p]), np.concatenate([y_r, y_p])
    theta_i = np.linalg.pinv(X_all) @ y_all  # min-norm interpolant: GD from 0 on the poisoned set
    theta_r = np.linalg.pinv(X_r) @ y_r  # GD from 0 on the retain set
    delta = theta_i - theta_r
    P = span_projector(X_r)  # retain gradients live in the row space of X_r
    Q = np.eye(cfg.dim) - P

    def orth(theta):
        return float(np.linalg.norm(Q @ (theta - theta_r)))

    grads = {
        "gd": lambda t: _least_squares_grad(X_r, y_r, t),
        "ga": lambda t: -_least_squares_grad(X_p, y_p, t),
        "neggrad_plus": lambda t: (
            cfg.beta * _least_squares_grad(X_r, y_r, t) - (1 - cfg.beta) * _least_squares_grad(X_p, y_p, t)
        ),
    }
    methods = {}
    for name, grad in grads.items():
        theta = theta_i.copy()
        for _ in range(cfg.steps):
            theta = theta - cfg.lr * grad(theta)
        methods[name] = {
            "orthogonal_residual_before": orth(theta_i),
            "orthogonal_residual_after": orth(theta),
            "dist_to_retrain": float(np.linalg.norm(theta - theta_r)),
            "retain_mse": float(np.mean((X_r @ theta - y_r) ** 2)),
            "finite": bool(np.isfinite(theta).all()),
        }
    return {
        "toy": "linear",
        "dim": cfg.dim,
        "n_retain": cfg.n_retain,
        "n_poison": cfg.n_poison,
        "shift_norm": float(np.linalg.norm(delta)),
        "orthogonal_share": orthogonal_share(delta, X_r),
        "methods": methods,
    }


def format_toy(res: dict) -> str:
    lines = [
        f"linear toy: {res['n_retain']} retain rows, {res['n_poison']} poisons, {res['dim']} dims",
        f"poison shift ||theta_initial - theta_retrain|| = {res['shift_norm']:.4f}; share orthogonal to the span of "
        f"retain gradients = {res['orthogonal_share']:.3f}",
        "",
        f"{'method':<14}{'orth. before':>14}{'orth. after':>14}{'dist to retrain':>17}{'retain mse':>12}",
    ]
    for name, m in res["methods"].items():
        lines.append(
            f"{name:<14}{m['orthogonal_residual_before']:>14.6g}{m['orthogonal_residual_after']:>14.6g}"
            f"{m['dist_to_retrain']:>17.4g}{m['retain_mse']:>12.4g}"
        )
    return "\n".join(lines)


def main(cfg: DiagnoseConfig, overwrite: bool = False) -> dict:
    """The diagnostics (``--toy linear``: the toy's results; with ``output_dir`` through the stage harness,
    :mod:`llm_unlearn.harness`, written to ``diagnostics.json``)."""
    if cfg.toy is not None and cfg.output_dir is None:
        from ..configs import validate_config

        validate_config(cfg)
        return linear_toy(cfg)
    return run_stage(
        cfg,
        lambda c, out: {"diagnostics.json": linear_toy(c) if c.toy == "linear" else model_diagnostics(c)},
        name="diagnose",
        check=_check,
        result=_read,
        overwrite=overwrite,
    )


def _read(out: Path) -> dict:
    from ..files import read_json

    return read_json(out / "diagnostics.json")


def _check(cfg: DiagnoseConfig) -> None:
    """The three models must exist and be of one architecture and tokenizer (their parameters are compared)."""
    if cfg.toy is not None:
        return
    from ..modeling import check_model_path, check_same_model
    from ..tasks import stage_task

    task = stage_task(cfg)
    if task is not None:
        task.check_models({k: getattr(cfg, k) for k in ("initial_dir", "retrain_dir", "model_dir")})
        return

    for key in ("initial_dir", "retrain_dir", "model_dir", "adapter_dir"):
        if getattr(cfg, key):
            check_model_path(getattr(cfg, key), key)
    check_same_model({k: getattr(cfg, k) for k in ("initial_dir", "retrain_dir", "model_dir")})


def make_parser():
    return stage_parser(DiagnoseConfig, "llm-unlearn diagnose")


def cli(argv=None) -> None:
    import json

    cfg, overwrite = parse_stage(DiagnoseConfig, argv, "llm-unlearn diagnose")
    res = main(cfg, overwrite=overwrite)
    print(format_toy(res) if cfg.toy else json.dumps(res, indent=2))
