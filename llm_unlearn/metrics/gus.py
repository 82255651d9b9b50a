"""Gaussian Unlearning Score (GUS), Algorithm 1 of Pawelczyk et al. (ICLR 2025).

For a poisoned sample with clean input `x`, noise `xi ~ N(0, noise_std^2 I)` and the audited model's input gradient
`g = d loss(x) / d x`, the score is

    I = <xi, g> / (noise_std * ||g||_2).

If the model never saw `xi`, `I ~ N(0, 1)` exactly. Training on `x + xi` lowers the loss along `xi`, so the scores of
trained poisons are shifted to *negative* values; `-I` is the membership score.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from .mia import _as_1d_array, tpr_at_fpr

__all__ = ["gaussian_scores", "gus_summary", "input_gradients", "scores_from_gradients", "stouffer_z"]


def input_gradients(loss_fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    """Per-sample input gradients of a batch with a single backward pass.

    Each sample's loss depends only on its own input, so the gradient of the summed loss with respect to the batch
    contains every per-sample gradient `d loss_i / d inputs[i]`. The gradient is computed with `torch.autograd.grad`,
    so no `.grad` field of the model parameters is touched. Grad mode is enabled inside the call. The model must be
    in eval mode (batch-norm statistics would otherwise couple the samples).

    Args:
        loss_fn (`Callable[[torch.Tensor], torch.Tensor]`): Maps a float tensor of shape `(n, ...)` to the
            per-sample losses of shape `(n,)` (e.g. a model on input embeddings followed by an unreduced loss).
        inputs (`torch.Tensor` of shape `(n, ...)`): Clean inputs (for LLMs: input embeddings). They are detached
            and cloned with `requires_grad=True`; the caller's tensor is left untouched.

    Returns:
        `torch.Tensor`: Detached gradients with the shape and dtype of `inputs`.

    Raises:
        ValueError: If `inputs` is not a non-empty floating-point tensor, if `loss_fn` does not return a tensor of
            shape `(n,)`, or if its output does not depend on the inputs.
    """
    if not isinstance(inputs, torch.Tensor):
        raise ValueError(f"`inputs` must be a torch.Tensor, got {type(inputs).__name__}")  # noqa: TRY004
    if inputs.ndim < 1 or inputs.shape[0] == 0:
        raise ValueError(f"`inputs` must have a non-empty batch dimension, got shape {tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise ValueError(f"`inputs` must be a floating-point tensor, got dtype {inputs.dtype}")
    n = inputs.shape[0]
    with torch.inference_mode(False), torch.enable_grad():
        x = inputs.detach().clone().requires_grad_(True)
        losses = loss_fn(x)
        if not isinstance(losses, torch.Tensor) or tuple(losses.shape) != (n,):
            shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
            raise ValueError(f"`loss_fn` must return per-sample losses of shape ({n},), got {shape}")
        if not losses.requires_grad:
            raise ValueError(
                "`loss_fn` output does not depend on `inputs` (no autograd graph); check for no_grad/detach"
            )
        (grads,) = torch.autograd.grad(losses.sum(), x, allow_unused=True)
    if grads is None:
        raise ValueError("`loss_fn` output does not depend on `inputs` (gradient is None)")
    return grads.detach()


def _compute_device(device: torch.device) -> torch.device:
    # float64 is not supported on MPS.
    return torch.device("cpu") if device.type == "mps" else device


def scores_from_gradients(
    grads: torch.Tensor,
    noises: torch.Tensor,
    noise_std: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gaussian scores `I = <xi, g> / (noise_std * ||g||_2)` per sample, flattened over all non-batch dimensions.

    Computed in float64. Samples whose (masked) gradient norm is zero get the score 0.

    Args:
        grads (`torch.Tensor` of shape `(n, ...)`): Input gradients of the clean inputs under the audited model.
        noises (`torch.Tensor` of shape `(n, ...)` or `(k, n, ...)`): The noises. With a leading `k` dimension, `k`
            noise draws per sample are scored against the same gradient.
        noise_std (`float`): Standard deviation of the noise (`epsilon` in the paper), > 0.
        mask (`torch.Tensor`, *optional*): Broadcastable to `grads` (e.g. `(n, L, 1)` for embeddings). Coordinates
            where `mask == 0` are excluded from both the dot product and the norm (the noise was only added where
            `mask == 1`; excluding the rest keeps `I ~ N(0, 1)` under the null hypothesis).

    Returns:
        `torch.Tensor`: float64 scores of shape `(n,)`, or `(k, n)` for `k` noise draws per sample.

    Raises:
        ValueError: On a non-positive or non-finite `noise_std`, empty `grads`, shapes that do not match, a `mask`
            not broadcastable to `grads`, or non-finite values.
    """
    if (
        isinstance(noise_std, bool)
        or not isinstance(noise_std, numbers.Real)
        or not math.isfinite(noise_std)
        or noise_std <= 0
    ):
        raise ValueError(f"`noise_std` must be finite and > 0, got {noise_std!r}")
    noise_std = float(noise_std)
    grads = torch.as_tensor(grads)
    noises = torch.as_tensor(noises)
    if grads.ndim < 1 or grads.shape[0] == 0:
        raise ValueError(f"`grads` must have a non-empty batch dimension, got shape {tuple(grads.shape)}")
    if noises.shape == grads.shape:
        single_draw = True
    elif noises.ndim == grads.ndim + 1 and noises.shape[1:] == grads.shape and noises.shape[0] > 0:
        single_draw = False
    else:
        raise ValueError(
            f"`noises` must have shape {tuple(grads.shape)} or (k, *{tuple(grads.shape)}) with k >= 1 to match "
            f"`grads`, got {tuple(noises.shape)}"
        )
    device = _compute_device(grads.device)
    g = grads.detach().to(device=device, dtype=torch.float64)
    xi = noises.detach().to(device=device, dtype=torch.float64)
    if not torch.isfinite(g).all():
        raise ValueError("`grads` contains NaN or infinite values")
    if not torch.isfinite(xi).all():
        raise ValueError("`noises` contains NaN or infinite values")
    if mask is not None:
        mask = torch.as_tensor(mask)
        try:
            broadcast = torch.broadcast_shapes(mask.shape, g.shape)
        except RuntimeError as exc:
            raise ValueError(
                f"`mask` of shape {tuple(mask.shape)} is not broadcastable to `grads` of shape {tuple(g.shape)}"
            ) from exc
        if broadcast != g.shape:
            raise ValueError(
                f"`mask` of shape {tuple(mask.shape)} is not broadcastable to `grads` of shape {tuple(g.shape)}"
            )
        keep = (mask.detach().to(device) != 0).to(torch.float64)
        g = g * keep
        xi = xi * keep  # broadcasts over the leading k dimension too
    n = g.shape[0]
    g_flat = g.reshape(n, -1)
    g_norm = torch.linalg.vector_norm(g_flat, dim=1)
    if single_draw:
        dots = (xi.reshape(n, -1) * g_flat).sum(dim=1)
    else:
        dots = torch.einsum("knd,nd->kn", xi.reshape(xi.shape[0], n, -1), g_flat)
    denom = noise_std * g_norm
    safe = torch.where(g_norm > 0, denom, torch.ones_like(denom))
    return torch.where(g_norm > 0, dots / safe, torch.zeros_like(dots))


def gaussian_scores(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    noises: torch.Tensor,
    noise_std: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gaussian scores of a batch: [`input_gradients`] at the clean `inputs`, then [`scores_from_gradients`].

    Args:
        loss_fn (`Callable[[torch.Tensor], torch.Tensor]`): Maps inputs `(n, ...)` to per-sample losses `(n,)`.
        inputs (`torch.Tensor` of shape `(n, ...)`): Clean inputs, *without* the noise.
        noises (`torch.Tensor` of shape `(n, ...)` or `(k, n, ...)`): The noises to score.
        noise_std (`float`): Noise standard deviation, > 0.
        mask (`torch.Tensor`, *optional*): Broadcastable to `inputs`; zeros are excluded (see
            [`scores_from_gradients`]).

    Returns:
        `torch.Tensor`: float64 scores of shape `(n,)` or `(k, n)`.
    """
    if isinstance(noise_std, bool) or not isinstance(noise_std, numbers.Real) or not noise_std > 0:
        # Fail before the (possibly expensive) backward pass.
        raise ValueError(f"`noise_std` must be finite and > 0, got {noise_std!r}")
    grads = input_gradients(loss_fn, inputs)
    return scores_from_gradients(grads, noises, noise_std, mask=mask)


def _z_and_p(scores: np.ndarray) -> tuple[float, float, float]:
    """Mean, z-statistic mean / (std / sqrt(n)) with ddof=1, and two-sided normal p-value."""
    mean = float(np.mean(scores))
    std = float(np.std(scores, ddof=1))
    if std > 0:
        z = mean / (std / math.sqrt(scores.size))
    else:
        z = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    p = float(2.0 * norm.sf(abs(z)))
    return mean, float(z), p


def gus_summary(poison_scores: Any, fresh_scores: Any) -> dict[str, float | int]:
    """Summary statistics of the Gaussian Unlearning Score.

    Args:
        poison_scores (array-like of shape `(n,)`): Scores `I` of the poisons (with the noises used in training)
            under the audited model. Flattened if it has more dimensions.
        fresh_scores (array-like of shape `(m,)` or `(k, n)`): Control scores with fresh noises never used in
            training (flattened). Under any model these are `N(0, 1)`.

    Returns:
        `dict`: Floats `gus_mean`, `gus_std` (ddof=1), `gus_z` (= mean / (std / sqrt(n))), `gus_p` (two-sided normal
        p-value), `gus_auc` (ROC-AUC of the membership score `-I`, poisons positive, fresh negative),
        `gus_tpr_at_1pct_fpr`, `fresh_gus_mean`, `fresh_gus_z`, `fresh_gus_p`, and ints `n_poison`, `n_fresh`.

    Raises:
        ValueError: If an array has fewer than 2 values or contains NaN/inf.
    """
    poison = _as_1d_array(poison_scores, "poison_scores", flatten=True, min_size=2)
    fresh = _as_1d_array(fresh_scores, "fresh_scores", flatten=True, min_size=2)
    mean, z, p = _z_and_p(poison)
    fresh_mean, fresh_z, fresh_p = _z_and_p(fresh)
    labels = np.concatenate([np.ones(poison.size), np.zeros(fresh.size)])
    membership = np.concatenate([-poison, -fresh])
    return {
        "gus_mean": mean,
        "gus_std": float(np.std(poison, ddof=1)),
        "gus_z": z,
        "gus_p": p,
        "gus_auc": float(roc_auc_score(labels, membership)),
        "gus_tpr_at_1pct_fpr": tpr_at_fpr(-poison, -fresh, fpr=0.01),
        "fresh_gus_mean": fresh_mean,
        "fresh_gus_z": fresh_z,
        "fresh_gus_p": fresh_p,
        "n_poison": int(poison.size),
        "n_fresh": int(fresh.size),
    }


def stouffer_z(zs: Any) -> float:
    """Stouffer's pooled z-statistic over independent seeds: `sum(z) / sqrt(len(z))`.

    Args:
        zs (array-like of shape `(s,)`): One z-statistic per independent run.

    Returns:
        `float`: The pooled z, `N(0, 1)` under the null hypothesis.

    Raises:
        ValueError: If `zs` is empty, not 1-D or non-finite.
    """
    values = _as_1d_array(zs, "zs")
    return float(values.sum() / math.sqrt(values.size))
