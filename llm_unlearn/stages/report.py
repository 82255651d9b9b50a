"""Stage 5: collect every evaluated model of a run into ``results.json``, ``report.md`` and PNG plots.

Rows: ``{"attack", "method" ("initial" | "retrain" | a METHODS key), "budget", "seed", "metrics"}``. Gap closed is
(M(initial) - M(updated)) / (M(initial) - M(retrain)) on the attack's poison metric (``gus_mean`` for the Gaussian
attack, ``asr`` for the backdoor), computed within each seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..configs import ConfigError, parse_config
from ..utils import atomic_write_text, environment_info, read_json, write_json


@dataclass
class ReportConfig:
    """Summarise a run directory: results.json, report.md, plots."""

    run_dir: str | None = field(default=None, metadata={"help": "output_dir of `llm-unlearn run`"})
    output_dir: str | None = field(default=None, metadata={"help": "where the report goes (default: run_dir)"})


def _mean_std(values):
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, 0
    arr = np.asarray(vals, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, len(arr)


def _fmt(mean, std, digits=3):
    if mean is None:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def collect_rows(run_dir: Path, exp) -> tuple[list[dict], dict]:
    from ..metrics import gap_closed
    from .run import model_id

    rows, manifests = [], {}
    for seed in exp.seeds:
        d = run_dir / f"seed_{seed}"
        manifest = read_json(d / "poison" / "manifest.json")
        manifests[seed] = manifest
        metric = manifest["metric"]
        base = {}
        for name in ("initial", "retrain"):
            m = read_json(d / "eval" / name / "eval_results.json")
            info = read_json(d / name / "training_info.json")
            m.update(
                compute_fraction=1.0 if name == "retrain" else None,
                wall_seconds=info["wall_seconds"],
                diverged=info["diverged"],
                train_compute_tokens=info["compute_tokens"],
            )
            base[name] = m
        for name in ("initial", "retrain"):
            m = base[name]
            m["gap_closed"] = gap_closed(base["initial"][metric], m[metric], base["retrain"][metric])
            rows.append({"attack": manifest["attack"], "method": name, "budget": None, "seed": seed, "metrics": m})
        for method in exp.methods:
            for budget in exp.budgets:
                mid = model_id(method, budget)
                info = read_json(d / "unlearn" / mid / "unlearn_info.json")
                ev = d / "eval" / mid / "eval_results.json"
                m = read_json(ev) if ev.is_file() and not info["diverged"] else {}
                m.update(
                    compute_fraction=info["compute_fraction"],
                    wall_seconds=info["wall_seconds"],
                    diverged=info["diverged"],
                    diverged_step=info["diverged_step"],
                    steps=info["steps"],
                    method_args=info["method_args"],
                )
                m["gap_closed"] = (
                    gap_closed(base["initial"][metric], m[metric], base["retrain"][metric]) if metric in m else None
                )
                rows.append(
                    {"attack": manifest["attack"], "method": method, "budget": budget, "seed": seed, "metrics": m}
                )
    return rows, manifests


def _groups(rows):
    keys = []
    for r in rows:
        k = (r["method"], r["budget"])
        if k not in keys:
            keys.append(k)
    return [(k, [r for r in rows if (r["method"], r["budget"]) == k]) for k in keys]


def render_markdown(rows, exp, manifests, env) -> str:
    from ..metrics import stouffer_z

    attack = rows[0]["attack"]
    metric = manifests[exp.seeds[0]]["metric"]
    lines = [
        f"# llm-unlearn report: {attack} attack",
        "",
        f"Model `{exp.model_name_or_path}`, dataset `{exp.poison.dataset_name}`, poison fraction "
        f"{exp.poison.poison_fraction}, seeds {exp.seeds}, methods {exp.methods}, budgets {exp.budgets}.",
        f"Poison metric: `{metric}`; gap closed = (M(initial) - M(updated)) / (M(initial) - M(retrain)): "
        "1 = as good as retraining, 0 = no effect, < 0 = the poison got stronger.",
        "",
        "## Mean ± std over seeds",
        "",
    ]
    cols = ["clean_accuracy", metric, "gap_closed", "mia_auc", "compute_fraction"]
    if attack == "gaussian":
        cols = [
            "clean_accuracy",
            "gus_mean",
            "gus_z",
            "gus_auc",
            "gus_tpr_at_1pct_fpr",
            "fresh_gus_z",
            "gap_closed",
            "mia_auc",
            "compute_fraction",
        ]
    lines.append("| model | budget | " + " | ".join(cols) + " | diverged |")
    lines.append("|---|---|" + "---|" * len(cols) + "---|")
    for (method, budget), grp in _groups(rows):
        cells = [_fmt(*_mean_std([r["metrics"].get(c) for r in grp])[:2]) for c in cols]
        n_div = sum(bool(r["metrics"].get("diverged")) for r in grp)
        lines.append(
            f"| {method} | {'–' if budget is None else budget} | " + " | ".join(cells) + f" | {n_div}/{len(grp)} |"
        )
    if attack == "gaussian":
        lines += ["", "## Gaussian test per seed and pooled (Stouffer z = sum z / sqrt(#seeds))", ""]
        lines.append("| model | budget | " + " | ".join(f"z seed {s}" for s in exp.seeds) + " | pooled z | pooled p |")
        lines.append("|---|---|" + "---|" * (len(exp.seeds) + 2))
        from scipy.stats import norm

        for (method, budget), grp in _groups(rows):
            zs = [r["metrics"].get("gus_z") for r in grp]
            ok = [z for z in zs if z is not None]
            pooled = stouffer_z(ok) if ok else None
            cells = ["–" if z is None else f"{z:+.2f}" for z in zs]
            p = "–" if pooled is None else f"{2 * norm.sf(abs(pooled)):.2g}"
            lines.append(
                f"| {method} | {'–' if budget is None else budget} | "
                + " | ".join(cells)
                + f" | {'–' if pooled is None else f'{pooled:+.2f}'} | {p} |"
            )
    lines += [
        "",
        "Plots: `gap_closed.png`" + (", `gus_hist.png`" if attack == "gaussian" else "") + ".",
        "",
        "## Environment",
        "",
        "```",
        *(f"{k}: {v}" for k, v in env["packages"].items()),
        f"python: {env['python']}  git: {env['git_commit']}",
        "```",
        "",
    ]
    return "\n".join(lines)


def plot_gap_closed(rows, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m not in ("initial", "retrain")]
    budgets = sorted({r["budget"] for r in rows if r["budget"] is not None})
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in methods:
        means, stds = [], []
        for b in budgets:
            mu, sd, _ = _mean_std(
                [r["metrics"].get("gap_closed") for r in rows if r["method"] == method and r["budget"] == b]
            )
            means.append(np.nan if mu is None else mu)
            stds.append(0 if sd is None else sd)
        ax.errorbar(budgets, means, yerr=stds, marker="o", capsize=3, label=method)
    ax.axhline(1.0, color="green", ls="--", lw=1, label="retrain")
    ax.axhline(0.0, color="gray", ls=":", lw=1, label="no unlearning")
    ax.set_xlabel("compute budget (fraction of retraining)")
    ax.set_ylabel("gap closed")
    ax.set_title(f"{rows[0]['attack']}: gap closed vs budget")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "gap_closed.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_gus_hist(run_dir: Path, exp, out: Path) -> Path:
    """Paper Fig. 6 style, first seed: fresh noise vs poisons on the initial model vs poisons on each other model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .run import model_id

    d = run_dir / f"seed_{exp.seeds[0]}" / "eval"
    init = read_json(d / "initial" / "per_sample.json")
    panels = [("retrain", "retrain")] + [
        (model_id(m, b), f"{m} (budget {b:g})") for m in exp.methods for b in exp.budgets
    ]
    panels = [(k, t) for k, t in panels if (d / k / "per_sample.json").is_file()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3), squeeze=False)
    fresh = np.asarray(init["gus_fresh"]).ravel()
    bins = np.linspace(-4.5, 4.5, 40)
    for ax, (key, title) in zip(axes[0], panels):
        other = read_json(d / key / "per_sample.json")["gus_poison"]
        ax.hist(fresh, bins=bins, density=True, alpha=0.4, color="gray", label="fresh noise (initial)")
        ax.hist(
            init["gus_poison"], bins=bins, density=True, histtype="step", lw=2, color="red", label="poisons: initial"
        )
        ax.hist(other, bins=bins, density=True, histtype="step", lw=2, color="blue", label=f"poisons: {key}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("I_z")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "gus_hist.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(cfg: ReportConfig) -> Path:
    from ..configs import to_dict
    from .run import load_experiment

    if cfg.run_dir is None:
        raise ConfigError("run_dir is required")
    run_dir = Path(cfg.run_dir)
    exp = load_experiment(run_dir)
    out = Path(cfg.output_dir or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, manifests = collect_rows(run_dir, exp)
    env = environment_info(exp.seeds)
    write_json(out / "results.json", {"config": to_dict(exp), "environment": env, "rows": rows})
    plot_gap_closed(rows, out)
    if rows[0]["attack"] == "gaussian":
        plot_gus_hist(run_dir, exp, out)
    report = out / "report.md"
    atomic_write_text(report, render_markdown(rows, exp, manifests, env))
    return report


def make_parser():
    from ..configs import make_parser as _mp

    return _mp(ReportConfig, prog="llm-unlearn report")


def cli(argv=None) -> None:
    print(main(parse_config(ReportConfig, argv, prog="llm-unlearn report")))
