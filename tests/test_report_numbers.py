"""The report's numbers are right (issue 12): every number of a finished run's ``results.json``, ``report.md`` and
pushed model card is recomputed here from the stages' own outputs (``eval_results.json``, ``unlearn_info.json``,
``manifest.json``, ``experiment.yaml``), with the formulas written out from their definitions and none of
llm_unlearn's report, metrics or hub code:

- gap closed = (M(initial) - M(updated)) / (M(initial) - M(gold)) with M = ``gus_mean`` (Gaussian attack) or ``asr``
  (backdoor), computed within each seed from that seed's own initial and gold model; undefined when
  M(initial) = M(gold); the initial model closes 0, the gold model 1;
- per model: mean and *sample* std (ddof=1; 0 for a single seed) over the seeds that have the value;
- Stouffer's pooled z = sum(z_i) / sqrt(k) over the k seeds' GUS z, two-sided p = 2 (1 - Phi(|z|)) (scipy);
- grid selection, per method and budget: among the grid points whose mean clean accuracy is >= the initial model's
  mean minus ``selection_tolerance`` and that diverged in no seed, the one with the largest mean gap closed; when none
  qualifies, the largest-gap point is shown and flagged ``within_tolerance: false``.

The run is a real ``run`` (two seeds, ``gd`` and a three-point ``ga`` learning-rate grid, ~10 s on one CPU core). The
selection is also re-reported at other tolerances and with one seed of a grid point marked diverged (copies of the
run's JSON files; the report reads nothing else), chosen from the data so that each part of the rule decides.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import statistics
from pathlib import Path

import pytest
import yaml
from helpers import TINY_SHAPE

SEEDS = [0, 1]
EXPERIMENT = {
    "seeds": SEEDS,
    "tiny": dict(TINY_SHAPE),
    # 8 epochs on 120 short reviews, 20 % poisoned: the poison takes (initial GUS mean well below the gold model's),
    # so gaps are O(1) numbers rather than ratios of noise; GA at a high rate then wrecks accuracy for a big gap.
    "poison": {
        "attack": "gaussian",
        "poison_fraction": 0.2,
        "embedded_n_train": 120,
        "embedded_n_test": 40,
        "embedded_min_sentences": 1,
        "embedded_max_sentences": 1,
    },
    "train": {"num_train_epochs": 8, "learning_rate": 1e-2, "per_device_train_batch_size": 16, "progress": False},
    "unlearn": {"per_device_train_batch_size": 8, "progress": False},
    "eval": {"fresh_noise_draws": 3, "max_new_tokens": 2},
    "methods": ["gd", "ga"],
    "grid": {"ga": {"learning_rate": [1e-4, 3e-3, 3e-2]}},
    "budgets": [0.2],
    "selection_tolerance": 0.02,
    "diagnostics": False,
}
POISON_METRIC = {"gaussian": "gus_mean", "backdoor": "asr"}  # the paper's poison metric per attack
BASE = ("initial", "retrain")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from llm_unlearn import run_experiment

    out = tmp_path_factory.mktemp("report_numbers_run")
    run_experiment(EXPERIMENT, output_dir=str(out))
    return out


# ---------------------------------------------------------------------------------------------------------------
# The independent recomputation: stage outputs in, the report's numbers out.


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _gap(m_initial, m_updated, m_gold):
    if m_initial is None or m_updated is None or m_gold is None or abs(m_initial - m_gold) < 1e-12:
        return None
    return (m_initial - m_updated) / (m_initial - m_gold)


def _mean_std(values):
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _stouffer(zs):
    return sum(zs) / math.sqrt(len(zs))


def _two_sided_p(z):
    from scipy.stats import norm

    return 2.0 * (1.0 - norm.cdf(abs(z)))


def _expected(run_dir: Path) -> dict:
    """{"seeds", "tolerance", "attack", "metric", "models": {variant: {"method", "budget", "seeds": {seed: {...}}}}}
    where each seed's entry holds the eval metrics (empty if diverged), ``diverged``, ``compute_fraction`` and the
    gap closed computed here."""
    exp = yaml.safe_load((run_dir / "experiment.yaml").read_text())
    seeds = exp["seeds"]
    models: dict = {}
    attacks = set()
    for s in seeds:
        d = run_dir / f"seed_{s}"
        manifest = _read(d / "poison" / "manifest.json")
        attacks.add(manifest["attack"])
        metric = POISON_METRIC[manifest["attack"]]
        base = {name: _read(d / "eval" / name / "eval_results.json") for name in BASE}
        for name in BASE:
            entry = models.setdefault(name, {"method": name, "budget": None, "seeds": {}})
            entry["seeds"][s] = {
                "metrics": base[name],
                "diverged": _read(d / name / "training_info.json")["diverged"],
                "compute_fraction": 1.0 if name == "retrain" else None,
                "gap_closed": _gap(base["initial"][metric], base[name][metric], base["retrain"][metric]),
            }
        for u in sorted((d / "unlearn").iterdir()):
            info = _read(u / "unlearn_info.json")
            ev = d / "eval" / u.name / "eval_results.json"
            metrics = {} if info["diverged"] else _read(ev)
            entry = models.setdefault(u.name, {"method": info["method"], "budget": info["budget"], "seeds": {}})
            assert (entry["method"], entry["budget"]) == (info["method"], info["budget"])
            entry["seeds"][s] = {
                "metrics": metrics,
                "diverged": info["diverged"],
                "compute_fraction": info["compute_fraction"],
                "gap_closed": _gap(base["initial"][metric], metrics.get(metric), base["retrain"][metric]),
            }
    assert len(attacks) == 1
    attack = attacks.pop()
    for v, entry in models.items():
        assert sorted(entry["seeds"]) == sorted(seeds), f"{v} is missing a seed"
    return {
        "seeds": seeds,
        "tolerance": exp["selection_tolerance"],
        "attack": attack,
        "metric": POISON_METRIC[attack],
        "models": models,
    }


def _value(exp: dict, variant: str, seed: int, key: str):
    e = exp["models"][variant]["seeds"][seed]
    return e[key] if key in ("gap_closed", "compute_fraction", "diverged") else e["metrics"].get(key)


def _over_seeds(exp: dict, variant: str, key: str):
    return _mean_std([_value(exp, variant, s, key) for s in exp["seeds"]])


def _select(exp: dict, tolerance: float) -> dict:
    """{(method, budget): (variant, within_tolerance, eligible variants)} by the rule in the module docstring."""
    init_acc, _ = _over_seeds(exp, "initial", "clean_accuracy")
    groups: dict = {}
    for v, entry in exp["models"].items():
        if entry["budget"] is not None:
            groups.setdefault((entry["method"], entry["budget"]), []).append(v)
    chosen = {}
    for key, vs in groups.items():

        def gap(v):
            g = _over_seeds(exp, v, "gap_closed")[0]
            return -math.inf if g is None else g

        eligible = []
        for v in vs:
            acc = _over_seeds(exp, v, "clean_accuracy")[0]
            diverged = any(_value(exp, v, s, "diverged") for s in exp["seeds"])
            if not diverged and acc is not None and acc >= init_acc - tolerance:
                eligible.append(v)
        pool = eligible or vs
        best = max(gap(v) for v in pool)
        winners = [v for v in pool if gap(v) == best]
        assert len(winners) == 1, f"{key}: a tie in gap closed {winners}; the fixture cannot say which is right"
        chosen[key] = (winners[0], bool(eligible), eligible)
    return chosen


# ---------------------------------------------------------------------------------------------------------------
# Reading what the report wrote.


def _results_rows(run_dir: Path) -> dict:
    rows = _read(run_dir / "results.json")["rows"]
    by_key = {(r["variant"], r["seed"]): r for r in rows}
    assert len(by_key) == len(rows), "two results.json rows for one model and seed"
    return by_key


def _md_tables(text: str) -> dict:
    """{section heading: [row dicts keyed by the header's cells]} for every markdown table of report.md."""
    tables, heading, lines = {}, None, text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            heading = line[3:].strip()
        elif line.startswith("|") and i + 1 < len(lines) and set(lines[i + 1].replace("|", "")) <= {"-"}:
            header = [c.strip() for c in line.strip().strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                assert len(cells) == len(header), lines[i]
                rows.append(dict(zip(header, cells)))
                i += 1
            tables[heading] = rows
            continue
        i += 1
    return tables


def _parse_mean_std(cell: str):
    if cell == "–":
        return None, None
    m = re.fullmatch(r"(-?\d+\.\d+) ± (-?\d+\.\d+)", cell)
    assert m, f"not a 'mean ± std' cell: {cell!r}"
    return float(m.group(1)), float(m.group(2))


def _close_to_digits(printed: float, value: float, digits: int) -> bool:
    """``printed`` is ``value`` rounded to ``digits`` decimals (half an ulp of the print, plus float slack)."""
    return abs(printed - value) <= 0.5 * 10**-digits + 1e-9


def _close_to_sig(printed: float, value: float, sig: int) -> bool:
    """``printed`` is ``value`` rounded to ``sig`` significant digits (the report's ``:.2g``)."""
    if value == 0:
        return printed == 0
    step = 10 ** (math.floor(math.log10(abs(value))) - sig + 1)
    return abs(printed - value) <= 0.5 * step * (1 + 1e-9) + 1e-300


def _label_to_variant(exp: dict) -> dict:
    """The report's row label of every model (method, plus the grid point the variant id adds after the budget)."""
    out = {}
    for v, entry in exp["models"].items():
        if entry["budget"] is None:
            out[v] = v
            continue
        prefix = f"{entry['method']}_b{entry['budget']:g}"
        assert v.startswith(prefix), v
        point = v[len(prefix) :].lstrip("_")
        out[f"{entry['method']} ({point})" if point else entry["method"]] = v
    return out


def _row_variant(cell: str, labels: dict) -> tuple[str, bool, bool]:
    """(variant, bold, flagged (!)) of a table's model cell."""
    flagged = cell.endswith(" (!)")
    name = cell.removesuffix(" (!)")
    bold = name.startswith("**") and name.endswith("**")
    name = name.strip("*")
    assert name in labels, f"report row {cell!r} names no model of the run ({sorted(labels)})"
    return labels[name], bold, flagged


# ---------------------------------------------------------------------------------------------------------------
# The fixture must be able to catch what these tests are for.


def test_fixture_exercises_what_the_checks_need(run_dir):
    exp = _expected(run_dir)
    assert len(exp["seeds"]) >= 2 and exp["attack"] == "gaussian"
    unlearned = [v for v, e in exp["models"].items() if e["budget"] is not None]
    gaps = [_value(exp, v, s, "gap_closed") for v in unlearned for s in exp["seeds"]]
    assert all(g is not None for g in gaps)
    # A swapped gap (1 - gap) is visible: some gap is far from 0.5, on a selected model too.
    assert any(abs(g - 0.5) > 0.1 for g in gaps)
    # Stouffer's sum / sqrt(k) differs from the mean z by more than the report's 2 printed decimals.
    zs = [[_value(exp, v, s, "gus_z") for s in exp["seeds"]] for v in exp["models"]]
    assert any(abs(_stouffer(z) - statistics.fmean(z)) > 0.05 for z in zs)
    # One method has a grid of >= 2 points whose mean gaps differ.
    by_method = {}
    for v in unlearned:
        by_method.setdefault(exp["models"][v]["method"], []).append(_over_seeds(exp, v, "gap_closed")[0])
    assert any(len(g) >= 2 and len(set(g)) == len(g) for g in by_method.values())


# ---------------------------------------------------------------------------------------------------------------
# (a) results.json


def test_results_json_rows_match_the_recomputed_numbers(run_dir):
    exp = _expected(run_dir)
    rows = _results_rows(run_dir)
    assert set(rows) == {(v, s) for v in exp["models"] for s in exp["seeds"]}
    chosen = _select(exp, exp["tolerance"])
    for (v, s), row in rows.items():
        entry = exp["models"][v]
        assert (row["method"], row["budget"], row["attack"]) == (entry["method"], entry["budget"], exp["attack"])
        got, want = row["metrics"], entry["seeds"][s]
        for key, value in want["metrics"].items():  # every eval metric is copied through unchanged
            assert got.get(key) == value, (v, s, key)
        assert got["diverged"] == want["diverged"], (v, s)
        assert got["compute_fraction"] == want["compute_fraction"], (v, s)
        if want["gap_closed"] is None:
            assert got["gap_closed"] is None, (v, s)
        else:
            assert got["gap_closed"] == pytest.approx(want["gap_closed"], rel=1e-12, abs=1e-12), (v, s)
        if v == "initial":
            assert got["gap_closed"] == 0
        if v == "retrain":
            assert got["gap_closed"] == pytest.approx(1.0, abs=1e-12)
        # the selection flags of the run's own tolerance
        if entry["budget"] is None:
            assert row["selected"] is None and row["within_tolerance"] is None, (v, s)
        else:
            pick, within, _ = chosen[(entry["method"], entry["budget"])]
            assert row["selected"] is (v == pick), (v, s, pick)
            assert row["within_tolerance"] == (within if v == pick else None), (v, s)


# ---------------------------------------------------------------------------------------------------------------
# The selection rule under other tolerances and a divergence


def _re_report(run_dir: Path, dest: Path, tolerance: float, diverge: tuple[str, int] | None = None) -> Path:
    """A copy of the run's JSON/YAML files (no weights) with another selection_tolerance (and one model of one seed
    marked diverged, as the unlearn stage records it), reported by the real report stage."""
    from llm_unlearn.stages.report import ReportConfig
    from llm_unlearn.stages.report import main as report

    shutil.copytree(
        run_dir,
        dest,
        ignore=shutil.ignore_patterns("*.safetensors", "tokenizer*", "*.png", "report.md", "results.json"),
    )
    cfg = yaml.safe_load((dest / "experiment.yaml").read_text())
    cfg["selection_tolerance"] = tolerance
    cfg["output_dir"] = str(dest)
    (dest / "experiment.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    if diverge is not None:
        variant, seed = diverge
        p = dest / f"seed_{seed}" / "unlearn" / variant / "unlearn_info.json"
        info = _read(p)
        info.update(diverged=True, diverged_step=info["steps"])
        p.write_text(json.dumps(info))
        shutil.rmtree(dest / f"seed_{seed}" / "eval" / variant)  # a diverged model is never evaluated
    report(ReportConfig(run_dir=str(dest)))
    return dest


def _check_selection(run_dir: Path) -> dict:
    exp = _expected(run_dir)
    chosen = _select(exp, exp["tolerance"])
    rows = _results_rows(run_dir)
    for key, (pick, within, _) in chosen.items():
        grp = [r for r in rows.values() if (r["method"], r["budget"]) == key]
        assert {r["variant"] for r in grp if r["selected"]} == {pick}, (key, exp["tolerance"])
        assert all(r["within_tolerance"] is within for r in grp if r["selected"]), key
    return chosen


def test_selection_follows_the_rule_at_tolerances_where_it_matters(run_dir, tmp_path):
    exp = _expected(run_dir)
    init_acc, _ = _over_seeds(exp, "initial", "clean_accuracy")
    grid = [v for v, e in exp["models"].items() if e["budget"] is not None]
    # (accuracies are fractions of the test set: equal deficits may differ in the last bits, hence the rounding)
    deficits = sorted({round(init_acc - _over_seeds(exp, v, "clean_accuracy")[0], 9) for v in grid})
    # Tolerances strictly between the grid points' accuracy deficits (each admits one more point), none, and all.
    tolerances = {exp["tolerance"], 1.0}
    tolerances |= {(a + b) / 2 for a, b in zip(deficits, deficits[1:]) if 0 <= (a + b) / 2 <= 1}
    if deficits[0] > 0:
        tolerances.add(deficits[0] / 2)
    for t in tolerances:
        assert all(abs(t - d) > 1e-6 for d in deficits), "a tolerance on a boundary: floats decide, not the rule"

    seen = {}
    for i, t in enumerate(sorted(tolerances)):
        d = run_dir if t == exp["tolerance"] else _re_report(run_dir, tmp_path / f"tol{i}", t)
        for key, (pick, within, eligible) in _check_selection(d).items():
            seen.setdefault(key, []).append((t, pick, within, eligible))

    # The checks above would have caught a rule that ignored the tolerance, took the least gap, or picked a
    # fixed point: some grid has tolerances with different winners, one where the best gap is excluded by accuracy,
    # and one where >= 2 points qualify.
    def best_overall(key):
        vs = [v for v in grid if (exp["models"][v]["method"], exp["models"][v]["budget"]) == key]
        return max(vs, key=lambda v: _over_seeds(exp, v, "gap_closed")[0])

    assert any(len({p for _, p, _, _ in s}) >= 2 for s in seen.values()), seen
    assert any(w and p != best_overall(k) for k, s in seen.items() for _, p, w, _ in s), seen
    assert any(len(e) >= 2 for s in seen.values() for _, _, _, e in s), seen
    assert any(not w for s in seen.values() for _, _, w, _ in s) or deficits[0] <= 0, seen


def test_selection_skips_a_grid_point_that_diverged_in_one_seed(run_dir, tmp_path):
    exp = _expected(run_dir)
    # At tolerance 1 every point qualifies by accuracy. The point holding the largest single-seed gap diverges in its
    # other seed, so its remaining mean gap is the best of all: only the divergence rule can exclude it.
    key = next(k for k, c in _select(exp, 1.0).items() if len(c[2]) >= 2)
    group = [v for v, e in exp["models"].items() if (e["method"], e["budget"]) == key]
    point, best_seed = max(
        ((v, s) for v in group for s in exp["seeds"]), key=lambda vs: _value(exp, vs[0], vs[1], "gap_closed")
    )
    seed = next(s for s in exp["seeds"] if s != best_seed)
    d = _re_report(run_dir, tmp_path / "diverged", 1.0, diverge=(point, seed))
    after = _expected(d)
    assert after["models"][point]["seeds"][seed]["diverged"]
    assert max(group, key=lambda v: _over_seeds(after, v, "gap_closed")[0]) == point
    chosen = _check_selection(d)
    assert chosen[key][0] != point and chosen[key][1]
    row = _results_rows(d)[(point, seed)]
    assert row["metrics"]["diverged"] is True and row["metrics"]["gap_closed"] is None


# ---------------------------------------------------------------------------------------------------------------
# (b) report.md


def test_report_md_tables_print_the_recomputed_numbers(run_dir):
    exp = _expected(run_dir)
    chosen = _select(exp, exp["tolerance"])
    selected = {pick for pick, _, _ in chosen.values()}
    flagged = {pick for pick, within, _ in chosen.values() if not within}
    labels = _label_to_variant(exp)
    tables = _md_tables((run_dir / "report.md").read_text())
    main = tables["Mean ± std over seeds"]
    stouffer = next(t for h, t in tables.items() if h.startswith("Gaussian test per seed and pooled"))
    every = tables["Every grid point (selected in bold)"]
    n_seeds = len(exp["seeds"])

    def check_mean_std(row, variant, col):
        mean, std = _parse_mean_std(row[col])
        want_mean, want_std = _over_seeds(exp, variant, col)
        if want_mean is None:
            assert mean is None, (variant, col, row[col])
            return
        assert _close_to_digits(mean, want_mean, 3), (variant, col, row[col], want_mean)
        assert _close_to_digits(std, want_std, 3), (variant, col, row[col], want_std)

    # The main table: initial, gold and exactly the selected point per method and budget.
    shown = [_row_variant(r["model"], labels) for r in main]
    assert [v for v, _, _ in shown[:2]] == ["initial", "retrain"]
    assert sorted(v for v, _, _ in shown[2:]) == sorted(selected)
    for row, (v, _, bang) in zip(main, shown):
        assert bang == (v in flagged), row["model"]
        metric_cols = [c for c in row if c not in ("model", "budget", "diverged")]
        assert {"clean_accuracy", exp["metric"], "gap_closed", "gus_z"} <= set(metric_cols)
        for col in metric_cols:
            check_mean_std(row, v, col)
        n_div = sum(bool(_value(exp, v, s, "diverged")) for s in exp["seeds"])
        assert row["diverged"] == f"{n_div}/{n_seeds}"

    # Per-seed and Stouffer-pooled GUS z with its two-sided p.
    shown = [_row_variant(r["model"], labels)[0] for r in stouffer]
    assert shown[:2] == ["initial", "retrain"] and sorted(shown[2:]) == sorted(selected)
    for row, v in zip(stouffer, shown):
        zs = [_value(exp, v, s, "gus_z") for s in exp["seeds"]]
        for s, z in zip(exp["seeds"], zs):
            assert _close_to_digits(float(row[f"z seed {s}"]), z, 2), (v, s, row)
        z = _stouffer(zs)
        assert _close_to_digits(float(row["pooled z"]), z, 2), (v, row["pooled z"], z)
        assert _close_to_sig(float(row["pooled p"]), _two_sided_p(z), 2), (v, row["pooled p"], _two_sided_p(z))

    # Every grid point, the selected ones in bold.
    grid = [v for v, e in exp["models"].items() if e["budget"] is not None]
    shown = [_row_variant(r["model"], labels) for r in every]
    assert sorted(v for v, _, _ in shown) == sorted(grid)
    for row, (v, bold, bang) in zip(every, shown):
        assert bold == (v in selected) and bang == (v in flagged), row["model"]
        for col in ("clean_accuracy", exp["metric"], "gap_closed"):
            check_mean_std(row, v, col)


# ---------------------------------------------------------------------------------------------------------------
# (c) the model card `push` writes (dry run: staged offline, nothing uploaded)


def test_pushed_model_card_and_results_carry_the_recomputed_numbers(run_dir, tmp_path):
    from huggingface_hub import ModelCard

    from llm_unlearn.configs import build_config
    from llm_unlearn.stages.push import PushConfig
    from llm_unlearn.stages.push import main as push

    exp = _expected(run_dir)
    seed = exp["seeds"][-1]  # not the first seed: a card must carry its own seed's numbers
    grid = [v for v, e in exp["models"].items() if e["budget"] is not None]
    card_keys = {
        "accuracy": "clean_accuracy",
        "gus_mean": "gus_mean",
        "gus_z": "gus_z",
        "gus_p": "gus_p",
        "gap_closed": "gap_closed",
        "mia_auc": "mia_auc",
    }
    for variant in ["initial", "retrain", *grid]:
        folder = run_dir / f"seed_{seed}" / (f"unlearn/{variant}" if variant in grid else variant)
        dest = push(
            build_config(
                PushConfig,
                {
                    "folder": str(folder),
                    "repo_id": f"org/{variant.replace('.', '-')}",
                    "dry_run": True,
                    "staging_dir": str(tmp_path / variant),
                },
            )
        )
        card = ModelCard.load(Path(dest) / "README.md")
        got = {r.metric_type: r.metric_value for r in card.data.eval_results}
        assert set(got) == set(card_keys), (variant, sorted(got))  # Gaussian attack: no ASR
        for metric_type, key in card_keys.items():
            want = _value(exp, variant, seed, key)
            assert got[metric_type] == pytest.approx(want, rel=1e-12, abs=1e-12), (variant, metric_type)
        # the card's p-value is the two-sided normal p of its z
        assert got["gus_p"] == pytest.approx(_two_sided_p(got["gus_z"]), rel=1e-6)

        # The "Measured (this seed)" table: this seed's initial, gold and this model, printed to 4 significant digits.
        lines = card.text.split("## Measured (this seed)", 1)[1].strip().splitlines()
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        assert header == ["model", "clean accuracy", "ASR", "GUS mean", "GUS z", "GUS p", "gap closed"]
        table = {}
        for line in lines[2:]:
            if not line.startswith("|"):
                break
            cells = [c.strip() for c in line.strip("|").split("|")]
            table[cells[0]] = cells[1:]
        assert set(table) == {"initial", "retrain", variant}
        for v, cells in table.items():
            for cell, key in zip(cells, ("clean_accuracy", "asr", "gus_mean", "gus_z", "gus_p", "gap_closed")):
                want = _value(exp, v, seed, key)
                if want is None:
                    assert cell == "–", (variant, v, key, cell)
                else:
                    assert _close_to_sig(float(cell), want, 4), (variant, v, key, cell, want)

        # The staged results.json: the same seed's rows, the recomputed gap.
        staged = _read(Path(dest) / "results.json")["rows"]
        assert {(r["variant"], r["seed"]) for r in staged} == {(v, seed) for v in ("initial", "retrain", variant)}
        for r in staged:
            want = _value(exp, r["variant"], seed, "gap_closed")
            assert r["metrics"]["gap_closed"] == pytest.approx(want, rel=1e-12, abs=1e-12), r["variant"]


def test_every_model_carries_the_audit_verdict(run_dir):
    """results.json rows carry what ``llm-unlearn audit`` would say of each model, and report.md's Gaussian table the
    verdict of the pooled test, recomputed here from the per-seed z's (two-sided p < 0.01; invalid if any seed's
    fresh control is off or it has fewer than 10 poisons)."""
    rows = json.loads((run_dir / "results.json").read_text())["rows"]
    for r in rows:
        m = r["metrics"]
        valid = m["n_poison"] >= 10 and abs(m["fresh_gus_z"]) <= 3
        want = "invalid" if not valid else ("residual" if m["gus_p"] < 0.01 else "no_residual_detected")
        assert m["audit_verdict"] == want, (r["variant"], m["gus_p"], m["fresh_gus_z"])
    exp = _expected(run_dir)
    labels = _label_to_variant(exp)
    tables = _md_tables((run_dir / "report.md").read_text())
    stouffer = next(t for h, t in tables.items() if h.startswith("Gaussian test per seed and pooled"))
    col = next(k for k in stouffer[0] if k.startswith("audit verdict"))
    assert stouffer
    for line in stouffer:
        variant, _, _ = _row_variant(line["model"], labels)
        grp = [r for r in rows if r["variant"] == variant]
        z = _stouffer([r["metrics"]["gus_z"] for r in grp])
        p = _two_sided_p(z)
        if any(r["metrics"]["audit_verdict"] == "invalid" for r in grp):
            assert line[col] == "invalid", line
        else:
            verdict = "residual" if p < 0.01 else "no residual detected"
            assert line[col] == f"{verdict}, p = {p:.2g}", (line, z)
