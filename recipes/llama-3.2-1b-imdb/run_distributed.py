"""`llm-unlearn run` with the train and unlearn stages under `accelerate launch` (DeepSpeed ZeRO-3 on several GPUs).

The orchestrator itself is one process, so it cannot be launched with accelerate. This script plans the same job
graph as `run` (same directories, same stage configs), runs every train/unlearn job as its own
`accelerate launch --config_file ACCEL -m llm_unlearn <stage> --config <job>.yaml`, the poison jobs in this process,
and then hands over to `run`, which skips every complete stage and does the evaluations (vLLM) and the report.
Rerunning it resumes, like `run`.

    python recipes/llama-3.2-1b-imdb/run_distributed.py --config recipes/llama-3.2-1b-imdb/gaussian.yaml \\
        --output_dir runs/llama-3.2-1b-imdb/gaussian --accelerate_config recipes/accelerate_configs/zero3.yaml
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

DISTRIBUTED_STAGES = ("train", "unlearn")


def main(argv: list[str] | None = None) -> int:
    from llm_unlearn.configs import ConfigError, to_dict
    from llm_unlearn.scheduler import _output_dir, _stage_kind, run_job
    from llm_unlearn.stages.run import _resolve, check_output_dir, run_experiment
    from llm_unlearn.tracks import get_track
    from llm_unlearn.files import atomic_write_text, is_complete

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="experiment YAML (an ExperimentConfig)")
    p.add_argument("--output_dir", required=True, help="experiment directory (as for `llm-unlearn run`)")
    p.add_argument("--accelerate_config", required=True, help="e.g. recipes/accelerate_configs/zero3.yaml")
    p.add_argument("--num_processes", type=int, default=None, help="override the accelerate config's process count")
    args = p.parse_args(argv)
    try:
        if not Path(args.accelerate_config).is_file():  # before check_output_dir, which creates the run dir
            raise ConfigError(f"accelerate_config: {args.accelerate_config!r} does not exist")
        cfg = _resolve(args.config, output_dir=args.output_dir)
        check_output_dir(cfg)
    except ConfigError as e:
        print(f"run_distributed: error: {e}", file=sys.stderr)
        return 2

    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", args.accelerate_config]
    if args.num_processes:
        launch += ["--num_processes", str(args.num_processes)]
    job_dir = Path(cfg.output_dir) / "launch"
    for job in get_track(cfg.track).plan(cfg):  # plan order respects dependencies
        kind = _stage_kind(job)
        if kind in ("evaluate", "diagnose") or is_complete(_output_dir(job)):
            continue  # evaluations run in `run` below (one process each, vLLM starts its own workers)
        if kind not in DISTRIBUTED_STAGES:
            run_job(job)  # the embedded base model, poisoning: cheap, one process
            continue
        path = job_dir / (job.name.replace("/", "__") + ".yaml")
        atomic_write_text(path, yaml.safe_dump(to_dict(job.config), sort_keys=False))
        print(f"[run_distributed] {job.name}: accelerate launch -m llm_unlearn {kind}", flush=True)
        proc = subprocess.run([*launch, "-m", "llm_unlearn", kind, "--config", str(path)])
        if proc.returncode != 0:
            print(f"run_distributed: {job.name} failed (exit {proc.returncode}); rerun to resume", file=sys.stderr)
            return proc.returncode
    report = run_experiment(cfg)  # skips the complete stages: evaluations, diagnostics, report
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
