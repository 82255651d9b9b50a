"""Verdicts in the reports: the audit's verdict per model of a run (``llm-unlearn audit``'s rule,
:func:`llm_unlearn.auditing.verdict_of`), pooled over seeds, and the paper's Table 1 for a suite: methods x attacks,
each cell whether the unlearned model still carries the poison.

Table 1 cells (per attack, the selected variant of each method at the largest budget, averaged over seeds):

* Gaussian attack: **poison left** when the pooled Gaussian test (Stouffer z over seeds) still detects the canaries
  at alpha = 0.01; otherwise **removed**.
* other attacks (ASR, accuracy under indiscriminate poisoning): **removed** when the method closed at least
  :data:`REMOVED_GAP` of the initial-to-gold gap on the attack's metric; otherwise **poison left**.
* **removed at a utility cost**: removed, but clean accuracy fell more than the run's ``selection_tolerance`` below
  the initial model's (the poison went with the model's usefulness).
* **no poison effect to unlearn**: every seed's initial model is indistinguishable from its gold model on the poison
  metric (the report's verdict, ``protocol.poison_effect_problem``): nothing to judge.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

REMOVED_GAP = 0.8  # gap closed on the poison metric that counts as removed for metrics without a test


def add_row_verdicts(rows: list[dict]) -> None:
    """Each row evaluated with the Gaussian audit gets ``audit_verdict`` (residual / no_residual_detected / invalid)
    and ``audit_reason`` in its metrics: what ``llm-unlearn audit`` would say of that model."""
    from ..auditing import verdict_of

    for r in rows:
        m = r["metrics"]
        if "gus_p" in m and "n_poison" in m:
            m["audit_verdict"], m["audit_reason"] = verdict_of(m)


def pooled_verdict(group: list[dict], alpha: float = 0.01) -> tuple[str, float | None, float | None]:
    """(verdict, pooled z, pooled p) over the seeds of one model: invalid if any seed's audit is invalid, else the
    Stouffer-pooled z-test at ``alpha``."""
    from scipy.stats import norm

    from ..metrics import stouffer_z

    verdicts = [r["metrics"].get("audit_verdict") for r in group]
    zs = [r["metrics"].get("gus_z") for r in group if r["metrics"].get("gus_z") is not None]
    if not zs or any(v is None for v in verdicts):
        return "–", None, None
    z = stouffer_z(zs)
    p = float(2 * norm.sf(abs(z)))
    if "invalid" in verdicts:
        return "invalid", z, p
    return ("residual" if p < alpha else "no_residual_detected"), z, p


def verdict_cell(group: list[dict]) -> str:
    v, _, p = pooled_verdict(group)
    if p is None or v == "invalid":
        return v
    return f"{v.replace('_', ' ')}, p = {p:.2g}"


def _mean(values):
    vals = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def table1_cells(results: dict) -> tuple[str, dict]:
    """(attack, {method: cell}) of one experiment's ``results.json``: the initial and gold models and each method's
    selected variant at the largest budget."""
    rows, cfg = results["rows"], results["config"]
    rows = [r for r in rows if not r.get("relearn_steps")]  # relearned models are the report's own section
    attack = rows[0]["attack"]
    tol = float(cfg.get("selection_tolerance", 0.05))
    init_acc = _mean([r["metrics"].get("clean_accuracy") for r in rows if r["method"] == "initial"])
    budgets = [r["budget"] for r in rows if r["budget"] is not None]
    top = max(budgets) if budgets else None
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["budget"] is None or (r["budget"] == top and r.get("selected")):
            groups.setdefault(r["method"], []).append(r)
    cells = {}
    for method, grp in groups.items():
        acc = _mean([r["metrics"].get("clean_accuracy") for r in grp])
        gap = _mean([r["metrics"].get("gap_closed") for r in grp])
        if all(r["metrics"].get("poison_effect") is False for r in grp):
            # the run's own rule (protocol.poison_effect_problem): the initial model carries nothing to remove
            cells[method] = f"no poison effect to unlearn (acc {acc:.2f})" if acc is not None else "no poison effect"
            continue
        if any(r["metrics"].get("gus_z") is not None for r in grp):
            v, z, p = pooled_verdict(grp)
            removed = v == "no_residual_detected"
            nums = f"z {z:+.1f}, p {p:.2g}" if z is not None else "no test"
            if v == "invalid":
                cells[method] = f"audit invalid ({nums})"
                continue
        else:
            removed = method == "retrain" or (gap is not None and gap >= REMOVED_GAP)
            nums = f"gap closed {gap:.2f}" if gap is not None else "gap –"
        cost = acc is not None and init_acc is not None and acc < init_acc - tol - 1e-12
        what = ("removed at a utility cost" if cost else "removed") if removed else "poison left"
        acc_txt = f"acc {acc:.2f}" if acc is not None else "acc –"
        gap_txt = f", gap {gap:.2f}" if gap is not None and "gap" not in nums else ""
        cells[method] = f"{what} ({nums}{gap_txt}, {acc_txt})"
    return attack, cells


def suite_table(result_files: list[Path]) -> str:
    """The suite's Table 1 (markdown): one row per model (initial, gold, methods), one column per attack."""
    columns, methods = [], []
    cells: dict[tuple[str, str], str] = {}
    for f in result_files:
        attack, by_method = table1_cells(json.loads(Path(f).read_text()))
        name = attack if attack not in columns else f"{attack} ({Path(f).parent.name})"
        columns.append(name)
        for m, c in by_method.items():
            if m not in methods:
                methods.append(m)
            cells[(m, name)] = c
    order = [m for m in ("initial", "retrain") if m in methods] + [
        m for m in methods if m not in ("initial", "retrain")
    ]
    lines = [
        "# Did unlearning remove the poison? (methods x attacks, the paper's Table 1)",
        "",
        "Each cell: the selected variant at the largest budget, averaged over seeds. Gaussian attack: the pooled "
        "Gaussian test at alpha 0.01 (poison left = the canaries are still detected). Other attacks: removed = at "
        f"least {REMOVED_GAP:g} of the initial-to-gold gap closed on the attack's metric. At a utility cost = clean "
        "accuracy more than the run's selection tolerance below the initial model's.",
        "",
        "| model | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for m in order:
        label = "gold (retrain)" if m == "retrain" else m
        lines.append(f"| {label} | " + " | ".join(cells.get((m, c), "–") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def verdict_lines(result_files: list[Path]) -> list[str]:
    """The run's last lines on the terminal: per attack, which unlearned models still carry a detectable residue of
    the poison and which do not (Table 1's cells, :func:`table1_cells`, grouped)."""
    lines = []
    for f in result_files:
        try:
            attack, cells = table1_cells(json.loads(Path(f).read_text()))
        except (OSError, ValueError, KeyError, IndexError):
            continue  # a run without rows (nothing finished) has no verdict to print
        groups: dict[str, list[str]] = {}
        for method, cell in cells.items():
            if method in ("initial", "retrain"):
                continue
            what = cell.split(" (", 1)[0]
            groups.setdefault(what, []).append(method)
        order = ["poison left", "removed at a utility cost", "removed"]
        parts = [f"{w}: {', '.join(groups[w])}" for w in order if w in groups]
        parts += [f"{w}: {', '.join(m)}" for w, m in groups.items() if w not in order]
        lines.append(f"verdict {attack} ({Path(f).parent.name}): " + ("; ".join(parts) or "no unlearned models"))
    return lines
