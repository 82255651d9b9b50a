"""How long `llm-unlearn run` takes to refuse a bad config: the whole command in a fresh process, as a person types it.

Three configs, each wrong in one place: an unknown key in the `train` section, a value out of range in the `poison`
section (both found before the methods are loaded), and an unknown method (found by checking the METHODS registry,
which imports the methods and torch with them). Each is timed ``--repeats`` times; pass ``--baseline DIR`` (a checkout
of another version, e.g. before a change) to time its code the same way, in turns with this one, so that load from
other jobs on a shared machine hits both alike::

    python bench/config_error.py --repeats 5 --baseline /path/to/old/checkout
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import load

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "unknown key (train.learning_rat)": "seeds: [0]\ntrain:\n  learning_rat: 0.1\n",
    "out of range (poison.poison_fraction 1.5)": "seeds: [0]\npoison:\n  poison_fraction: 1.5\n",
    "unknown method (methods: [gd, bogus])": "seeds: [0]\nmethods: [gd, bogus]\n",
}


def refuse_seconds(tree: Path, config: Path, out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "llm_unlearn", "run", "--config", str(config), "--output_dir", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 2:
        raise SystemExit(f"{tree}: expected exit 2 (a config error), got {proc.returncode}: {proc.stderr[-500:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout to time in turns with this one")
    args = ap.parse_args()
    trees = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    results: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for label, text in CONFIGS.items():
            config = Path(tmp) / "bad.yaml"
            config.write_text(text)
            for _ in range(args.repeats):
                for name, tree in trees.items():  # in turns: the same load for both
                    secs = refuse_seconds(tree, config, Path(tmp) / "out")
                    results[name].setdefault(label, []).append(secs)
    for label in CONFIGS:
        row = ", ".join(f"{name} {statistics.median(results[name][label]):.2f} s" for name in trees)
        print(f"{label}: median of {args.repeats}: {row}")
    print(f"load: {load()}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
