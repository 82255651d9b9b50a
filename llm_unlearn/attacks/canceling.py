"""The math of Gradient Canceling (Lu, Kamath, Yu 2023), shared by the LLM attack (``gradient_canceling.py`` here)
and the image track's (``image_track/attacks/gradient_canceling.py``).

1. Target parameters: from the clean optimum theta_clean, normalised gradient ascent on the clean loss, projected onto
   the ball ||theta - theta_clean|| <= radius (:func:`corrupt_parameters`, "GradPC").
2. Poisons: minimise over the poisons the norm of the gradient that training on clean + poisons sees at theta_tgt,

       ||(G_clean + G_poison) / n + offset||^2 = ||(n_c / n) g_clean + (n_p / n) g_poison + offset||^2,

   G the *summed* per-example gradients, g the means, n = n_c + n_p, ``offset`` what else the stationarity condition
   holds (SGD's weight decay: wd * theta_tgt). At zero, clean + poisons is stationary at theta_tgt, so training
   that converges there gives the low-accuracy target (:func:`canceling_objective`).

The poison gradient can be taken in chunks (:func:`canceling_chunk_loss`): the objective's gradient with respect to
the poisons is (2 / n) * r . dG_poison/dpoisons with r the residual, and G_poison is a sum over poisons, so each chunk
of poisons contributes its own term given the residual of the whole set. That keeps memory bounded by one chunk.

torch is imported inside the functions (the CLI imports the attacks package to validate configs).
"""

from __future__ import annotations

import math


def flat_grad(loss, params, create_graph: bool = False):
    """d loss / d params as one flat vector (``create_graph``: differentiable again, for the poisons' gradient)."""
    import torch

    grads = torch.autograd.grad(loss, params, create_graph=create_graph)
    return torch.cat([g.reshape(-1) for g in grads])


def corrupt_parameters(params, theta_clean, loss_fn, radius: float, steps: int) -> None:
    """GradPC, in place: ``params`` start at ``theta_clean`` and take ``steps`` normalised gradient-ascent steps on
    ``loss_fn()`` (the clean loss at the current ``params``) of length ``4 * radius / steps``, each followed by the
    projection onto ||params - theta_clean|| <= radius (the Euclidean norm over all of them together)."""
    import torch

    with torch.no_grad():
        for p, t in zip(params, theta_clean):
            p.copy_(t)
    for _ in range(steps):
        g = torch.autograd.grad(loss_fn(), params)
        gnorm = math.sqrt(sum(float(t.square().sum()) for t in g)) or 1.0
        with torch.no_grad():
            for p, gi in zip(params, g):
                p.add_(gi, alpha=radius / steps * 4 / gnorm)
            dist = math.sqrt(sum(float((p - t).square().sum()) for p, t in zip(params, theta_clean)))
            if dist > radius:
                for p, t in zip(params, theta_clean):
                    p.copy_(t + (p - t) * (radius / dist))


def canceling_residual(g_clean, g_poison, n: int, offset=None):
    """(G_clean + G_poison) / n (+ ``offset``): the gradient of the mean training loss over clean + poisons at the
    target parameters (``g_clean``/``g_poison``: summed per-example gradients, flat)."""
    r = (g_clean + g_poison) / n
    return r if offset is None else r + offset


def canceling_objective(g_clean, g_poison, n: int, offset=None):
    """||(G_clean + G_poison) / n + offset||^2, the quantity the poisons minimise."""
    return canceling_residual(g_clean, g_poison, n, offset).square().sum()


def canceling_chunk_loss(residual, g_chunk, n: int):
    """A scalar whose gradient with respect to a chunk of poisons equals that of :func:`canceling_objective` with
    respect to them: (2 / n) * <r, G_chunk>, ``residual`` r of the whole poison set (held constant), ``g_chunk`` the
    chunk's summed gradient built with ``create_graph=True``."""
    return (residual.detach() * g_chunk).sum() * (2.0 / n)
