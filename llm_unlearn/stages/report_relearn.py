"""Relearning in the report: the rows of relearned models, their table and ``relearn.png``.

A run with a ``relearn`` section evaluated every model (initial, gold, each unlearned variant) again after ``n`` more
fine-tuning steps (``seed_<s>/eval/<id>_r<n>``, see :func:`llm_unlearn.planner.relearn_jobs`). Their rows carry
``relearn_steps: n`` and ``relearn_of: <id>`` (the model they continue), with ``variant`` = ``<id>_r<n>``; every
other row gets ``relearn_steps: 0``. The selection of variants, gap closed of the as-unlearned models, the verdicts
and the suite's Table 1 are computed on the ``relearn_steps: 0`` rows alone: relearned rows are added after them and
copy their source's ``selected``. A relearned row's gap closed is measured against the initial and gold models as
trained (0 steps), so "the poison came back" reads as gap closed falling back towards 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import atomic_savefig
from ..outputs import read_record
from .plots import mean_std

PLOT = "relearn.png"
_KEYS = ("attack", "method", "budget", "seed", "selected", "within_tolerance")


def relearn_steps(exp) -> list[int]:
    """The experiment's relearning step counts (sorted; empty when relearning is off or the track has none)."""
    section = getattr(exp, "relearn", None)
    return sorted(section.steps) if section is not None and section.steps else []


def relearn_rows(run_dir: Path, exp, rows: list[dict]) -> list[dict]:
    """Marks ``rows`` (the as-unlearned models) ``relearn_steps: 0`` and returns the rows of their relearned copies,
    read from ``seed_<s>/eval/<id>_r<n>`` and ``seed_<s>/relearn/<id>/r<n>/relearn_info.json``. A model whose
    unlearning diverged has none (nothing was relearned)."""
    from ..metrics import gap_closed
    from .verdicts import add_row_verdicts

    for r in rows:
        r["relearn_steps"] = 0
    steps = relearn_steps(exp)
    if not steps:
        return []
    out = []
    for seed in exp.seeds:
        d = run_dir / f"seed_{seed}"
        metric = read_record(d / "poison" / "manifest.json", ("metric",))["metric"]
        mine = [r for r in rows if r["seed"] == seed]
        base = {r["method"]: r["metrics"] for r in mine if r["budget"] is None}
        for r in mine:
            if r["metrics"].get("diverged") and r["budget"] is not None:
                continue
            for n in steps:
                m = read_record(d / "eval" / f"{r['variant']}_r{n}" / "eval_results.json", ("clean_accuracy",))
                info = read_record(d / "relearn" / r["variant"] / f"r{n}" / "relearn_info.json", ("data",))
                m.update(
                    relearn_data=info["data"],
                    relearn_learning_rate=info.get("learning_rate"),
                    relearn_examples=sum(len(b) for b in info.get("batches", [])),
                    poison_effect=r["metrics"].get("poison_effect"),
                )
                m["gap_closed"] = (
                    gap_closed(base["initial"][metric], m[metric], base["retrain"][metric]) if metric in m else None
                )
                if r["metrics"].get("gap_closed_note"):
                    m["gap_closed_note"] = r["metrics"]["gap_closed_note"]
                row = {k: r.get(k) for k in _KEYS}
                out.append(
                    {
                        **row,
                        "variant": f"{r['variant']}_r{n}",
                        "relearn_of": r["variant"],
                        "relearn_steps": n,
                        "metrics": m,
                    }
                )
    add_row_verdicts(out)
    return out


def _fmt(values) -> str:
    mean, std, _ = mean_std(values)
    return "–" if mean is None else f"{mean:.3f} ± {std:.3f}"


def _curves(rows: list[dict], relearned: list[dict]) -> list[tuple[str, dict[int, list[dict]]]]:
    """[(label, {steps: rows over seeds})] for initial, gold and each selected variant, in report order."""
    shown = [r for r in rows if r["budget"] is None or r.get("selected")]
    out: dict[str, dict[int, list[dict]]] = {}
    labels = {}
    for r in shown:
        labels.setdefault(r["variant"], _label(r))
        out.setdefault(r["variant"], {}).setdefault(0, []).append(r)
    for r in relearned:
        if r["relearn_of"] in out:
            out[r["relearn_of"]].setdefault(r["relearn_steps"], []).append(r)
    return [(labels[v], by_steps) for v, by_steps in out.items()]


def _label(r: dict) -> str:
    if r["budget"] is None:
        return "gold (retrain)" if r["method"] == "retrain" else r["method"]
    point = r["variant"][len(f"{r['method']}_b{r['budget']:g}") :].lstrip("_")
    return f"{r['method']}{f' ({point})' if point else ''}, budget {r['budget']:g}"


def relearn_markdown(rows: list[dict], relearned: list[dict], exp, metric: str) -> str:
    """The report's relearning section: poison metric, gap closed and clean accuracy per model against the number
    of relearning steps (mean ± std over seeds)."""
    if not relearned:
        return ""
    section = exp.relearn
    data = (
        "benign retain rows"
        if section.data == "retain"
        else f"a seeded {section.fraction:g} of the poisons (max(1, round(fraction * n_forget)) rows)"
    )
    lines = [
        "## Relearning: does the poison come back?",
        "",
        f"Every model fine-tuned further on {data}: all weights, AdamW at a constant learning rate "
        f"{section.learning_rate:g}, batch {section.per_device_train_batch_size}, then evaluated again "
        f"(0 steps = the model as trained or unlearned). Gap closed is measured against the initial and gold models "
        f"as trained; the initial and gold rows show what the same relearning does to a model that kept the poison "
        f"and to one that never saw it. Plot: `{PLOT}`.",
        "",
        f"| model | relearn steps | clean_accuracy | {metric} | gap_closed |",
        "|---|---|---|---|---|",
    ]
    for label, by_steps in _curves(rows, relearned):
        for i, n in enumerate(sorted(by_steps)):
            grp = by_steps[n]
            cells = [_fmt([r["metrics"].get(k) for r in grp]) for k in ("clean_accuracy", metric, "gap_closed")]
            lines.append(f"| {label if i == 0 else ''} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def with_relearning(text: str, section: str) -> str:
    """The report with the relearning section before its environment block."""
    if not section:
        return text
    head, sep, tail = text.partition("## Environment")
    return head + section + "\n" + sep + tail if sep else text + "\n" + section


def plot_relearn(rows: list[dict], relearned: list[dict], metric: str, out: Path) -> Path | None:
    """``relearn.png``: the poison metric against relearning steps, one line per method (its selected variant per
    budget), the initial and gold models as dashed baselines; none (and an old one removed) without relearning."""
    path = out / PLOT
    if not relearned:
        path.unlink(missing_ok=True)
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    # tab10 without its green and red, which mark the gold and initial baselines
    colors = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i not in (2, 3)]
    i = 0
    for name, by_steps in _curves(rows, relearned):
        xs = sorted(by_steps)
        stats = [mean_std([r["metrics"].get(metric) for r in by_steps[n]])[:2] for n in xs]
        ys = [np.nan if m is None else m for m, _ in stats]
        es = [0.0 if s is None else s for _, s in stats]
        if name == "initial":
            style = dict(color="red", ls="--", marker="x")
        elif name.startswith("gold"):
            style = dict(color="green", ls="--", marker="x")
        else:
            style = dict(color=colors[i % len(colors)], marker="o")
            i += 1
        ax.errorbar(xs, ys, yerr=es, capsize=3, label=name, **style)
    ax.set_xlabel("relearning steps (0 = as trained / unlearned)")
    ax.set_ylabel(metric)
    ax.set_title(f"{rows[0]['attack']}: {metric} after relearning")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path
