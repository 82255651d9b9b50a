"""The report's plots: gap closed per method over the budgets (``gap_closed.png``) and, for attacks audited with the
Gaussian score, the paper's Fig. 6 histograms (``gus_hist.png``); plus the row helpers the report's tables share
with them (which rows are shown, their labels, mean and spread over seeds). Matplotlib is imported only when a plot is
drawn."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..files import atomic_savefig
from ..outputs import read_record


def mean_std(values):
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, 0
    arr = np.asarray(vals, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, len(arr)


def chosen_rows(rows):
    """Initial, retrain and the selected grid point of every method and budget."""
    return [r for r in rows if r["budget"] is None or r.get("selected")]


def label(method, budget, variant) -> str:
    # The variant id repeats method and budget; show only the grid point, if any.
    point = variant[len(f"{method}_b{budget:g}") :].lstrip("_") if budget is not None else ""
    return f"{method} ({point})" if point else method


def plot_gap_closed(rows, out: Path) -> Path:
    """Gap closed per method (its selected grid point per budget), retrain at 1, none at 0: a line over the budgets
    when there are several, a bar per method when there is one (a line over one budget is a single point on an axis
    matplotlib stretches around it, which reads as a range that was never run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = chosen_rows(rows)
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m not in ("initial", "retrain")]
    budgets = sorted({r["budget"] for r in rows if r["budget"] is not None})
    colors = plt.get_cmap("tab20").colors
    markers = "osD^v<>ph*XP"
    stats = {}  # method -> (means, stds, within tolerance) over the budgets
    for method in methods:
        means, stds, ok = [], [], []
        for b in budgets:
            grp = [r for r in rows if r["method"] == method and r["budget"] == b]
            mu, sd, _ = mean_std([r["metrics"].get("gap_closed") for r in grp])
            means.append(np.nan if mu is None else mu)
            stds.append(0 if sd is None else sd)
            ok.append(all(r.get("within_tolerance") is not False for r in grp))
        stats[method] = means, stds, ok
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    if len(budgets) == 1:
        for i, method in enumerate(methods):
            (mu,), (sd,), (good,) = stats[method]
            color = colors[(2 * i) % 20 + (i >= 10)]
            # hollow bar: no grid point kept clean accuracy within the tolerance (utility was paid for the gap)
            ax.bar(
                i,
                0 if np.isnan(mu) else mu,
                yerr=sd,
                capsize=4,
                color=color if good else "white",
                edgecolor=color,
                lw=2,
                hatch=None if good else "//",
            )
        ax.set_xticks(range(len(methods)), methods)
        ax.set_xlabel(f"method (budget {budgets[0]:g} of retraining compute)")
        ax.set_title(f"{rows[0]['attack']}: gap closed at budget {budgets[0]:g}")
        note = "hollow bar: clean accuracy fell outside the selection tolerance"
    else:
        for i, method in enumerate(methods):
            means, stds, ok = stats[method]
            style = dict(color=colors[(2 * i) % 20 + (i >= 10)], marker=markers[i % len(markers)])
            ax.errorbar(budgets, means, yerr=stds, capsize=3, label=method, **style)
            # hollow markers: no grid point kept clean accuracy within the tolerance (utility was paid for the gap)
            bad = [j for j, good in enumerate(ok) if not good]
            ax.scatter(
                [budgets[j] for j in bad], [means[j] for j in bad], s=120, facecolors="white", zorder=3, **style
            )
        ax.set_xlabel("compute budget (fraction of retraining)")
        ax.set_title(f"{rows[0]['attack']}: gap closed vs budget")
        note = "hollow marker: clean accuracy fell outside the selection tolerance"
    ax.axhline(1.0, color="green", ls="--", lw=1, label="retrain")
    ax.axhline(0.0, color="gray", ls=":", lw=1, label="no unlearning")
    ax.set_ylabel("gap closed")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.text(0.0, -0.18, note, transform=ax.transAxes, fontsize=7)
    fig.tight_layout()
    path = out / "gap_closed.png"
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_gus_hist(run_dir: Path, exp, rows, out: Path) -> Path:
    """Paper Fig. 6 style, first seed: one panel per model (retrain, then each method's selected variant), each with
    its own legend: fresh noise and the poisons on the initial model (the same in every panel) against the poisons on
    that panel's model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = run_dir / f"seed_{exp.seeds[0]}" / "eval"
    init = read_record(d / "initial" / "per_sample.json", ("gus_poison",))
    chosen = [r for r in chosen_rows(rows) if r["budget"] is not None and r["seed"] == exp.seeds[0]]
    panels = [("retrain", "retrain (gold)")] + [
        (r["variant"], f"{label(r['method'], r['budget'], r['variant'])} (budget {r['budget']:g})") for r in chosen
    ]
    panels = [(k, t) for k, t in panels if (d / k / "per_sample.json").is_file()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    fresh = np.asarray(init["gus_fresh"]).ravel()
    bins = np.linspace(-4.5, 4.5, 40)
    for ax, (key, title) in zip(axes[0], panels):
        other = read_record(d / key / "per_sample.json", ("gus_poison",))["gus_poison"]
        model = title.split(" (budget")[0]
        ax.hist(fresh, bins=bins, density=True, alpha=0.4, color="gray", label="fresh noise, initial model")
        ax.hist(
            init["gus_poison"],
            bins=bins,
            density=True,
            histtype="step",
            lw=2,
            color="red",
            label="poisons, initial model",
        )
        ax.hist(other, bins=bins, density=True, histtype="step", lw=2, color="blue", label=f"poisons, {model}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("I_z (Gaussian unlearning score)", fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.6)  # headroom: the legend sits above the histograms, not on them
        ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    path = out / "gus_hist.png"
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path
