"""How long `llm-unlearn run` takes to refuse a bad config: the whole command in a fresh process, as a person types it.

Configs, each wrong in one place: an unknown key in the `train` section, a value out of range in the `poison`
section, an unknown method (checked against the registry's list of built-in names), and errors in a method's own
knobs: an unknown knob, a wrong type, a value its ``validate()`` refuses, a bad value in a grid over a method knob
(each checked against the knob class read from the method's file); then the `unlearn` stage given a bad knob, and,
with ``--image``, the image track: the tiny Gaussian recipe with a bad seed, a bad ``attack_args`` value, a bad
method knob, a bad grid value, an unknown ``data`` key (every run checks that the error printed is the one meant).
Each is timed ``--repeats`` times; pass ``--baseline DIR`` (a checkout of another version, e.g. before a change) to
time its code the same way, in turns with this one, so that load from other jobs on a shared machine hits both
alike::

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
# label -> (command, config text, what the error must say)
SIGMA = "method_args.sigma must be a finite number >= 0"
CONFIGS = {
    "unknown key (train.learning_rat)": ("run", "seeds: [0]\ntrain:\n  learning_rat: 0.1\n", "learning_rat"),
    "out of range (poison.poison_fraction 1.5)": (
        "run",
        "seeds: [0]\npoison:\n  poison_fraction: 1.5\n",
        "poison_fraction",
    ),
    "unknown method (methods: [gd, bogus])": ("run", "seeds: [0]\nmethods: [gd, bogus]\n", "unknown method 'bogus'"),
    "unknown knob (method_args.ngd.sigmaa)": (
        "run",
        "seeds: [0]\nmethod_args:\n  ngd: {sigmaa: 0.1}\n",
        "unknown key 'sigmaa'",
    ),
    "bad type (method_args.npo.beta: abc)": (
        "run",
        "seeds: [0]\nmethods: [npo]\nmethod_args:\n  npo: {beta: abc}\n",
        "beta: expected a number",
    ),
    "bad value (method_args.ngd.sigma -1)": ("run", "seeds: [0]\nmethod_args:\n  ngd: {sigma: -1.0}\n", SIGMA),
    "bad grid value (grid.ngd.sigma [0.1, -1])": ("run", "seeds: [0]\ngrid:\n  ngd: {sigma: [0.1, -1.0]}\n", SIGMA),
    "unlearn stage, bad value (sigma -1)": (
        "unlearn",
        "method: ngd\nmethod_args: {sigma: -1.0}\nmodel_dir: m\ndataset_dir: d\n",
        SIGMA,
    ),
}
IMAGE_RECIPE = (ROOT / "recipes" / "tiny" / "image_gaussian.yaml").read_text()
if "\nseeds: [0, 1, 2]\n" not in IMAGE_RECIPE:
    raise SystemExit("recipes/tiny/image_gaussian.yaml no longer says `seeds: [0, 1, 2]`: update the image case here")
IMAGE = {
    "image recipe, seeds: [-1]": (
        "run",
        IMAGE_RECIPE.replace("\nseeds: [0, 1, 2]\n", "\nseeds: [-1]\n"),
        "seeds[0]: -1 is outside the seed range",
    ),
    "image, bad attack_args (badnets patch_size 0)": (
        "run",
        "track: image\nseeds: [0]\npoison: {attack: badnets, attack_args: {patch_size: 0}}\n",
        "patch_size must be >= 1",
    ),
    "image, bad knob (method_args.npo.beta: abc)": (
        "run",
        "track: image\nseeds: [0]\nmethods: [npo]\nmethod_args:\n  npo: {beta: abc}\n",
        "beta: expected a number",
    ),
    "image, bad grid value": ("run", "track: image\nseeds: [0]\ngrid:\n  ngd: {sigma: [0.1, -1.0]}\n", SIGMA),
    "image, unknown key (data.test_fractoin)": (
        "run",
        "track: image\nseeds: [0]\ndata: {test_fractoin: 0.5}\n",
        "unknown key 'data.test_fractoin'",
    ),
}


def refuse_seconds(tree: Path, command: str, config: Path, out: Path, expected: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "llm_unlearn", command, "--config", str(config), "--output_dir", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 2:
        raise SystemExit(f"{tree}: expected exit 2 (a config error), got {proc.returncode}: {proc.stderr[-500:]}")
    if expected not in proc.stderr:
        raise SystemExit(f"{tree}: expected an error naming {expected!r}, got: {proc.stderr[-500:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout to time in turns with this one")
    ap.add_argument("--image", action="store_true", help="also time the image track's cases")
    ap.add_argument("--only", default="", help="time only the configs whose label contains this text")
    args = ap.parse_args()
    trees = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    configs = {k: v for k, v in (CONFIGS | (IMAGE if args.image else {})).items() if args.only in k}
    results: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (command, text, expected) in configs.items():
            config = Path(tmp) / "bad.yaml"
            config.write_text(text)
            for _ in range(args.repeats):
                for name, tree in trees.items():  # in turns: the same load for both
                    secs = refuse_seconds(tree, command, config, Path(tmp) / "out", expected)
                    results[name].setdefault(label, []).append(secs)
    for label in configs:
        row = ", ".join(f"{name} {statistics.median(results[name][label]):.2f} s" for name in trees)
        print(f"{label}: median of {args.repeats}: {row}")
    print(f"load: {load()}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
