"""What every track's experiment shares: the grid, its validation and its expansion into unlearning variants.

A track's experiment config subclasses :class:`ProtocolConfig` and adds its own sections; ``check_experiment``
validates the shared fields (every grid value against its dataclass, before any work); ``unlearn_variants`` expands
methods x budgets x each method's grid into the model ids every track uses for ``unlearn/<id>`` and ``eval/<id>``
(nesting smaller budgets into the run of the largest where it can); ``check_degenerate`` and
``poison_effect_problem`` decide once, for both tracks, which experiments are degenerate. The job graph built from all
this is :mod:`llm_unlearn.planner`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .budget import check_budget_buys_a_step, check_split_sizes
from .configs import ConfigError
from .executors import SlurmConfig, check_executor

logger = logging.getLogger(__name__)


@dataclass
class ProtocolConfig:
    """The fields every track's experiment config shares (and the report reads): the grid, selection and execution.
    A track's config subclasses it and adds its own sections (model, poison, train, unlearn, eval)."""

    track: str = field(default="llm", metadata={"help": "which track's config this is (llm, or e.g. image)"})
    plugins: list[str] = field(
        default_factory=list,
        metadata={
            "help": "modules to import before anything else, e.g. [my_unlearn_plugin]: what they register "
            "(@register_method, @register_attack) can then be named in this config; every worker imports them too"
        },
    )
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
    nested_budgets: bool = field(
        default=True,
        metadata={
            "help": "one unlearning run per seed, method and grid point spends the largest budget and saves its model "
            "as its compute crosses each smaller one (the model a run with that budget ends with), where the "
            "schedule and the method allow it (constant learning rate, no warmup, not ssd; the report says which "
            "did not); false: every budget is a run of its own"
        },
    )
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
    launcher: Literal["local", "accelerate"] = field(
        default="local",
        metadata={
            "help": "how train/unlearn jobs run: local (in the worker pool, like every other job) or accelerate (each "
            "one as `accelerate launch --config_file ACCELERATE_CONFIG -m llm_unlearn train|unlearn --config "
            "<output_dir>.launch.yaml`; poison, evaluations, diagnostics and the report stay in the pool)"
        },
    )
    accelerate_config: str | None = field(
        default=None,
        metadata={"help": "launcher accelerate: its config file, e.g. recipes/accelerate_configs/zero3.yaml"},
    )
    num_processes: int | None = field(
        default=None,
        metadata={"help": "launcher accelerate: processes per launched job (null: the accelerate config's)"},
    )
    executor: Literal["local", "ray", "slurm"] = field(
        default="local",
        metadata={
            "help": "where stage jobs run: local (processes on this machine), ray (each job a Ray task with its "
            "stage's resources, on ray_address) or slurm (each job an sbatch job through submitit, see slurm); ray "
            "and slurm need a filesystem shared by every node (checked before work), and workers is then how many "
            "jobs may be in flight at once"
        },
    )
    ray_address: str | None = field(
        default=None,
        metadata={
            "help": "executor ray: the cluster to join (auto, or ray://head:10001); null: start a Ray instance on "
            "this machine, bound to 127.0.0.1"
        },
    )
    resources: dict[str, dict[str, float]] = field(
        default_factory=dict,
        metadata={
            "help": "executor ray|slurm: what each job of a stage asks for, e.g. {train: {num_gpus: 1, num_cpus: 8}, "
            "unlearn: {num_gpus: 1}, default: {num_cpus: 2}}; stages: base, poison, train, unlearn, evaluate, "
            "diagnose, default; keys: num_cpus, num_gpus, memory_gb (default 1 CPU, no GPU)"
        },
    )
    slurm: SlurmConfig = field(
        default_factory=SlurmConfig, metadata={"help": "executor slurm: how jobs are submitted"}
    )
    overwrite: bool = field(default=False, metadata={"help": "reuse an output_dir that holds another experiment"})


def check_experiment(cfg, unlearn_cls: type, run_owned=()) -> None:
    """The checks every track's experiment config shares: its track, seeds, methods, method_args, grid, budgets,
    workers, and stage keys that ``run`` sets itself (``run_owned``: (section, names) pairs)."""
    from .registry import check_method_names, load_plugins

    own = _default(type(cfg), "track")  # each track's config class defaults ``track`` to its own name
    if cfg.track != own:
        raise ConfigError(f"track: this is the {own} track's config, got track={cfg.track!r}")
    load_plugins(cfg.plugins)  # first: the methods and attacks they register are named below
    if not cfg.seeds:
        raise ConfigError("seeds must hold at least one seed")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds must be distinct, got {cfg.seeds}")
    if not cfg.methods:
        raise ConfigError("methods must name at least one registered method")
    if len(set(cfg.methods)) != len(cfg.methods):
        raise ConfigError(f"methods must be distinct, got {cfg.methods}")
    # The methods themselves are never imported here (seconds: transformers' Trainer): names are checked against the
    # registry's list, method_args and grid values against each knob class read from its file (methods/knobs.py).
    check_method_names(cfg.methods)
    from .methods import build_method_config
    from .registry import BUILTIN_METHOD_NAMES, METHODS

    for m in cfg.methods:
        build_method_config(m, cfg.method_args.get(m))
    known = sorted(set(BUILTIN_METHOD_NAMES) | set(METHODS))
    for section in ("method_args", "grid"):
        for m in getattr(cfg, section):
            if m in cfg.methods:
                continue
            if m not in known:  # a typo, or a plugin that was not loaded
                raise ConfigError(
                    f"{section}.{m}: {m!r} is not in methods={cfg.methods} and is no registered method; "
                    f"choose from {known}"
                )
            # A recipe's settings for a method that the command line left out (--methods "[gd]"): unused, not wrong.
            logger.warning("%s.%s: %r is not in methods=%s; its settings are not used", section, m, m, cfg.methods)
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
    check_launcher(cfg)
    check_executor(cfg)
    for section, names in run_owned:
        sub = getattr(cfg, section)
        for name in names:
            if getattr(sub, name) != _default(type(sub), name):
                raise ConfigError(f"{section}.{name} is set by run; remove it from the experiment config")
    # Building every variant validates each grid value against its dataclass (types, ranges) before any work. Not
    # nested: which budgets nest is the trainers' to say (an import of the methods), and it cannot make a config wrong.
    for v in _grid_variants(cfg, unlearn_cls, run_owned):
        build_method_config(v.method, v.method_args)
        dataclasses.replace(cfg.unlearn, **v.overrides).validate()


def check_launcher(cfg) -> None:
    """The launcher keys, before any work: an accelerate launch needs accelerate and a config file that exists."""
    if cfg.num_processes is not None and cfg.num_processes < 1:
        raise ConfigError(f"num_processes must be >= 1 (or null: the accelerate config's), got {cfg.num_processes}")
    if cfg.launcher == "local":
        for key in ("accelerate_config", "num_processes"):
            if getattr(cfg, key) is not None:  # a recipe may name one for GPU runs while this run stays local
                logger.warning("%s is only read with launcher: accelerate (this run's launcher is local)", key)
        return
    import importlib.util
    from pathlib import Path

    if cfg.accelerate_config is None:
        raise ConfigError("launcher accelerate needs accelerate_config (e.g. recipes/accelerate_configs/zero3.yaml)")
    if not Path(cfg.accelerate_config).is_file():
        raise ConfigError(f"accelerate_config: {cfg.accelerate_config!r} does not exist")
    if importlib.util.find_spec("accelerate") is None:
        raise ConfigError("launcher accelerate: the accelerate package is not installed (pip install accelerate)")


@dataclass(frozen=True)
class Variant:
    """One unlearning run of the grid (per seed): a method, a budget and one point of the method's grid."""

    method: str
    budget: float
    overrides: dict  # unlearn-config keys (e.g. learning_rate)
    method_args: dict  # method_args merged with the grid point's method keys
    model_id: str  # its directory name under eval/ (and under unlearn/ when it is a run of its own)
    # nested budgets: the model id of the run (same method and grid point, the largest budget) that saves this
    # variant's model as its spend crosses this budget, in unlearn/<nested_in>/at_budget_<budget>; None: its own run
    nested_in: str | None = None

    def unlearn_dir(self, seed_dir) -> Path:
        """Where this variant's unlearned model (and its ``unlearn_info.json``) is, under ``seed_<s>``."""
        from .stages.snapshots import snapshot_name

        if self.nested_in is None:
            return Path(seed_dir) / "unlearn" / self.model_id
        return Path(seed_dir) / "unlearn" / self.nested_in / snapshot_name(self.budget)


def _grid_keys(method: str, keys, unlearn_cls: type, run_owned) -> tuple[set, set]:
    from .methods import knobs_class

    owned = {n for sec, names in run_owned if sec == "unlearn" for n in names}
    unlearn_keys = {f.name for f in dataclasses.fields(unlearn_cls)} - owned
    method_keys = {f.name for f in dataclasses.fields(knobs_class(method))}
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

    from .configs import _coerce

    return _coerce(value, typing.get_type_hints(cls)[name], key)


def _fmt_value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v).replace("/", "-").replace(" ", "")


def unlearn_variants(cfg, unlearn_cls: type, run_owned=()) -> list[Variant]:
    """methods x budgets x each method's grid (cartesian product), in config order; model ids are
    ``<method>_b<budget>`` plus ``_<key><value>`` per grid key, identical across tracks."""
    out = _grid_variants(cfg, unlearn_cls, run_owned)
    return _nest(cfg, out, unlearn_cls) if getattr(cfg, "nested_budgets", False) else out


def _grid_variants(cfg, unlearn_cls: type, run_owned=()) -> list[Variant]:
    """:func:`unlearn_variants` before nesting: each variant its own run."""
    import itertools

    from .methods import knobs_class

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
        spec_cls = knobs_class(method)
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


def _grid_point(v: Variant) -> tuple:
    return v.method, repr(sorted(v.overrides.items())), repr(sorted(v.method_args.items()))


def _nest(cfg, variants: list[Variant], unlearn_cls: type) -> list[Variant]:
    """Point every variant but the largest budget of its (method, grid point) at the largest one's run, where
    :func:`nesting_problem` allows it."""
    largest: dict[tuple, Variant] = {}
    for v in variants:
        key = _grid_point(v)
        if key not in largest or v.budget > largest[key].budget:
            largest[key] = v
    out = []
    for v in variants:
        top = largest[_grid_point(v)]
        if top is not v and nesting_problem_of(cfg, v, unlearn_cls) is None:
            v = dataclasses.replace(v, nested_in=top.model_id)
        out.append(v)
    return out


def nesting_problem_of(cfg, v: Variant, unlearn_cls: type) -> str | None:
    """Why this variant's budget cannot come from a longer run of its grid point (None if it can)."""
    from .stages.snapshots import nesting_problem

    section = cfg.unlearn if isinstance(cfg.unlearn, unlearn_cls) else unlearn_cls()
    return nesting_problem(dataclasses.replace(section, **v.overrides, method=v.method))


def nesting_notes(cfg, unlearn_cls: type) -> list[str]:
    """What the report says of how the budgets ran: nested, or each its own run and why."""
    if len(cfg.budgets) < 2:
        return []
    if not cfg.nested_budgets:
        return ["Every budget is an unlearning run of its own (`nested_budgets: false`)."]
    variants = unlearn_variants(cfg, unlearn_cls)
    separate = {}
    for v in variants:
        problem = nesting_problem_of(cfg, v, unlearn_cls)
        if problem:
            separate.setdefault(v.method, problem)
    nested = sorted({v.method for v in variants if v.nested_in is not None})
    notes = []
    if nested:
        notes.append(
            f"Budgets are nested for {', '.join(nested)}: one run per seed and grid point spends the largest budget "
            "and saves its model as its compute crosses each smaller one (`compute_fraction` is what it had spent)."
        )
    notes += [f"{m}: each budget is a run of its own, because {why}." for m, why in separate.items()]
    return notes


def _default(cls, name):
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def model_id(method: str, budget: float) -> str:
    return f"{method}_b{budget:g}"


def describe_experiment(model: str, dataset: str, poison, training: str, unlearning: str) -> str:
    """The report header's line on an experiment of any track: its model, data, poisons (with the attack's own line,
    hook (d)), training and unlearning."""
    what = poison.build_attack().describe()
    return (
        f"Model {model}, dataset {dataset}, {poison.attack} poisons on {poison.poison_fraction:g} of the training set "
        f"({what}), training {training}; unlearning {unlearning}."
    )


# --- Degenerate experiments: decided here, once, for both tracks and for `run` as for the single stages ---


def check_degenerate(cfg, n_train: int | None, n_labels: int, train_batch: int, ref_per_example: float) -> None:
    """The degenerate-experiment rules on an experiment config, before any work, where the training-set size is
    known from the config (``n_train``; None: checked by the stages once the data is loaded): retain and forget
    sets a batch can be drawn from, and budgets that buy a step. ``ref_per_example``: the most compute one retain
    example can cost the gold run (epochs x the largest per-example cost), so ``n_retain x ref_per_example`` bounds
    the budget's 100 %."""
    if n_train is None:
        return
    variants = _grid_variants(cfg, type(cfg.unlearn), ())  # nested or not, each variant spends its own budget
    default = cfg.unlearn.per_device_train_batch_size
    batches = [v.overrides.get("per_device_train_batch_size", default) for v in variants]
    fraction = cfg.poison.poison_fraction
    n_forget = round(fraction * n_train)
    where = f"poison_fraction={fraction:g} of {n_train} training examples: "
    check_split_sizes(n_train - n_forget, n_forget, max([train_batch, *batches]), n_labels, where)
    ref_max = (n_train - n_forget) * ref_per_example
    for v, batch in zip(variants, batches):
        accum = v.overrides.get("gradient_accumulation_steps", cfg.unlearn.gradient_accumulation_steps)
        unit = "examples" if cfg.track == "image" else "tokens"
        check_budget_buys_a_step(v.budget, ref_max, batch * accum, unit, exact=False)


# An initial model whose poison metric cannot be told from the gold model's leaves nothing to unlearn: its gap closed
# (a ratio over that difference) is noise, so the report prints NO_EFFECT instead of a number.
MIN_INITIAL_Z = 2.0  # Gaussian: |z| of the initial model's poisons below this -> the test does not see them
MIN_Z_GAP = 2.0  # Gaussian: |z(initial) - z(gold)| below this -> the two models are not told apart
MIN_RATE_GAP = 0.2  # asr, poison_success: |M(initial) - M(gold)| below this
MIN_ACCURACY_GAP = 0.05  # clean_accuracy (the metric of accuracy-degrading attacks): |M(initial) - M(gold)| below this
NO_EFFECT = "no poison effect to unlearn; gap closed is not meaningful"


def poison_effect_problem(metric: str, initial: dict, gold: dict) -> str | None:
    """Why the initial model's poison metric is not distinguishable from the gold model's (None if it is), from their
    eval_results: the Gaussian attack by the z of the test, rates and accuracies by their difference."""

    def num(d, k):
        v = d.get(k)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    if metric == "gus_mean":
        zi, zg = num(initial, "gus_z"), num(gold, "gus_z")
        if zi is None or zg is None:
            return None
        if abs(zi) < MIN_INITIAL_Z:
            return (
                f"the initial model's Gaussian test gives z = {zi:+.2f} (|z| < {MIN_INITIAL_Z:g}): no poison detected"
            )
        if abs(zi - zg) < MIN_Z_GAP:
            return f"z = {zi:+.2f} (initial) and {zg:+.2f} (gold) differ by less than {MIN_Z_GAP:g}"
        return None
    mi, mg = num(initial, metric), num(gold, metric)
    if mi is None or mg is None:
        return None
    threshold = MIN_ACCURACY_GAP if metric == "clean_accuracy" else MIN_RATE_GAP
    if abs(mi - mg) < threshold:
        return f"{metric} = {mi:.3f} (initial) and {mg:.3f} (gold) differ by less than {threshold:g}"
    return None
