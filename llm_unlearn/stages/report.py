"""Stage 5: collect every evaluated model of a run into ``results.json``, ``report.md`` and PNG plots.

Rows: ``{"attack", "method" ("initial" | "retrain" | a METHODS key), "budget", "variant" (the model id: method,
budget and grid point), "seed", "metrics", "selected", "within_tolerance"}``; every grid point stays in results.json,
the tables and the budget plot show the selected one per method and budget (see ``select_variants``). Gap closed is
(M(initial) - M(updated)) / (M(initial) - M(retrain)) on the attack's poison metric (``gus_mean`` for the Gaussian
attack, ``asr`` for the backdoor), computed within each seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path


from ..configs import ConfigError
from ..flags import parse_config
from ..outputs import read_record
from ..files import atomic_write_text, write_json
from ..envinfo import environment_info
from .plots import chosen_rows, label, mean_std, plot_gap_closed, plot_gus_hist

REPORT_FILES = ("results.json", "report.md", "gap_closed.png", "gus_hist.png", "relearn.png")
# Keys the report reads from each per-seed record: one without them (an empty `{}`) is an error naming the file.
REQUIRED_KEYS = {
    "manifest.json": ("attack", "metric"),
    "training_info.json": ("compute_tokens", "wall_seconds", "diverged"),
    "unlearn_info.json": ("compute_fraction", "wall_seconds", "diverged", "steps", "method_args"),
    "eval_results.json": ("clean_accuracy",),
    "per_sample.json": ("gus_poison",),
}


def read_json(path):
    """A per-seed record through the harness: a missing or unparsable one, or one without the keys the report
    reads, is a ConfigError naming it (exit 2); one edited since its stage finished is reported with a warning."""
    return read_record(path, REQUIRED_KEYS.get(Path(path).name, ()))


@dataclass
class ReportConfig:
    """Summarise a run directory: results.json, report.md, plots."""

    run_dir: str | None = field(default=None, metadata={"help": "output_dir of `llm-unlearn run`"})
    output_dir: str | None = field(default=None, metadata={"help": "where the report goes (default: run_dir)"})


def _fmt(mean, std, digits=3):
    if mean is None:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def variants(exp) -> list:
    """The experiment's unlearning variants (methods x budgets x grid), as ``run`` planned them."""
    from ..protocol import unlearn_variants

    return unlearn_variants(exp, type(exp.unlearn))


def collect_rows(run_dir: Path, exp) -> tuple[list[dict], dict]:
    from ..metrics import gap_closed

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
            rows.append(
                {
                    "attack": manifest["attack"],
                    "method": name,
                    "budget": None,
                    "variant": name,
                    "seed": seed,
                    "metrics": m,
                    "selected": None,  # initial and retrain are always shown
                    "within_tolerance": None,
                }
            )
        for v in variants(exp):
            info = read_json(v.unlearn_dir(d) / "unlearn_info.json")
            ev = d / "eval" / v.model_id / "eval_results.json"
            m = read_json(ev) if ev.is_file() and not info["diverged"] else {}
            diag = d / "diag" / v.model_id / "diagnostics.json"
            if diag.is_file() and not info["diverged"]:
                m.update({k: x for k, x in read_json(diag).items() if k != "n_params"})
            m.update(
                compute_fraction=info["compute_fraction"],
                wall_seconds=info["wall_seconds"],
                diverged=info["diverged"],
                diverged_step=info["diverged_step"],
                steps=info["steps"],
                method_args=info["method_args"],
                overrides=dict(v.overrides),
            )
            m["gap_closed"] = (
                gap_closed(base["initial"][metric], m[metric], base["retrain"][metric]) if metric in m else None
            )
            rows.append(
                {
                    "attack": manifest["attack"],
                    "method": v.method,
                    "budget": v.budget,
                    "variant": v.model_id,
                    "seed": seed,
                    "metrics": m,
                }
            )
    return rows, manifests


def select_variants(rows: list[dict], tolerance: float) -> dict:
    """Per (method, budget): the grid point with the highest mean gap closed among those whose mean clean accuracy is
    within ``tolerance`` of the initial model's and that never diverged. Marks the chosen rows ``selected`` and
    returns {(method, budget): (variant, within_tolerance)}; when no point qualifies, the highest-gap point is shown
    instead, flagged ``within_tolerance: false`` (the report says so)."""
    init_acc, _, _ = mean_std([r["metrics"].get("clean_accuracy") for r in rows if r["method"] == "initial"])
    by_key: dict = {}
    for r in rows:
        if r["budget"] is not None:
            by_key.setdefault((r["method"], r["budget"]), {}).setdefault(r["variant"], []).append(r)
    chosen = {}
    for key, vs in by_key.items():
        scored = []
        for variant, grp in vs.items():
            gap, _, _ = mean_std([r["metrics"].get("gap_closed") for r in grp])
            acc, _, _ = mean_std([r["metrics"].get("clean_accuracy") for r in grp])
            ok = (
                not any(r["metrics"].get("diverged") for r in grp)
                and acc is not None
                and init_acc is not None
                and acc >= init_acc - tolerance - 1e-12
            )
            scored.append((ok, -math.inf if gap is None else gap, variant))
        eligible = [x for x in scored if x[0]]
        ok, _, variant = max(eligible or scored, key=lambda x: x[1])
        chosen[key] = (variant, bool(eligible))
        for r in rows:
            if (r["method"], r["budget"]) == key:
                r["selected"] = r["variant"] == variant
                r["within_tolerance"] = bool(eligible) if r["variant"] == variant else None
    return chosen


def _groups(rows):
    """[((method, budget, variant), rows over seeds)] in first-seen order."""
    keys = []
    for r in rows:
        k = (r["method"], r["budget"], r["variant"])
        if k not in keys:
            keys.append(k)
    return [(k, [r for r in rows if (r["method"], r["budget"], r["variant"]) == k]) for k in keys]


def _table(rows, cols, marker: bool) -> list[str]:
    lines = ["| model | budget | " + " | ".join(cols) + " | diverged |", "|---|---|" + "---|" * len(cols) + "---|"]
    for (method, budget, variant), grp in _groups(rows):
        cells = [_fmt(*mean_std([r["metrics"].get(c) for r in grp])[:2]) for c in cols]
        if "gap_closed" in cols and all(r["metrics"].get("poison_effect") is False for r in grp):
            # No seed of this row has a poison effect to unlearn: the formula's number means nothing (Verdict above).
            cells[cols.index("gap_closed")] = "not meaningful: no poison effect"
        n_div = sum(bool(r["metrics"].get("diverged")) for r in grp)
        name = label(method, budget, variant)
        if marker and grp[0].get("selected"):
            name = f"**{name}**"
        if grp[0].get("within_tolerance") is False:  # selected although no grid point kept utility
            name += " (!)"
        lines.append(
            f"| {name} | {'–' if budget is None else f'{budget:g}'} | "
            + " | ".join(cells)
            + f" | {n_div}/{len(grp)} |"
        )
    return lines


def attack_class(exp, attack: str):
    """The attack class of a run (its report columns, whether it has the Gaussian audit's sections), looked up in
    the registry of the run's track (a track registers its attacks when it loads)."""
    from ..registry import get_attack

    return get_attack(attack, exp.track).attack_cls


def render_markdown(rows, exp, manifests, env) -> str:
    from ..metrics import stouffer_z
    from ..protocol import nesting_notes
    from ..tracks import get_track

    attack = rows[0]["attack"]
    metric = manifests[exp.seeds[0]]["metric"]
    attack_cls = attack_class(exp, attack)
    chosen = chosen_rows(rows)
    tol = exp.selection_tolerance
    n_variants = len({r["variant"] for r in rows if r["budget"] is not None})
    n_keys = len({(r["method"], r["budget"]) for r in rows if r["budget"] is not None})
    lines = [
        f"# llm-unlearn report: {attack} attack",
        "",
        get_track(exp.track).describe(exp),
        f"Seeds {exp.seeds}, methods {exp.methods}, budgets {exp.budgets}.",
        *nesting_notes(exp, type(exp.unlearn)),
        f"Poison metric: `{metric}`; gap closed = (M(initial) - M(updated)) / (M(initial) - M(retrain)): "
        "1 = as good as retraining, 0 = no effect, < 0 = the poison got stronger.",
        "",
        "## Mean ± std over seeds",
        "",
    ]
    if n_variants > n_keys:
        lines += [
            f"Hyper-parameter grids ran {n_variants} unlearning variants for {n_keys} method x budget pairs. "
            "Per method and budget the table shows the variant with the most gap closed among those whose mean "
            f"clean accuracy stays within {tol * 100:g} points of the initial model's and that never diverged; (!) "
            "marks a pair where no variant did (its best-gap variant is shown). Every variant is in the full table "
            "below and in results.json.",
            "",
        ]
    cols = list(attack_cls.report_columns or ("clean_accuracy", metric, "gap_closed", "mia_auc", "compute_fraction"))
    lines += _table(chosen, cols, marker=False)
    if any("shift_cosine" in r["metrics"] for r in chosen):
        lines += [
            "",
            "## Where unlearning moved the weights (section 6 diagnostics)",
            "",
            "shift_ratio = ||theta_updated - theta_initial|| / ||theta_retrain - theta_initial|| (how far it "
            "travelled, relative to the poison-induced shift); shift_cosine = cos(theta_updated - theta_initial, "
            "theta_retrain - theta_initial) (1 = straight towards retraining); dist_ratio = "
            "||theta_updated - theta_retrain|| / ||theta_initial - theta_retrain|| (1 = no closer to the gold model).",
            "",
        ]
        lines += _table(
            [r for r in chosen if r["budget"] is not None], ["shift_ratio", "shift_cosine", "dist_ratio"], marker=False
        )
    if attack_cls.gus_audit:
        lines += ["", "## Gaussian test per seed and pooled (Stouffer z = sum z / sqrt(#seeds))", ""]
        lines.append(
            "| model | budget | "
            + " | ".join(f"z seed {s}" for s in exp.seeds)
            + " | pooled z | pooled p | audit verdict (llm-unlearn audit's rule, pooled) |"
        )
        lines.append("|---|---|" + "---|" * (len(exp.seeds) + 3))
        from scipy.stats import norm

        from .verdicts import verdict_cell

        for (method, budget, variant), grp in _groups(chosen):
            zs = [r["metrics"].get("gus_z") for r in grp]
            ok = [z for z in zs if z is not None]
            pooled = stouffer_z(ok) if ok else None
            cells = ["–" if z is None else f"{z:+.2f}" for z in zs]
            p = "–" if pooled is None else f"{2 * norm.sf(abs(pooled)):.2g}"
            lines.append(
                f"| {label(method, budget, variant)} | {'–' if budget is None else f'{budget:g}'} | "
                + " | ".join(cells)
                + f" | {'–' if pooled is None else f'{pooled:+.2f}'} | {p} | {verdict_cell(grp)} |"
            )
    if n_variants > n_keys:
        lines += ["", "## Every grid point (selected in bold)", ""]
        lines += _table([r for r in rows if r["budget"] is not None], ["clean_accuracy", metric, "gap_closed"], True)
    lines += [
        "",
        "Plots: `gap_closed.png` (gap closed vs budget, selected variants)"
        + (", `gus_hist.png`" if attack_cls.gus_audit else "")
        + ".",
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


def main(cfg: ReportConfig) -> Path:
    from ..configs import to_dict
    from ..locks import DirLock
    from ..outputs import remove_temporary
    from ..tracks import load_experiment
    from .report_relearn import plot_relearn, relearn_markdown, relearn_rows, with_relearning
    from .verdicts import add_row_verdicts

    if cfg.run_dir is None:
        raise ConfigError("run_dir is required")
    run_dir = Path(cfg.run_dir)
    exp = load_experiment(run_dir)
    out = Path(cfg.output_dir or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The run dir (not written while a run works on it) and the report's dir; re-entrant: `run` holds its run dir.
    with DirLock(run_dir), DirLock(out):
        remove_temporary(out, REPORT_FILES)  # what a killed report left (e.g. .gap_closed.png.*.tmp)
        rows, manifests = collect_rows(run_dir, exp)
        no_effect = flag_no_effect(rows, manifests)
        select_variants(rows, exp.selection_tolerance)
        add_row_verdicts(rows)
        relearned = relearn_rows(run_dir, exp, rows)  # after selection and verdicts, which read rows alone
        metric = manifests[exp.seeds[0]]["metric"]
        env = environment_info(exp.seeds)
        write_json(out / "results.json", {"config": to_dict(exp), "environment": env, "rows": rows + relearned})
        plot_relearn(rows, relearned, metric, out)
        plot_gap_closed(rows, out)
        if attack_class(exp, rows[0]["attack"]).gus_audit:
            plot_gus_hist(run_dir, exp, rows, out)
        report = out / "report.md"
        text = with_verdict(render_markdown(rows, exp, manifests, env), rows, exp.seeds, no_effect)
        text = with_relearning(text, relearn_markdown(rows, relearned, exp, metric))
        atomic_write_text(report, text)
    return report


def flag_no_effect(rows: list[dict], manifests: dict) -> dict:
    """Seeds whose initial model's poison metric is not distinguishable from the gold model's
    (:func:`llm_unlearn.protocol.poison_effect_problem`): every row of such a seed gets ``poison_effect: false`` and
    ``gap_closed_note`` = :data:`~llm_unlearn.protocol.NO_EFFECT` (its ``gap_closed`` stays, as a record of what the
    formula gives); the others ``poison_effect: true``. Returns {seed: why} for the seeds without an effect."""
    from ..protocol import NO_EFFECT, poison_effect_problem

    out = {}
    for seed, manifest in manifests.items():
        base = {r["method"]: r["metrics"] for r in rows if r["seed"] == seed and r["budget"] is None}
        why = poison_effect_problem(manifest["metric"], base.get("initial", {}), base.get("retrain", {}))
        if why is not None:
            out[seed] = why
        for r in rows:
            if r["seed"] == seed:
                r["metrics"]["poison_effect"] = why is None
                if why is not None:
                    r["metrics"]["gap_closed_note"] = NO_EFFECT
    return out


def with_verdict(text: str, rows: list[dict], seeds: list, no_effect: dict) -> str:
    """The report with its verdict before the tables: per seed, whether the initial model carries a poison effect
    to unlearn; per selected method and budget, its gap closed over the seeds that do, or, where none does,
    :data:`~llm_unlearn.protocol.NO_EFFECT` instead of a number."""
    from ..protocol import NO_EFFECT

    if not no_effect:
        return text
    lines = ["## Verdict: is there a poison effect to unlearn?", ""]
    for seed in seeds:
        if seed in no_effect:
            lines.append(f"- seed {seed}: **{NO_EFFECT}** ({no_effect[seed]}).")
        else:
            lines.append(f"- seed {seed}: a poison effect to unlearn; gap closed is meaningful.")
    effect = [s for s in seeds if s not in no_effect]
    lines.append("")
    for (method, budget, variant), grp in _groups(chosen_rows(rows)):
        if budget is None:
            continue
        name = f"{label(method, budget, variant)}, budget {budget:g}"
        if not effect:
            lines.append(f"- {name}: {NO_EFFECT}.")
            continue
        mean, std, n = mean_std([r["metrics"].get("gap_closed") for r in grp if r["seed"] in effect])
        lines.append(f"- {name}: gap closed {_fmt(mean, std)} over seed(s) {effect} (the tables average all seeds).")
    head, sep, tail = text.partition("## Mean ± std over seeds")
    return head + "\n".join(lines) + "\n\n" + sep + tail if sep else text + "\n" + "\n".join(lines) + "\n"


def make_parser():
    from ..flags import make_parser as _mp

    return _mp(ReportConfig, prog="llm-unlearn report")


def cli(argv=None) -> None:
    print(main(parse_config(ReportConfig, argv, prog="llm-unlearn report")))
