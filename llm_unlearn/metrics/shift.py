"""Mechanistic diagnostics (the paper's section 6): how far and in which direction unlearning moved the weights.

The poisons shift the parameters by Delta = theta_initial - theta_retrain. An update that undoes the poison must move
theta_initial by about -Delta: ``shift_norm_updated`` close to ``shift_norm_retrain`` and ``shift_cosine`` (between
theta_updated - theta_initial and theta_retrain - theta_initial) close to 1. A budget-limited update travels a small
fraction of the distance, and retain-only updates cannot reach the part of Delta that is orthogonal to the span of
retain gradients (``orthogonal_share``; exact on the linear toy in ``stages/diagnose.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch


def shift_diagnostics(
    initial: Mapping[str, torch.Tensor], retrain: Mapping[str, torch.Tensor], updated: Mapping[str, torch.Tensor]
) -> dict:
    """Norms and cosine of the parameter shifts, over the floating-point tensors the three models share.

    Returns ``shift_norm_retrain`` ||theta_i - theta_r||, ``shift_norm_updated`` ||theta_i - theta_u||,
    ``shift_ratio`` (their quotient), ``shift_cosine`` cos(theta_u - theta_i, theta_r - theta_i),
    ``dist_to_retrain`` ||theta_u - theta_r|| and ``dist_ratio`` ||theta_u - theta_r|| / ||theta_i - theta_r||
    (1 = no closer to retraining than before, 0 = reached it), plus ``n_params``.
    """
    keys = [k for k in initial if k in retrain and k in updated and initial[k].is_floating_point()]
    if not keys:
        raise ValueError("the three models share no floating-point parameters (different architectures?)")
    dr2 = du2 = dot = dist2 = 0.0
    n = 0
    for k in keys:
        ti, tr, tu = (x[k].detach().to("cpu", torch.float64) for x in (initial, retrain, updated))
        if not ti.shape == tr.shape == tu.shape:
            raise ValueError(f"parameter {k!r} has shapes {ti.shape}, {tr.shape}, {tu.shape}")
        d_r, d_u = tr - ti, tu - ti
        dr2 += float(d_r.square().sum())
        du2 += float(d_u.square().sum())
        dot += float((d_u * d_r).sum())
        dist2 += float((tu - tr).square().sum())
        n += ti.numel()
    nr, nu = math.sqrt(dr2), math.sqrt(du2)
    return {
        "shift_norm_retrain": nr,
        "shift_norm_updated": nu,
        "shift_ratio": nu / nr if nr > 0 else None,
        "shift_cosine": dot / (nu * nr) if nu > 0 and nr > 0 else None,
        "dist_to_retrain": math.sqrt(dist2),
        "dist_ratio": math.sqrt(dist2) / nr if nr > 0 else None,
        "n_params": n,
    }


def span_projector(rows: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """Orthogonal projector onto the span of the rows of ``rows`` (n, d) -> (d, d), from an SVD."""
    _, s, vt = np.linalg.svd(np.asarray(rows, dtype=np.float64), full_matrices=False)
    basis = vt[s > rtol * (s[0] if s.size else 0.0)]
    return basis.T @ basis


def orthogonal_share(delta: np.ndarray, rows: np.ndarray) -> float:
    """||(I - P) delta|| / ||delta|| with P the projector onto span(rows): the fraction (in norm) of a shift that no
    combination of those directions (e.g. retain-set gradients) can reach."""
    delta = np.asarray(delta, dtype=np.float64)
    norm = np.linalg.norm(delta)
    if norm == 0:
        return 0.0
    return float(np.linalg.norm(delta - span_projector(rows) @ delta) / norm)
