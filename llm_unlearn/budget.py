"""Degenerate-experiment rules every stage checks before any work, for both tracks and for `run` as for the single
stages: forget and retain sets a batch can be drawn from, and compute budgets that buy at least one optimizer step.
(The budget's running count lives in ``methods.base.BudgetCallback``; this module only decides what is refused.)"""

from __future__ import annotations

import math

from .configs import ConfigError

# Learning-rate schedules that can follow the budget (a function of the fraction of the budget spent). The others
# are defined in absolute steps (inverse_sqrt's timescale, warmup_stable_decay's phase lengths) or react to metrics.
# (Here, not beside the trainer that follows them, so a config is checked without importing transformers.)
BUDGET_SCHEDULES = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "cosine_with_min_lr",
)


def check_split_sizes(n_retain: int, n_forget: int, batch_size: int, n_labels: int, where: str = "") -> None:
    """A retain set smaller than a batch or than the label set (the gold model could not learn the task from it), or
    an empty forget set, is an error. ``where`` prefixes the message (e.g. how the sizes came about)."""
    if n_forget < 1:
        raise ConfigError(f"{where}the forget set is empty: there is nothing to unlearn")
    if n_retain < max(batch_size, n_labels):
        short = f"the batch size {batch_size}" if batch_size >= n_labels else f"the {n_labels} labels"
        raise ConfigError(
            f"{where}the retain set holds {n_retain} example(s), fewer than {short}: the gold model would be trained "
            "on (almost) nothing; lower poison_fraction or the batch size"
        )


def check_manifest_splits(manifest: dict, batch_size: int, n_labels: int, dataset_dir: str) -> None:
    """:func:`check_split_sizes` on the split sizes a poison stage's manifest records (any task's)."""
    sizes = manifest.get("splits", {})
    if "retain" in sizes and "forget" in sizes:  # (the initial and the gold model of one experiment: one rule)
        check_split_sizes(
            sizes["retain"], sizes["forget"], batch_size, n_labels, where=f"dataset_dir {dataset_dir!r}: "
        )


def smallest_budget(step_cost: float, reference_compute: float) -> float:
    """``step_cost / reference_compute`` rounded up to two significant digits: a budget that buys one step."""
    x = step_cost / reference_compute
    scale = 10 ** (math.floor(math.log10(x)) - 1)
    return math.ceil(x / scale - 1e-9) * scale


def check_budget_buys_a_step(
    budget: float, reference_compute: float, step_cost: float, unit: str, exact: bool = True
) -> None:
    """A budget that does not pay for one optimizer step is an error naming the smallest budget that does (the
    budget stops a method after the step that spends it, so a smaller budget would still run a whole step and report
    a compute many times the budget). ``step_cost``: the least one step can cost, in ``unit``. ``exact=False``: the
    figures are bounds known before any work (the most the gold run can cost, the least a step can), so the smallest
    budget named is a lower bound and the unlearn stage checks the exact one when it starts."""
    if budget * reference_compute < step_cost:
        smallest = smallest_budget(step_cost, reference_compute)
        hint = f"the smallest budget that gives one step is {'at least ' if not exact else ''}{smallest:.2g}"
        if smallest > 1:
            hint = "even the whole retraining compute (budget 1) does not; lower the batch size"
        most = "" if exact else "at most "
        raise ConfigError(
            f"budget {budget:g} buys {most}{budget * reference_compute:.3g} {unit} of compute, less than one "
            f"optimizer step ({step_cost:.3g} {unit} at the least); {hint}"
        )
