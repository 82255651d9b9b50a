"""What five budgets cost against one: CPU time of a 1-seed run with ``budgets: [0.02, 0.04, 0.06, 0.08, 0.1]`` over
the same run with ``budgets: [0.1]``, side by side in one process.

    python bench/nested_budgets.py [--recipe recipes/tiny/llm_gaussian.yaml] [--run_dir runs/bench_nested]
                                   [--nested_budgets true|false]

Each run is ``llm-unlearn run`` in a child process; its CPU time is user + sys over the child and every process it
started (workers, launched jobs), from ``getrusage(RUSAGE_CHILDREN)`` before and after. Wall time is printed too, but
at one seed it hides the difference behind idle workers: compare CPU time. Target (issue 17): ratio <= 1.35 with nested
budgets (one unlearning run per method saving its model at each budget); ``--nested_budgets false`` gives the cost of
separate runs for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import machine, print_table

FIVE = [0.02, 0.04, 0.06, 0.08, 0.1]


def _run(recipe: str, out: Path, budgets: list[float], nested: bool) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "llm_unlearn", "run", "--config", recipe, "--output_dir", str(out)]
    cmd += ["--seeds", "[0]", "--budgets", json.dumps(budgets), "--nested_budgets", str(nested).lower()]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rows = json.loads((out / "results.json").read_text())["rows"]
    return {"cpu_seconds": cpu, "wall_seconds": wall, "rows": sum(r["budget"] is not None for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/tiny/llm_gaussian.yaml")
    ap.add_argument("--run_dir", default="runs/bench_nested")
    ap.add_argument("--nested_budgets", default="true", choices=["true", "false"])
    a = ap.parse_args()
    nested = a.nested_budgets == "true"
    root = Path(a.run_dir)
    one = _run(a.recipe, root / "one_budget", [0.1], nested)
    five = _run(a.recipe, root / "five_budgets", FIVE, nested)
    print(machine())
    print_table(
        f"{a.recipe}, seed 0, nested_budgets {a.nested_budgets}",
        [
            ("budgets [0.1]", one["rows"], f"{one['cpu_seconds']:.1f}", f"{one['wall_seconds']:.1f}"),
            (f"budgets {FIVE}", five["rows"], f"{five['cpu_seconds']:.1f}", f"{five['wall_seconds']:.1f}"),
        ],
        ("run", "unlearned rows", "CPU s (user+sys, all processes)", "wall s"),
    )
    print(f"CPU-time ratio five / one: {five['cpu_seconds'] / one['cpu_seconds']:.2f}x (target <= 1.35 nested)")


if __name__ == "__main__":
    main()
