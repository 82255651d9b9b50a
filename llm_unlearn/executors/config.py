"""The executor keys of an experiment config (``executor``, ``resources``, ``slurm``) and their checks."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from ..configs import ConfigError

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "ray", "slurm")
# resources keys: a stage of the planner (``base`` is the tiny base model of the embedded default) or ``default``.
RESOURCE_STAGES = ("default", "base", "poison", "train", "unlearn", "evaluate", "diagnose")
RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory_gb")
DEFAULT_RESOURCES = {"num_cpus": 1, "num_gpus": 0}
EXTRAS = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}  # executor -> (module, pip extra)


@dataclass
class SlurmConfig:
    """``executor: slurm``: how each stage job is submitted (through submitit, one sbatch job per stage job)."""

    partition: str | None = field(default=None, metadata={"help": "SLURM partition (null: the cluster's default)"})
    account: str | None = field(default=None, metadata={"help": "SLURM account to charge (null: your default)"})
    time_min: int = field(default=240, metadata={"help": "time limit of each job, in minutes"})
    setup: list[str] = field(
        default_factory=list,
        metadata={
            "help": "shell commands run in each job before the stage, e.g. ['module load cuda/12.4', "
            "'source ~/venvs/unlearn/bin/activate']"
        },
    )
    additional: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "more sbatch options, passed as they are, e.g. {constraint: a100, qos: high}"},
    )
    folder: str | None = field(
        default=None, metadata={"help": "submitit's job files and logs (null: <output_dir>/submitit)"}
    )
    cluster: Literal["slurm", "local"] = field(
        default="slurm",
        metadata={
            "help": "slurm (sbatch), or local: submitit's own local executor, each job a process on this machine "
            "(a dry run of the slurm path without a cluster)"
        },
    )


def check_executor(cfg) -> None:
    """The executor keys of an experiment config, before any work: resources by stage, the package the executor
    needs, the slurm section."""
    resources = cfg.resources
    if not isinstance(resources, dict):
        raise ConfigError(
            f"resources: expected a mapping of stage -> {{num_cpus, num_gpus, memory_gb}}, got {resources!r}"
        )
    for stage, res in resources.items():
        if stage not in RESOURCE_STAGES:
            raise ConfigError(f"resources.{stage}: unknown stage; choose from {list(RESOURCE_STAGES)}")
        if not isinstance(res, dict):
            raise ConfigError(f"resources.{stage}: expected a mapping of {list(RESOURCE_KEYS)}, got {res!r}")
        for key, value in res.items():
            where = f"resources.{stage}.{key}"
            if key not in RESOURCE_KEYS:
                raise ConfigError(f"{where}: unknown key; choose from {list(RESOURCE_KEYS)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}: expected a number, got {value!r}")
            if value < 0 or (key != "num_gpus" and value == 0):
                raise ConfigError(f"{where}: must be {'>= 0' if key == 'num_gpus' else '> 0'}, got {value}")
            if cfg.executor == "slurm" and key in ("num_cpus", "num_gpus") and value != int(value):
                raise ConfigError(f"{where}: executor slurm allocates whole CPUs and GPUs, got {value}")
    if cfg.slurm.time_min < 1:
        raise ConfigError(f"slurm.time_min must be >= 1 (minutes), got {cfg.slurm.time_min}")
    if cfg.executor == "local":
        unused = [k for k in ("resources", "ray_address") if getattr(cfg, k)]
        if cfg.slurm != SlurmConfig():
            unused.append("slurm")
        if unused:  # a recipe may carry cluster settings while this run stays on the machine
            logger.warning(
                "%s: only read with executor ray or slurm (this run's executor is local)", ", ".join(unused)
            )
        return
    if cfg.executor == "slurm" and cfg.ray_address:
        logger.warning("ray_address is only read with executor ray (this run's executor is slurm)")
    if cfg.workers == 1:  # the default, right for one machine: on a cluster it leaves every node but one idle
        logger.warning("executor %s with workers: 1 runs one job at a time (workers: jobs in flight)", cfg.executor)
    import importlib.util

    if importlib.util.find_spec(EXTRAS[cfg.executor][0]) is None:
        raise ConfigError(_missing(cfg.executor))


def _missing(executor: str) -> str:
    module, extra = EXTRAS[executor]
    return f"executor {executor} needs the {module} package: pip install llm-unlearn[{extra}]"


def require(executor: str):
    """The package an executor runs on (ray, submitit), imported; a ConfigError naming its extra if it is missing."""
    import importlib

    try:
        return importlib.import_module(EXTRAS[executor][0])
    except ImportError as e:
        raise ConfigError(f"{_missing(executor)} ({e})") from e


def job_stage(job) -> str:
    """The ``resources`` key of a job: its stage (the tiny base model's job is ``base``)."""
    kind = job.stage.rsplit(".", 1)[-1]
    return "base" if kind == "tiny" else kind


def job_resources(resources: dict, job) -> dict:
    """The resources one job asks for: its stage's entry over ``default`` over 1 CPU, no GPU."""
    return stage_resources(resources, job_stage(job))


def stage_resources(resources: dict, stage: str) -> dict:
    return {**DEFAULT_RESOURCES, **resources.get("default", {}), **resources.get(stage, {})}
