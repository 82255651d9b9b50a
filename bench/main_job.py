"""Where the README main job's wall time goes: a table by stage.

    python bench/main_job.py --execute [--run_dir runs/bench_main]   # run the main job once, timing every job
    python bench/main_job.py --run_dir runs/main                     # analyse a finished run (no new work)

``--execute`` runs the same job graph as ``scripts/main_job.sh`` (both tiny recipes as one suite) and records each
job's wall seconds as the orchestrator reports them (stage set-up such as model loading included, worker start-up
not) in ``bench_timings.json``. Without it, the script reads what the stages themselves recorded: the training loop's
``wall_seconds`` (``training_info.json``), the unlearning loop's (``unlearn_info.json``) and ``eval_seconds``
(``eval_results.json``), plus ``bench_timings.json`` when present. Target: the whole main job <= 10 min.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

from _common import machine, print_table

RECIPES = ["recipes/tiny/llm_gaussian.yaml", "recipes/tiny/llm_backdoor.yaml"]


def _kind(job_name: str) -> str:
    """``e0/s1/unlearn/gd_b0.1`` -> ``unlearn``; ``e0/s1/initial`` -> ``train (initial)``."""
    parts = job_name.split("/")
    stage = parts[2] if len(parts) > 2 else job_name
    return {"initial": "train (initial)", "retrain": "train (retrain)", "base": "tiny model"}.get(stage, stage)


def execute(run_dir: Path, workers: int | None, recipes: list[str]) -> dict:
    """Run the main job's suite into ``run_dir``, capturing every job's seconds from the orchestrator's log."""
    from llm_unlearn.configs import read_yaml
    from llm_unlearn.stages.run import _resolve, run_experiments

    jobs: dict[str, float] = {}

    class Capture(logging.Handler):
        def emit(self, record):
            if record.msg.startswith("%s done in"):
                name, secs = record.args[0], record.args[1]
                jobs[name] = float(secs)

    log = logging.getLogger("llm_unlearn.scheduler")  # the job DAG logs "<job> done in <s>" (at DEBUG level)
    log.setLevel(logging.DEBUG)
    log.addHandler(Capture())
    cfgs = [_resolve(read_yaml(c) | {"output_dir": str(run_dir / Path(c).stem)}) for c in recipes]
    start = time.perf_counter()
    run_experiments(cfgs, workers)
    total = time.perf_counter() - start
    timings = {
        "total_seconds": total,
        "workers": workers or max(c.workers for c in cfgs),
        "jobs": jobs,
        "machine": machine(),
    }
    (run_dir / "bench_timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    return timings


def from_info_files(run_dir: Path) -> dict[str, list[float]]:
    """Per stage kind, the seconds each stage recorded itself (its inner loop)."""
    out: dict[str, list[float]] = defaultdict(list)
    for exp in sorted({p.parent for p in run_dir.rglob("experiment.yaml")}):
        for seed in sorted(exp.glob("seed_*")):
            for name in ("initial", "retrain"):
                info = seed / name / "training_info.json"
                if info.is_file():
                    out[f"train ({name})"].append(json.loads(info.read_text())["wall_seconds"])
            for info in sorted(seed.glob("unlearn/*/unlearn_info.json")):
                out["unlearn"].append(json.loads(info.read_text())["wall_seconds"])
            for res in sorted(seed.glob("eval/*/eval_results.json")):
                out["eval"].append(json.loads(res.read_text()).get("eval_seconds", 0.0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run_dir", default="runs/bench_main", help="the main job's output dir (a suite dir)")
    parser.add_argument("--execute", action="store_true", help="run the main job first (~10 min on 2 CPU cores)")
    parser.add_argument("--workers", type=int, default=None, help="with --execute: worker processes (default 2)")
    parser.add_argument("--configs", nargs="+", default=RECIPES, help="with --execute: the recipes (the main job's)")
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    if args.execute:
        timings = execute(run_dir, args.workers, args.configs)
    elif (run_dir / "bench_timings.json").is_file():
        timings = json.loads((run_dir / "bench_timings.json").read_text())
    else:
        timings = None
    print(f"machine: {machine()}")
    if timings:
        by_kind: dict[str, list[float]] = defaultdict(list)
        for name, secs in timings["jobs"].items():
            by_kind[_kind(name)].append(secs)
        job_total = sum(sum(v) for v in by_kind.values())
        rows = [
            (kind, len(v), f"{sum(v):.0f}", f"{sum(v) / len(v):.1f}", f"{100 * sum(v) / job_total:.0f} %")
            for kind, v in sorted(by_kind.items(), key=lambda kv: -sum(kv[1]))
        ]
        print_table(
            f"main job: {timings['total_seconds']:.0f} s wall ({timings['total_seconds'] / 60:.1f} min) on "
            f"{timings['workers']} workers; job-seconds by stage (they overlap across workers)",
            rows,
            ("stage", "jobs", "job-seconds", "mean s / job", "share"),
        )
        busy = job_total / (timings["total_seconds"] * timings["workers"])
        print(f"\nworkers busy {busy:.0%} of the wall time; the rest is report writing, process start-up and idle.")
    info = from_info_files(run_dir)
    if info:
        print_table(
            "the stages' own loop timings (training/unlearning loop, evaluation), from their info files",
            [(k, len(v), f"{sum(v):.0f}", f"{sum(v) / len(v):.1f}") for k, v in sorted(info.items())],
            ("stage", "runs", "seconds", "mean s"),
        )
    if not timings and not info:
        raise SystemExit(f"{run_dir} holds no finished run; pass --execute to run the main job")


if __name__ == "__main__":
    main()
