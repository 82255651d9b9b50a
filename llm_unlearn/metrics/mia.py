"""Membership-inference metrics: TPR at a fixed FPR and the loss-threshold attack (Yeom et al., 2018)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = ["loss_mia", "tpr_at_fpr"]


def _as_1d_array(values: Any, name: str, *, flatten: bool = False, min_size: int = 1) -> np.ndarray:
    """Converts scores/losses (tensor, array, list) to a finite 1-D float64 numpy array.

    Args:
        values: The values to convert.
        name: Argument name used in error messages.
        flatten: Accept any shape and flatten it; otherwise the input must be 1-D.
        min_size: Minimal number of elements.

    Raises:
        ValueError: If the values are not 1-D (unless `flatten`), have fewer than `min_size` elements or contain
            NaN/inf.
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`{name}` must be convertible to a float array: {exc}") from exc
    if flatten:
        array = array.reshape(-1)
    elif array.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {tuple(array.shape)}")
    if array.size < min_size:
        raise ValueError(f"`{name}` must contain at least {min_size} value(s), got {array.size}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` contains NaN or infinite values")
    return array


def _check_fpr(fpr: float) -> float:
    if isinstance(fpr, bool) or not isinstance(fpr, numbers.Real) or not math.isfinite(fpr) or not 0.0 < fpr < 1.0:
        raise ValueError(f"`fpr` must be a float in the open interval (0, 1), got {fpr!r}")
    return float(fpr)


def _labels_and_scores(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.concatenate([np.ones(member_scores.size), np.zeros(nonmember_scores.size)])
    scores = np.concatenate([member_scores, nonmember_scores])
    return labels, scores


def tpr_at_fpr(member_scores, nonmember_scores, fpr: float = 0.01) -> float:
    """True-positive rate of a threshold membership test at a bounded false-positive rate.

    A sample is called a member when its score is at least the threshold (higher score = member). Among all
    thresholds of the ROC curve whose FPR is `<= fpr`, the largest TPR is returned (the threshold `+inf`, with
    TPR = FPR = 0, is always admissible, so the result is well defined).

    Args:
        member_scores (array-like of shape `(n,)`): Scores of the members (positives).
        nonmember_scores (array-like of shape `(m,)`): Scores of the non-members (negatives).
        fpr (`float`, *optional*, defaults to 0.01): Maximal false-positive rate, in the open interval (0, 1).

    Returns:
        `float`: The TPR at FPR <= `fpr`.

    Raises:
        ValueError: If an array is empty, not 1-D or non-finite, or if `fpr` is not in (0, 1).
    """
    fpr = _check_fpr(fpr)
    member = _as_1d_array(member_scores, "member_scores")
    nonmember = _as_1d_array(nonmember_scores, "nonmember_scores")
    labels, scores = _labels_and_scores(member, nonmember)
    fprs, tprs, _ = roc_curve(labels, scores, drop_intermediate=False)
    admissible = fprs <= fpr + 1e-12
    return float(np.max(tprs[admissible]))


def loss_mia(member_losses, nonmember_losses) -> dict[str, float]:
    """Loss-threshold membership inference (Yeom et al., 2018): a low loss means "member" (score = -loss).

    Args:
        member_losses (array-like of shape `(n,)`): Per-sample losses of the members (e.g. the forget set).
        nonmember_losses (array-like of shape `(m,)`): Per-sample losses of held-out samples.

    Returns:
        `dict`: `{"mia_auc": ROC-AUC, "mia_tpr_at_1pct_fpr": TPR at FPR <= 1 %}`, both floats (0.5 / ~0.01 at
        chance).

    Raises:
        ValueError: If an array is empty, not 1-D or non-finite.
    """
    member = _as_1d_array(member_losses, "member_losses")
    nonmember = _as_1d_array(nonmember_losses, "nonmember_losses")
    labels, scores = _labels_and_scores(-member, -nonmember)
    return {
        "mia_auc": float(roc_auc_score(labels, scores)),
        "mia_tpr_at_1pct_fpr": tpr_at_fpr(-member, -nonmember, fpr=0.01),
    }
