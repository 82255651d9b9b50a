"""The orchestrator: one experiment = one attack, a model, seeds, methods x budgets (x method grids).

For every seed: poison -> train the initial model (poisoned set) and the gold model (retain set, same
initialisation) -> for every method x budget: unlearn -> evaluate initial, gold and every unlearned model -> report.
The grid is a small DAG of stage jobs run by ``workers`` processes; a job whose output dir is complete is skipped,
which is how a killed run resumes. Layout under ``output_dir``::

    experiment.yaml  results.json  report.md  *.png
    seed_<s>/base/ poison/ initial/ retrain/ unlearn/<method>_b<budget>/ eval/<model>/
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..configs import ConfigError, load_config, parse_config, to_dict
from ..testing import TinyModelConfig
from ..utils import atomic_write_text, is_atomic_tmp, is_complete
from .diagnose import DiagnoseConfig
from .evaluate import EvalConfig
from .poison import PoisonConfig
from .train import TrainConfig
from .unlearn import UnlearnConfig

logger = logging.getLogger(__name__)

EMBEDDED_TINY = "embedded:tiny-llama"


@dataclass
class ProtocolConfig:
    """The fields every track's experiment config shares (and the report reads): the grid, selection and execution.
    A track's config subclasses it and adds its own sections (model, poison, train, unlearn, eval)."""

    track: str = field(default="llm", metadata={"help": "which track's config this is (llm, or e.g. image)"})
    output_dir: str | None = field(default=None, metadata={"help": "experiment directory"})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "one full pipeline per seed"})
    methods: list[str] = field(
        default_factory=lambda: ["gd", "ngd", "ga", "neggrad_plus"], metadata={"help": "METHODS keys to run"}
    )
    method_args: dict[str, dict[str, Any]] = field(
        default_factory=dict, metadata={"help": "per-method knobs, e.g. {neggrad_plus: {beta: 0.95}}"}
    )
    grid: dict[str, dict[str, list]] = field(
        default_factory=dict,
        metadata={
            "help": "per-method hyper-parameter grids over unlearn keys or method_args keys, e.g. "
            "{npo: {learning_rate: [1e-4, 1e-3], beta: [0.1, 0.5]}}; every combination runs"
        },
    )
    budgets: list[float] = field(default_factory=lambda: [0.1], metadata={"help": "fractions of retraining compute"})
    selection_tolerance: float = field(
        default=0.02,
        metadata={
            "help": "the report picks, per method and budget, the grid point with the most gap closed among those "
            "whose mean clean accuracy is within this of the initial model's (0.02 = 2 points)"
        },
    )
    diagnostics: bool = field(
        default=True, metadata={"help": "parameter-shift norms and cosine vs the retrain direction per model"}
    )
    workers: int = field(default=1, metadata={"help": "stage jobs run in parallel (processes; threads are split)"})
    overwrite: bool = field(default=False, metadata={"help": "reuse an output_dir that holds another experiment"})


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

    def validate(self) -> None:
        if self.track != "llm":
            raise ConfigError(f"track: this is the llm track's config, got track={self.track!r}")
        check_experiment(self, UnlearnConfig, RUN_OWNED)
        if self.model_name_or_path != EMBEDDED_TINY:  # a missing/pickle-only/mismatched model dir fails before work
            from ..modeling import check_model_path

            check_model_path(self.model_name_or_path)
        if self.model_name_or_path == EMBEDDED_TINY and self.poison.dataset_name != "embedded:reviews":
            logger.warning("the embedded tiny model's tokenizer was trained on the embedded reviews only")


def check_experiment(cfg, unlearn_cls: type, run_owned=()) -> None:
    """The checks every track's experiment config shares: seeds, methods, method_args, grid, budgets, workers, and
    stage keys that ``run`` sets itself (``run_owned``: (section, names) pairs)."""
    from ..methods import build_method_config

    if not cfg.seeds:
        raise ConfigError("seeds must hold at least one seed")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds must be distinct, got {cfg.seeds}")
    if not cfg.methods:
        raise ConfigError("methods must name at least one METHODS key")
    if len(set(cfg.methods)) != len(cfg.methods):
        raise ConfigError(f"methods must be distinct, got {cfg.methods}")
    for m in cfg.methods:
        build_method_config(m, cfg.method_args.get(m))
    for section in ("method_args", "grid"):
        for m in getattr(cfg, section):
            if m not in cfg.methods:
                raise ConfigError(f"{section}.{m}: {m!r} is not in methods={cfg.methods}")
    if not cfg.budgets or any(not 0 < b <= 1 for b in cfg.budgets):
        raise ConfigError(f"budgets must be a non-empty list of fractions in (0, 1], got {cfg.budgets}")
    if len(set(cfg.budgets)) != len(cfg.budgets):
        raise ConfigError(f"budgets must be distinct, got {cfg.budgets}")
    if not 0 <= cfg.selection_tolerance <= 1:
        raise ConfigError(
            f"selection_tolerance must be in [0, 1] (fraction of accuracy), got {cfg.selection_tolerance}"
        )
    if cfg.workers < 1:
        raise ConfigError(f"workers must be >= 1, got {cfg.workers}")
    for section, names in run_owned:
        sub = getattr(cfg, section)
        for name in names:
            if getattr(sub, name) != _default(type(sub), name):
                raise ConfigError(f"{section}.{name} is set by run; remove it from the experiment config")
    # Building every variant validates each grid value against its dataclass (types, ranges) before any work.
    for v in unlearn_variants(cfg, unlearn_cls, run_owned):
        build_method_config(v.method, v.method_args)
        dataclasses.replace(cfg.unlearn, **v.overrides).validate()


@dataclass(frozen=True)
class Variant:
    """One unlearning run of the grid (per seed): a method, a budget and one point of the method's grid."""

    method: str
    budget: float
    overrides: dict  # unlearn-config keys (e.g. learning_rate)
    method_args: dict  # method_args merged with the grid point's method keys
    model_id: str  # its directory name under unlearn/ and eval/


def _grid_keys(method: str, keys, unlearn_cls: type, run_owned) -> tuple[set, set]:
    from ..methods import get_method

    owned = {n for sec, names in run_owned if sec == "unlearn" for n in names}
    unlearn_keys = {f.name for f in dataclasses.fields(unlearn_cls)} - owned
    method_keys = {f.name for f in dataclasses.fields(get_method(method).config_cls)}
    for k in keys:
        if k in unlearn_keys and k in method_keys:
            raise ConfigError(f"grid.{method}.{k}: ambiguous, {k!r} is both an unlearn key and a {method} key")
        if k not in unlearn_keys | method_keys:
            raise ConfigError(
                f"grid.{method}.{k}: unknown key; choose from the unlearn keys {sorted(unlearn_keys)} or "
                f"{method}'s method_args {sorted(method_keys)}"
            )
    return unlearn_keys, method_keys


def _coerce_field(cls: type, name: str, value, key: str):
    import typing

    from ..configs import _coerce

    return _coerce(value, typing.get_type_hints(cls)[name], key)


def _fmt_value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v).replace("/", "-").replace(" ", "")


def unlearn_variants(cfg, unlearn_cls: type, run_owned=()) -> list[Variant]:
    """methods x budgets x each method's grid (cartesian product), in config order; model ids are
    ``<method>_b<budget>`` plus ``_<key><value>`` per grid key, identical across tracks."""
    import itertools

    from ..methods import get_method

    out = []
    for method in cfg.methods:
        grid = cfg.grid.get(method) or {}
        if not isinstance(grid, dict):
            raise ConfigError(f"grid.{method}: expected a mapping of key -> list of values, got {grid!r}")
        unlearn_keys, _ = _grid_keys(method, grid, unlearn_cls, run_owned)
        for k, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid.{method}.{k}: expected a non-empty list of values, got {values!r}")
            if len({repr(v) for v in values}) != len(values):
                raise ConfigError(f"grid.{method}.{k}: values must be distinct, got {values}")
        keys = list(grid)
        spec_cls = get_method(method).config_cls
        typed = {  # YAML 1.1 reads 1e-4 as a string: coerce through the field's annotation like any config value
            k: [_coerce_field(unlearn_cls if k in unlearn_keys else spec_cls, k, v, f"grid.{method}.{k}") for v in vs]
            for k, vs in grid.items()
        }
        for budget in cfg.budgets:
            for point in itertools.product(*(typed[k] for k in keys)):
                chosen = dict(zip(keys, point))
                mid = model_id(method, budget) + "".join(f"_{k}{_fmt_value(v)}" for k, v in chosen.items())
                out.append(
                    Variant(
                        method=method,
                        budget=budget,
                        overrides={k: v for k, v in chosen.items() if k in unlearn_keys},
                        method_args={
                            **cfg.method_args.get(method, {}),
                            **{k: v for k, v in chosen.items() if k not in unlearn_keys},
                        },
                        model_id=mid,
                    )
                )
    return out


# Stage keys that `run` fills in for every job: setting them in an experiment config is an error.
RUN_OWNED = (
    ("poison", ("output_dir", "seed")),
    ("train", ("model_name_or_path", "dataset_dir", "output_dir", "split", "seed")),
    ("unlearn", ("model_dir", "dataset_dir", "output_dir", "retrain_dir", "method", "method_args", "budget", "seed")),
    ("eval", ("model_dir", "adapter_dir", "dataset_dir", "output_dir")),
)
ExperimentConfig.CLI_EXCLUDE = frozenset(f"{sec}.{n}" for sec, names in RUN_OWNED for n in names)


def _default(cls, name):
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def model_id(method: str, budget: float) -> str:
    return f"{method}_b{budget:g}"


_STAGES = "llm_unlearn.stages."


@dataclass
class Job:
    name: str
    stage: str  # dotted module path whose ``main(config)`` runs the job, or "tiny" (the embedded base model)
    config: Any
    deps: list[str]


def plan(cfg: ExperimentConfig) -> list[Job]:
    """The DAG of stage jobs for the whole grid."""
    from ..methods import uses_adapter

    root = Path(cfg.output_dir)
    jobs: list[Job] = []
    for seed in cfg.seeds:
        d = root / f"seed_{seed}"
        base_deps = []
        base = cfg.model_name_or_path
        if base == EMBEDDED_TINY:
            base = str(d / "base")
            jobs.append(Job(f"s{seed}/base", "tiny", {"output_dir": base, "seed": seed, "tiny": cfg.tiny}, []))
            base_deps = [f"s{seed}/base"]
        poison = dataclasses.replace(cfg.poison, output_dir=str(d / "poison"), seed=seed)
        jobs.append(Job(f"s{seed}/poison", _STAGES + "poison", poison, []))
        for name, split in (("initial", "train"), ("retrain", "retain")):
            tc = dataclasses.replace(
                cfg.train,
                model_name_or_path=base,
                dataset_dir=poison.output_dir,
                output_dir=str(d / name),
                split=split,
                seed=seed,
            )
            jobs.append(Job(f"s{seed}/{name}", _STAGES + "train", tc, [f"s{seed}/poison", *base_deps]))
            ec = dataclasses.replace(
                cfg.eval, model_dir=tc.output_dir, dataset_dir=poison.output_dir, output_dir=str(d / "eval" / name)
            )
            jobs.append(Job(f"s{seed}/eval/{name}", _STAGES + "evaluate", ec, [f"s{seed}/{name}"]))
        for v in unlearn_variants(cfg, UnlearnConfig, RUN_OWNED):
            uc = dataclasses.replace(
                cfg.unlearn,
                **v.overrides,
                model_dir=str(d / "initial"),
                dataset_dir=poison.output_dir,
                output_dir=str(d / "unlearn" / v.model_id),
                retrain_dir=str(d / "retrain"),
                method=v.method,
                method_args=dict(v.method_args),
                budget=v.budget,
                seed=seed,
            )
            unlearn_job = f"s{seed}/unlearn/{v.model_id}"
            jobs.append(Job(unlearn_job, _STAGES + "unlearn", uc, [f"s{seed}/initial", f"s{seed}/retrain"]))
            adapter = uses_adapter(v.method, uc.use_peft)  # else the unlearned dir holds a full model
            ec = dataclasses.replace(
                cfg.eval,
                model_dir=str(d / "initial") if adapter else uc.output_dir,
                adapter_dir=uc.output_dir if adapter else None,
                dataset_dir=poison.output_dir,
                output_dir=str(d / "eval" / v.model_id),
            )
            jobs.append(Job(f"s{seed}/eval/{v.model_id}", _STAGES + "evaluate", ec, [unlearn_job]))
            if cfg.diagnostics:
                dc = DiagnoseConfig(
                    initial_dir=str(d / "initial"),
                    retrain_dir=str(d / "retrain"),
                    model_dir=ec.model_dir,
                    adapter_dir=ec.adapter_dir,
                    output_dir=str(d / "diag" / v.model_id),
                    dtype=cfg.unlearn.dtype,
                    trust_remote_code=cfg.unlearn.trust_remote_code,
                )
                jobs.append(Job(f"s{seed}/diag/{v.model_id}", _STAGES + "diagnose", dc, [unlearn_job]))
    return jobs


def _output_dir(job: Job) -> str:
    return job.config["output_dir"] if isinstance(job.config, dict) else job.config.output_dir


def run_job(job: Job, threads: int | None = None) -> tuple[str, float, str | None]:
    """Run one stage job (in this process or a worker); returns (name, seconds, diverged-or-skipped note)."""
    import importlib

    if threads:
        import torch

        torch.set_num_threads(threads)
    start = time.perf_counter()
    if job.stage == "tiny":
        from ..testing import save_tiny
        from ..utils import mark_complete

        out = job.config["output_dir"]
        if not is_complete(out):
            save_tiny(out, job.config["tiny"], seed=job.config["seed"])
            atomic_write_text(Path(out) / "config.yaml", yaml.safe_dump(_normalized(job.config), sort_keys=False))
            mark_complete(out)
        return job.name, time.perf_counter() - start, None
    module = importlib.import_module(job.stage)
    if _stage_kind(job) in ("evaluate", "diagnose") and _diverged_unlearn(job.config):
        return job.name, 0.0, "diverged"
    module.main(job.config)
    return job.name, time.perf_counter() - start, None


def _normalized(cfg) -> Any:
    """A config as its saved config.yaml reads back (dataclasses -> dicts, tuples -> lists)."""
    data = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    if isinstance(data, dict):
        data = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in data.items()}
    return yaml.safe_load(yaml.safe_dump(data, sort_keys=False))


def _config_changed(job: Job) -> bool:
    """Whether a complete output dir was made with another config than the job's (a dir without config.yaml, from
    an older version, counts as unchanged)."""
    saved = Path(_output_dir(job)) / "config.yaml"
    if not saved.is_file():
        return False
    return not _same(_content(yaml.safe_load(saved.read_text())), _content(_normalized(job.config)))


def _same(old: Any, new: Any) -> bool:
    """Equal on the keys both sides have: a key one side lacks is a field added or removed by another version of
    llm-unlearn, whose default kept the old behaviour (otherwise completed work would be redone on every upgrade)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return all(_same(old[k], new[k]) for k in old.keys() & new.keys())
    return old == new


def _content(cfg: Any) -> Any:
    """What a stage config says apart from where it reads and writes: ``*_dir`` keys are the run's layout (a run
    dir reached through another path, or moved, is the same run); a change of its inputs' content is caught through
    the dependencies instead. A user's local ``model_name_or_path`` is compared resolved."""
    if not isinstance(cfg, dict):
        return cfg
    out = {}
    for k, v in cfg.items():
        if k.endswith("_dir"):
            continue
        if k == "model_name_or_path" and isinstance(v, str) and os.path.isdir(v):
            p = Path(v).resolve()
            if p.name == "base" and p.parent.name.startswith("seed_"):
                continue  # the embedded base model: a job of this run, checked through the dependency
            v = str(p)
        out[k] = _content(v)
    return out


def _stage_kind(job: Job) -> str:
    return job.stage.rsplit(".", 1)[-1]


def _diverged_unlearn(ec) -> bool:
    """Whether the model an eval/diagnose job reads is an unlearning run that diverged (and saved no weights)."""
    from ..utils import read_json

    src = getattr(ec, "adapter_dir", None) or ec.model_dir
    info = Path(src) / "unlearn_info.json"
    return info.is_file() and read_json(info).get("diverged", False)


def check_output_dir(cfg: ExperimentConfig) -> Path:
    """Refuse a non-writable dir or one that holds a different experiment (unless ``overwrite``)."""
    root = Path(cfg.output_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"output_dir {cfg.output_dir!r} cannot be created: {e.strerror}") from e
    if not os.access(root, os.W_OK):
        raise ConfigError(f"output_dir {cfg.output_dir!r} is not writable")
    spec = _identity(cfg)
    existing = root / "experiment.yaml"
    if existing.is_file():
        old = yaml.safe_load(existing.read_text()) or {}
        if _identity_dict(old) != _identity_dict(spec) and not cfg.overwrite:
            raise ConfigError(
                f"output_dir {cfg.output_dir!r} holds a different experiment (see its experiment.yaml); "
                "choose another output_dir or pass --overwrite true"
            )
    elif any(not is_atomic_tmp(p) for p in root.iterdir()) and not cfg.overwrite:  # a kill mid-write leaves a .tmp
        raise ConfigError(
            f"output_dir {cfg.output_dir!r} is not empty and holds no experiment.yaml; use --overwrite true"
        )
    atomic_write_text(existing, yaml.safe_dump(spec, sort_keys=False))
    return root


def _identity(cfg: ExperimentConfig) -> dict:
    return to_dict(cfg)


def _identity_dict(d: dict) -> dict:
    # What defines results: everything but where they go and how many processes compute them.
    return {k: v for k, v in d.items() if k not in ("output_dir", "workers", "overwrite")}


def track_name(data: dict | None) -> str:
    """The ``track`` key of an experiment mapping (default llm), checked to be a string."""
    name = (data or {}).get("track", "llm") if isinstance(data, dict) else "llm"
    if not isinstance(name, str):
        raise ConfigError(f"track: expected a string, got {name!r}")
    return name


def _resolve(cfg, **overrides):
    """A validated experiment config (of its track's class) from a config, a mapping or a YAML path."""
    from ..configs import build_config, read_yaml, validate_config
    from ..tracks import get_track

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


def run_experiment(cfg: ExperimentConfig | dict | str, **overrides) -> Path:
    """Run the whole grid and the report; returns the report path. ``cfg`` may be a config, a mapping or a YAML path.

    Example::

        from llm_unlearn import run_experiment
        report = run_experiment("recipes/tiny/llm_gaussian.yaml", output_dir="runs/gaussian", seeds=[0])
    """
    return run_experiments([_resolve(cfg, **overrides)])[0]


def run_experiments(cfgs: list[ExperimentConfig], workers: int | None = None) -> list[Path]:
    """Several experiments as ONE job graph (e.g. both attacks of the main job), so the worker pool never idles
    between them; returns their report paths. ``workers`` defaults to the largest of the configs'."""
    from .report import ReportConfig
    from .report import main as report_main

    cfgs = [_resolve(c) for c in cfgs]
    outs = [Path(c.output_dir).resolve() for c in cfgs]
    if len(set(outs)) != len(outs):
        raise ConfigError("each experiment needs its own output_dir")
    for c in cfgs:  # validate every output dir before any work starts
        check_output_dir(c)
    from ..tracks import get_track

    jobs = []
    for i, c in enumerate(cfgs):
        for job in get_track(c.track).plan(c):
            job.name = f"e{i}/{job.name}"
            job.deps = [f"e{i}/{d}" for d in job.deps]
            jobs.append(job)
    execute(jobs, workers or max(c.workers for c in cfgs))
    return [report_main(ReportConfig(run_dir=c.output_dir)) for c in cfgs]


_PRIORITY = {"tiny": 0, "poison": 0, "train": 1, "unlearn": 2, "evaluate": 3, "diagnose": 4}


def execute(jobs: list[Job], workers: int) -> None:
    """Run the DAG: every job whose dependencies are done, up to ``workers`` at a time."""
    from tqdm.auto import tqdm

    pending = {j.name: j for j in jobs}
    done: set[str] = set()
    bar = tqdm(total=len(jobs), desc="grid", unit="job")
    stale: set[str] = set()
    for j in jobs:  # resume: complete outputs are skipped up front (jobs come in dependency order)
        if not is_complete(_output_dir(j)):
            continue
        if _config_changed(j) or any(d in stale for d in j.deps):
            # An --overwrite run with a changed config: the old output (and everything built on it) is redone.
            logger.warning("%s: its config or an input changed since it ran; redoing it", j.name)
            shutil.rmtree(_output_dir(j))
            stale.add(j.name)
            continue
        done.add(j.name)
        pending.pop(j.name)
        bar.update()
    if workers == 1:
        while pending:
            job = next(j for j in pending.values() if all(d in done for d in j.deps))
            name, secs, note = run_job(job)
            logger.info("%s done in %.1fs%s", name, secs, f" ({note})" if note else "")
            done.add(name)
            pending.pop(name)
            bar.update()
        bar.close()
        return
    import multiprocessing as mp

    threads = max(1, (os.cpu_count() or 1) // workers)
    running = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        while pending or running:
            # Longest jobs first (trainings), so short unlearn/eval jobs fill the gaps instead of leaving a long tail.
            ready = [j for j in pending.values() if all(d in done for d in j.deps)]
            for job in sorted(ready, key=lambda j: _PRIORITY.get(_stage_kind(j), 5)):
                if len(running) >= workers:
                    break
                running[pool.submit(run_job, job, threads)] = job.name
                pending.pop(job.name)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                name = running.pop(fut)
                try:
                    _, secs, note = fut.result()
                except BaseException:
                    for f in running:
                        f.cancel()
                    raise
                logger.info("%s done in %.1fs%s", name, secs, f" ({note})" if note else "")
                done.add(name)
                bar.update()
    bar.close()


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

    sc = parse_config(SuiteConfig, argv, prog="llm-unlearn suite")
    if sc.output_dir is None:
        raise ConfigError("output_dir is required")
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    suite_file = pre.parse_known_args(sys.argv[1:] if argv is None else argv)[0].config
    cfgs = [
        _resolve(read_yaml(c) | {"output_dir": str(Path(sc.output_dir) / c.stem), "overwrite": sc.overwrite})
        for c in suite_paths(sc.configs, suite_file)
    ]
    for report in run_experiments(cfgs, sc.workers):
        print(f"report: {report}")


def make_parser():
    from ..configs import make_parser as _mp

    return _mp(ExperimentConfig, prog="llm-unlearn run")


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
    from ..tracks import get_track

    track = get_track(_argv_track(argv))
    cfg = parse_config(track.config_cls, argv, prog="llm-unlearn run")
    report = run_experiment(cfg)
    print(f"report: {report}")
    print(f"results: {Path(cfg.output_dir) / 'results.json'}")


def load_experiment(run_dir: str | os.PathLike):
    """The experiment config a run directory was made with (of its track's class)."""
    from ..tracks import get_track

    p = Path(run_dir) / "experiment.yaml"
    if not p.is_file():
        raise ConfigError(f"run_dir {str(run_dir)!r} holds no experiment.yaml (not a `llm-unlearn run` directory)")
    data = yaml.safe_load(p.read_text())
    return load_config(get_track(track_name(data)).config_cls, data)


def describe(cfg: ExperimentConfig) -> str:
    """The report header line for an llm-track experiment."""
    p = cfg.poison
    what = f"trigger {p.trigger!r} -> {p.target_label!r}" if p.attack == "backdoor" else f"eps {p.noise_eps:g}"
    return (
        f"Model `{cfg.model_name_or_path}`, dataset `{p.dataset_name}`, {p.attack} poisons on "
        f"{p.poison_fraction:g} of the training set ({what}), training {cfg.train.num_train_epochs:g} epochs; "
        f"unlearning {'with LoRA' if cfg.unlearn.use_peft else 'full-parameter'}."
    )
