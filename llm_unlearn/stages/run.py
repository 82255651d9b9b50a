"""The orchestrator: one experiment = one attack, a model, seeds, methods x budgets (x method grids).

For every seed: poison -> train the initial model (poisoned set) and the gold model (retain set, same
initialisation) -> for every method x budget: unlearn -> evaluate initial, gold and every unlearned model -> report.
The grid is a small DAG of stage jobs run by ``workers`` processes (``llm_unlearn/scheduler.py``); a job whose
output dir is complete is skipped, which is how a killed run resumes. The fields and grid logic every track shares
live in ``llm_unlearn/protocol.py``. Layout under ``output_dir``::

    experiment.yaml  results.json  report.md  *.png
    seed_<s>/base/ poison/ initial/ retrain/ unlearn/<method>_b<budget>/ eval/<model>/
    seed_<s>/relearn/<model>/r<n>/ eval/<model>_r<n>/   (with a relearn section: see planner.relearn_jobs)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from ..configs import ConfigError, to_dict
from ..flags import parse_config_and_flags
from ..planner import StageBuilders, diagnose_config, eval_config, plan_jobs, unlearn_config  # noqa: F401 (API)
from ..protocol import ProtocolConfig, Variant, check_experiment, model_id, unlearn_variants  # noqa: F401 (API)
from ..scheduler import Job, execute, run_job  # noqa: F401 (API: tracks build Jobs, tests call execute)
from ..embedded import TinyModelConfig
from ..tracks import Track, get_track, load_experiment, track_name  # noqa: F401 (API)
from ..files import atomic_write_text, is_atomic_tmp
from ..training import REPORT_TO_HELP, check_report_to
from .evaluate import EvalConfig
from .poison import PoisonConfig
from .relearn import RelearnConfig
from .tiny import TinyConfig
from .train import TrainConfig
from .unlearn import UnlearnConfig

logger = logging.getLogger(__name__)

EMBEDDED_TINY = "embedded:tiny-llama"


@dataclass
class ExperimentConfig(ProtocolConfig):
    """The protocol for one attack: poison, train initial + gold, unlearn (methods x budgets), evaluate, report."""

    track: str = field(default="llm", metadata={"help": "llm (this config) or an installed track, e.g. image"})
    model_name_or_path: str = field(
        default=EMBEDDED_TINY, metadata={"help": f"{EMBEDDED_TINY} (built offline per seed), a model dir or Hub id"}
    )
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig, metadata={"help": "shape of the embedded model"})
    poison: PoisonConfig = field(default_factory=PoisonConfig, metadata={"help": "poison stage settings"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "initial and gold training settings"})
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig, metadata={"help": "shared unlearning settings"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "evaluation settings"})
    relearn: RelearnConfig = field(
        default_factory=RelearnConfig,
        metadata={
            "help": "relearning after unlearning (off while steps is []): initial, gold and every unlearned model "
            "fine-tuned for each count of steps more optimizer steps (retain rows or a fraction of the poisons), "
            "then evaluated"
        },
    )
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = field(
        default="none", metadata={"help": "every train and unlearn job's Trainer: " + REPORT_TO_HELP}
    )

    def validate(self) -> None:
        check_report_to(self.report_to)
        check_experiment(self, UnlearnConfig, RUN_OWNED)
        if self.model_name_or_path != EMBEDDED_TINY:  # a missing/pickle-only/mismatched model dir fails before work
            from ..modeling import check_model_path

            check_model_path(self.model_name_or_path)
        if self.model_name_or_path == EMBEDDED_TINY and self.poison.dataset_name != "embedded:reviews":
            logger.warning("the embedded tiny model's tokenizer was trained on the embedded reviews only")
        from ..protocol import check_degenerate

        # Degenerate experiments, before any work, where the data size is known from the config: an example costs
        # the gold run at most max_length tokens per epoch (the stages check the exact figures on the data).
        epochs = math.ceil(self.train.num_train_epochs)
        check_degenerate(
            self,
            self._train_size(),
            len(self.poison.label_names),
            self.train.per_device_train_batch_size,
            epochs * self.train.max_length,
        )

    def _train_size(self) -> int | None:
        p = self.poison
        if p.dataset_name != "embedded:reviews" or p.train_file:
            return None
        return min(p.embedded_n_train, p.max_train_samples or p.embedded_n_train)


# Stage keys that `run` fills in for every job: setting them in an experiment config is an error.
RUN_OWNED = (
    ("poison", ("output_dir", "seed")),
    ("train", ("model_name_or_path", "dataset_dir", "output_dir", "split", "seed", "report_to")),
    (
        "unlearn",
        (
            *("model_dir", "dataset_dir", "output_dir", "retrain_dir"),
            *("method", "method_args", "budget", "save_at_budgets", "seed", "report_to"),
        ),
    ),
    ("eval", ("model_dir", "adapter_dir", "dataset_dir", "output_dir")),
    ("relearn", ("model_dir", "adapter_dir", "dataset_dir", "output_dir", "seed")),
)
ExperimentConfig.CLI_EXCLUDE = frozenset(f"{sec}.{n}" for sec, names in RUN_OWNED for n in names)


_STAGES = "llm_unlearn.stages."


def _base(cfg: ExperimentConfig, seed: int, out: str):
    # The embedded default is built per seed (an ordinary stage); a model dir or Hub id needs no job.
    return TinyConfig(output_dir=out, seed=seed, tiny=cfg.tiny) if cfg.model_name_or_path == EMBEDDED_TINY else None


def _train(cfg: ExperimentConfig, seed: int, split: str, dataset_dir: str, out: str, base_dir: str | None):
    base = base_dir or cfg.model_name_or_path
    return dataclasses.replace(
        cfg.train,
        model_name_or_path=base,
        dataset_dir=dataset_dir,
        output_dir=out,
        split=split,
        seed=seed,
        report_to=cfg.report_to,
    )


def _unlearn(cfg: ExperimentConfig, *args):
    return dataclasses.replace(unlearn_config(cfg, *args), report_to=cfg.report_to)


def _evaluate(cfg: ExperimentConfig, model_dir: str, dataset_dir: str, out: str, uc):
    from ..methods import uses_adapter

    if uc is not None and uses_adapter(uc.method, uc.use_peft):  # the adapter on top of the initial model
        return dataclasses.replace(eval_config(cfg, uc.model_dir, dataset_dir, out), adapter_dir=model_dir)
    return eval_config(cfg, model_dir, dataset_dir, out)


def _diagnose(cfg: ExperimentConfig, initial: str, retrain: str, ec, out: str):
    u = cfg.unlearn  # the models load as the unlearn stage loads them; an adapter on top of the initial model
    extra = {"adapter_dir": ec.adapter_dir, "dtype": u.dtype, "trust_remote_code": u.trust_remote_code}
    return diagnose_config(cfg, initial, retrain, ec, out, **extra)


def _relearn(cfg: ExperimentConfig, seed: int, ec, out: str):
    # the model as its evaluation reads it: a full model dir, or an adapter on top of the initial model
    return dataclasses.replace(
        cfg.relearn,
        model_dir=ec.model_dir,
        adapter_dir=ec.adapter_dir,
        dataset_dir=ec.dataset_dir,
        output_dir=out,
        seed=seed,
    )


STAGES = StageBuilders(
    unlearn_cls=UnlearnConfig,
    run_owned=RUN_OWNED,
    base=(_STAGES + "tiny", _base),
    poison=(_STAGES + "poison", lambda cfg, seed, out: dataclasses.replace(cfg.poison, output_dir=out, seed=seed)),
    train=(_STAGES + "train", _train),
    unlearn=(_STAGES + "unlearn", _unlearn),
    evaluate=(_STAGES + "evaluate", _evaluate),
    diagnose=(_STAGES + "diagnose", _diagnose),
    relearn=(_STAGES + "relearn", _relearn),
)


plan = STAGES.plan  # the DAG of stage jobs for the whole grid (the shared planner, planner.plan_jobs)


def check_output_dir(cfg: ExperimentConfig) -> Path:
    """Refuse a non-writable dir or one that holds a different experiment (unless ``overwrite``)."""
    from ..locks import LOCK_NAME

    root = Path(cfg.output_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"output_dir {cfg.output_dir!r} cannot be created: [Errno {e.errno}] {e.strerror}") from e
    if not os.access(root, os.W_OK):
        raise ConfigError(f"output_dir {cfg.output_dir!r} is not writable")
    from ..outputs import remove_temporary

    remove_temporary(root, ("experiment.yaml",))  # what a run killed while writing it left
    spec = _identity(cfg)
    existing = root / "experiment.yaml"
    if existing.is_file():
        try:
            old = yaml.safe_load(existing.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{existing} does not parse ({str(e).splitlines()[0]}); pass --overwrite true") from e
        if _identity_dict(old) != _identity_dict(spec) and not cfg.overwrite:
            raise ConfigError(
                f"output_dir {cfg.output_dir!r} holds a different experiment (see its experiment.yaml); "
                "choose another output_dir or pass --overwrite true"
            )
    elif any(not is_atomic_tmp(p) and p.name != LOCK_NAME for p in root.iterdir()) and not cfg.overwrite:
        raise ConfigError(  # (a kill mid-write leaves a .tmp; a killed run its .lock)
            f"output_dir {cfg.output_dir!r} is not empty and holds no experiment.yaml; use --overwrite true"
        )
    try:
        atomic_write_text(existing, yaml.safe_dump(spec, sort_keys=False))
    except OSError as e:
        raise ConfigError(f"{existing}: cannot be written: [Errno {e.errno}] {e.strerror}") from e
    return root


def _identity(cfg: ExperimentConfig) -> dict:
    return to_dict(cfg)


def _identity_dict(d: dict) -> dict:
    # What defines results: everything but where they go and how many processes compute them (and how they are
    # launched: switching a run to accelerate keeps its finished stages, as the stage configs are the same).
    # A run dir made before the relearn section existed (or with relearning off) is the same experiment.
    off = not (d.get("relearn") or {}).get("steps")
    return {k: v for k, v in d.items() if k not in HOW_RUN and not (k == "relearn" and off)}


HOW_RUN = (
    *("output_dir", "workers", "overwrite", "launcher", "accelerate_config", "num_processes"),
    *("executor", "ray_address", "resources", "slurm"),  # where jobs run does not change what they compute
    "report_to",  # nor where their Trainers report
)


def _resolve(cfg, **overrides):
    """A validated experiment config (of its track's class) from a config, a mapping or a YAML path."""
    from ..configs import build_config, read_yaml, validate_config

    if isinstance(cfg, (str, os.PathLike)):
        cfg = read_yaml(cfg)
    if isinstance(cfg, dict):
        merged = {**cfg, **overrides}
        cfg = build_config(get_track(track_name(merged)).config_cls, merged)
    else:
        cfg = dataclasses.replace(cfg, **overrides) if overrides else cfg
        validate_config(cfg)
    if cfg.output_dir is None:
        raise ConfigError("output_dir is required")
    return cfg


def run_experiment(cfg: ExperimentConfig | dict | str, verbose: bool = False, **overrides) -> Path:
    """Run the whole grid and the report; returns the report path. ``cfg`` may be a config, a mapping or a YAML path.
    Each job's output goes to its ``log.txt`` (``verbose``: to the terminal, as outside ``run``).

    Example::

        from llm_unlearn import run_experiment
        report = run_experiment("recipes/tiny/llm_gaussian.yaml", output_dir="runs/gaussian", seeds=[0])
    """
    return run_experiments([_resolve(cfg, **overrides)], verbose=verbose)[0]


def run_experiments(cfgs: list[ExperimentConfig], workers: int | None = None, verbose: bool = False) -> list[Path]:
    """Several experiments as ONE job graph (e.g. both attacks of the main job), so the worker pool never idles
    between them; returns their report paths. ``workers`` defaults to the largest of the configs'; ``verbose``
    streams every job's output to the terminal instead of its ``log.txt``."""
    from .report import ReportConfig
    from .report import main as report_main

    cfgs = [_resolve(c) for c in cfgs]
    outs = [Path(c.output_dir).resolve() for c in cfgs]
    if len(set(outs)) != len(outs):
        raise ConfigError("each experiment needs its own output_dir")
    from ..configs import check_writable_dir
    from ..launcher import Launcher
    from ..locks import acquire, release

    jobs = []
    for i, c in enumerate(cfgs):
        launcher = Launcher.from_experiment(c)
        for job in get_track(c.track).plan(c):
            check_writable_dir(_job_output(job), f"output_dir of job {job.name}")  # names the filesystem refuses
            if launcher is not None:
                launcher.check(job)
                job.launcher = launcher
            job.name = f"e{i}/{job.name}"
            job.deps = [f"e{i}/{d}" for d in job.deps]
            jobs.append(job)
    pool = _pool(cfgs)  # (built, not started: a cluster is joined once there is work for it)
    locked = []
    try:
        for c in cfgs:  # one run per dir: a second process is refused (exit 2) before it writes anything
            acquire(c.output_dir)
            locked.append(c.output_dir)
        for c in cfgs:  # validate every output dir before any work starts
            check_output_dir(c)
        execute(jobs, workers or max(c.workers for c in cfgs), pool, verbose=verbose)
        return [report_main(ReportConfig(run_dir=c.output_dir)) for c in cfgs]
    finally:
        for d in reversed(locked):
            release(d)


def _pool(cfgs: list) -> object | None:
    """Where the jobs of these experiments run: their executor (one for all; local: None, the process pool)."""
    from ..executors import build_pool

    kinds = {(c.executor, c.ray_address, repr(c.resources), repr(c.slurm)) for c in cfgs}
    if len(kinds) > 1:
        raise ConfigError("experiments run as one job graph must share executor, ray_address, resources and slurm")
    return build_pool(cfgs[0], [c.output_dir for c in cfgs])


def _job_output(job: Job) -> str:
    return job.config["output_dir"] if isinstance(job.config, dict) else job.config.output_dir


VERBOSE_HELP = (
    "stream every job's output (HF logs, per-step losses, progress bars) to the terminal, as outside `run`, instead "
    "of into its output dir's log.txt behind one progress bar and a line per job"
)
RUN_FLAGS = {"verbose": VERBOSE_HELP}


@dataclass
class SuiteConfig:
    """Run several experiment recipes as one job graph; each goes to output_dir/<recipe name>."""

    configs: list[str] = field(default_factory=list, metadata={"help": "experiment YAML files"})
    output_dir: str | None = field(default=None, metadata={"help": "parent directory of the experiments"})
    workers: int | None = field(default=None, metadata={"help": "parallel jobs (default: the configs' largest)"})
    overwrite: bool = field(default=False, metadata={"help": "reuse output dirs holding other experiments"})

    def validate(self) -> None:
        if not self.configs:
            raise ConfigError("configs must list at least one experiment YAML")
        stems = [Path(c).stem for c in self.configs]
        if len(set(stems)) != len(stems):
            raise ConfigError(f"configs must have distinct file names (they name the output dirs), got {stems}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")


def suite_paths(configs: list[str], suite_file: str | os.PathLike | None) -> list[Path]:
    """Experiment files of a suite: a relative path is looked up next to the suite file first (so a suite recipe can
    name its siblings), then relative to the working directory."""
    out = []
    for c in configs:
        p = Path(c)
        if not p.is_absolute() and suite_file is not None and (Path(suite_file).parent / p).is_file():
            p = Path(suite_file).parent / p
        out.append(p)
    return out


def suite_cli(argv=None) -> None:
    import argparse
    import sys

    from ..configs import read_yaml

    sc, flags = parse_config_and_flags(
        SuiteConfig, argv, prog="llm-unlearn suite", flags=RUN_FLAGS, bool_flags=("verbose",)
    )
    if sc.output_dir is None:
        raise ConfigError("output_dir is required")
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    suite_file = pre.parse_known_args(sys.argv[1:] if argv is None else argv)[0].config
    cfgs = [
        _resolve(read_yaml(c) | {"output_dir": str(Path(sc.output_dir) / c.stem), "overwrite": sc.overwrite})
        for c in suite_paths(sc.configs, suite_file)
    ]
    reports = list(run_experiments(cfgs, sc.workers, verbose=_verbose(flags)))
    for report in reports:
        print(f"report: {report}")
    from ..files import atomic_write_text
    from .verdicts import suite_table, verdict_lines

    results = [Path(r).parent / "results.json" for r in reports]
    table = Path(sc.output_dir) / "suite.md"  # the paper's Table 1 over the suite's attacks
    atomic_write_text(table, suite_table(results))
    print(f"table 1: {table}")
    for line in verdict_lines(results):
        print(line)


def _verbose(flags: dict) -> bool:
    if flags["verbose"] not in (None, True, False):
        raise ConfigError(f"verbose: expected true or false, got {flags['verbose']!r}")
    return bool(flags["verbose"])


def make_parser():
    from ..flags import make_parser as _mp

    return _mp(ExperimentConfig, prog="llm-unlearn run", flags=RUN_FLAGS, bool_flags=("verbose",))


def _argv_track(argv) -> str:
    """The track named by ``--track`` or by the ``--config`` YAML (default llm): it picks the config class."""
    import argparse
    import sys

    from ..configs import read_yaml

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    pre.add_argument("--track")
    known, _ = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    if known.track:
        return known.track
    return track_name(read_yaml(known.config)) if known.config else "llm"


def cli(argv=None) -> None:
    from .verdicts import verdict_lines

    track = get_track(_argv_track(argv))
    cfg, flags = parse_config_and_flags(
        track.config_cls, argv, prog="llm-unlearn run", flags=RUN_FLAGS, bool_flags=("verbose",)
    )
    report = run_experiment(cfg, verbose=_verbose(flags))
    print(f"report: {report}")
    print(f"results: {Path(cfg.output_dir) / 'results.json'}")
    for line in verdict_lines([Path(cfg.output_dir) / "results.json"]):
        print(line)


def describe(cfg: ExperimentConfig) -> str:
    """The report header line for an llm-track experiment."""
    from ..protocol import describe_experiment

    model, dataset, epochs = f"`{cfg.model_name_or_path}`", f"`{cfg.poison.dataset_name}`", cfg.train.num_train_epochs
    unlearning = "with LoRA" if cfg.unlearn.use_peft else "full-parameter"
    return describe_experiment(model, dataset, cfg.poison, f"{epochs:g} epochs", unlearning)


TRACK = Track("llm", ExperimentConfig, STAGES.plan, describe)
