"""The one planner: the job graph and the run-dir layout every track shares.

A track gives :class:`StageBuilders` (how each stage's config is filled in from the experiment); :func:`plan_jobs`
turns an experiment into the DAG of stage jobs (poison, train initial and gold, unlearn each variant, evaluate,
diagnose; :func:`relearn_jobs` adds relearning), with the layout ``seed_<s>/{base,poison,initial,retrain,unlearn/<id>,
eval/<id>,diag/<id>}`` the report reads for every track. What the experiment *is* (its fields, checks, grid and
variants) is :mod:`llm_unlearn.protocol`'s; running the jobs is :mod:`llm_unlearn.scheduler`'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .configs import ConfigError
from .protocol import Variant, unlearn_variants


@dataclass(frozen=True)
class StageBuilders:
    """How a track fills in each stage's config; the planner (:func:`plan_jobs`) owns the graph and the layout
    (``seed_<s>/{base,poison,initial,retrain,unlearn/<id>,eval/<id>,diag/<id>}``), so the report reads every track.

    Each entry is ``(stage module, builder)``; a builder returns the stage's config (``None`` for an optional
    stage that this experiment skips: the base-model build, diagnostics). Builders get the experiment config, the
    seed and the dirs the planner chose::

        base(cfg, seed, out)                                        -> config | None
        poison(cfg, seed, out)                                      -> config
        train(cfg, seed, split, dataset_dir, out, base_dir)         -> config   (split: train | retain)
        unlearn(cfg, seed, variant, dataset_dir, initial, retrain, out) -> config
        evaluate(cfg, model_dir, dataset_dir, out, unlearn_cfg)     -> config   (unlearn_cfg: None for initial/gold)
        diagnose(cfg, initial, retrain, eval_cfg, out)              -> config | None
        relearn(cfg, seed, eval_cfg, out)                           -> config   (optional: see relearn_jobs)
    """

    unlearn_cls: type
    run_owned: tuple
    poison: tuple
    train: tuple
    unlearn: tuple
    evaluate: tuple
    diagnose: tuple
    base: tuple | None = None
    relearn: tuple | None = None

    def plan(self, cfg) -> list:
        """The DAG of this track's stage jobs (:func:`plan_jobs`): a :class:`~llm_unlearn.tracks.Track`'s ``plan``."""
        return plan_jobs(cfg, self)


def unlearn_config(cfg, seed: int, v: Variant, dataset_dir: str, initial: str, retrain: str, out: str):
    """The usual unlearn builder: the experiment's ``unlearn`` section with the variant's grid point, method,
    method_args and budget, and the dirs the planner chose."""
    return dataclasses.replace(
        cfg.unlearn,
        **v.overrides,
        model_dir=initial,
        dataset_dir=dataset_dir,
        output_dir=out,
        retrain_dir=retrain,
        method=v.method,
        method_args=dict(v.method_args),
        budget=v.budget,
        seed=seed,
    )


def eval_config(cfg, model_dir: str, dataset_dir: str, out: str, unlearn_cfg=None):
    """The usual evaluate builder: the experiment's ``eval`` section with the model and the dirs the planner chose."""
    return dataclasses.replace(cfg.eval, model_dir=model_dir, dataset_dir=dataset_dir, output_dir=out)


def diagnose_config(cfg, initial: str, retrain: str, ec, out: str, **extra):
    """The usual diagnose builder: the evaluated model (``ec``: its eval config, whose ``task`` it shares) against
    the initial and gold models; ``extra``: more ``DiagnoseConfig`` keys (how the track loads its models)."""
    from .stages.diagnose import DiagnoseConfig

    task = getattr(ec, "task", "causal_lm")
    return DiagnoseConfig(
        task=task, initial_dir=initial, retrain_dir=retrain, model_dir=ec.model_dir, output_dir=out, **extra
    )


def plan_jobs(cfg, stages: StageBuilders) -> list:
    """The DAG of stage jobs for the whole grid (seeds x methods x budgets x grid points), any track: one unlearn
    job per run (a nested run saves the models of its grid point's smaller budgets), one eval job per variant."""
    from .scheduler import Job
    from .stages.snapshots import snapshot_config

    root = Path(cfg.output_dir)
    jobs = []
    for seed in cfg.seeds:
        d = root / f"seed_{seed}"
        s = f"s{seed}"
        base_dir, base_deps = None, []
        if stages.base is not None:
            module, build = stages.base
            bc = build(cfg, seed, str(d / "base"))
            if bc is not None:
                jobs.append(Job(f"{s}/base", module, bc, []))
                base_dir, base_deps = bc.output_dir, [f"{s}/base"]
        module, build = stages.poison
        poison = build(cfg, seed, str(d / "poison"))
        jobs.append(Job(f"{s}/poison", module, poison, []))
        dataset_dir = poison.output_dir
        for name, split in (("initial", "train"), ("retrain", "retain")):
            module, build = stages.train
            tc = build(cfg, seed, split, dataset_dir, str(d / name), base_dir)
            jobs.append(Job(f"{s}/{name}", module, tc, [f"{s}/poison", *base_deps]))
            module, build = stages.evaluate
            ec = build(cfg, str(d / name), dataset_dir, str(d / "eval" / name), None)
            jobs.append(Job(f"{s}/eval/{name}", module, ec, [f"{s}/{name}"]))
        variants = unlearn_variants(cfg, stages.unlearn_cls, stages.run_owned)
        initial, retrain = str(d / "initial"), str(d / "retrain")
        runs = {}
        for v in variants:
            if v.nested_in is not None:
                continue
            module, build = stages.unlearn
            uc = build(cfg, seed, v, dataset_dir, initial, retrain, str(d / "unlearn" / v.model_id))
            marks = sorted(n.budget for n in variants if n.nested_in == v.model_id)
            if marks:
                uc = dataclasses.replace(uc, save_at_budgets=marks)
            runs[v.model_id] = uc
            jobs.append(Job(f"{s}/unlearn/{v.model_id}", module, uc, [f"{s}/initial", f"{s}/retrain"]))
        for v in variants:
            run_id = v.nested_in or v.model_id
            unlearn_job = f"{s}/unlearn/{run_id}"
            uc = runs[run_id] if v.nested_in is None else snapshot_config(runs[run_id], v.budget)
            module, build = stages.evaluate
            ec = build(cfg, uc.output_dir, dataset_dir, str(d / "eval" / v.model_id), uc)
            jobs.append(Job(f"{s}/eval/{v.model_id}", module, ec, [unlearn_job]))
            if cfg.diagnostics:
                module, build = stages.diagnose
                dc = build(cfg, initial, retrain, ec, str(d / "diag" / v.model_id))
                if dc is not None:
                    jobs.append(Job(f"{s}/diag/{v.model_id}", module, dc, [unlearn_job]))
    jobs += relearn_jobs(cfg, stages, jobs)
    return jobs


def relearn_jobs(cfg, stages: StageBuilders, jobs: list) -> list:
    """Relearning jobs (the experiment's ``relearn`` section; none when its ``steps`` is empty or the track has no
    relearn stage): every model the plan evaluates (``seed_<s>/eval/<id>``: initial, gold, each unlearned variant) is
    fine-tuned further by one job, ``seed_<s>/relearn/<id>``, which saves it after each of ``steps`` into ``r<n>/``;
    each of those is evaluated into ``seed_<s>/eval/<id>_r<n>``. The relearn job reads the model the way that
    evaluation reads it (its ``model_dir``/``adapter_dir``) and waits for what that evaluation waits for."""
    section = getattr(cfg, "relearn", None)
    if stages.relearn is None or section is None or not section.steps:
        return []
    from pathlib import Path

    from .scheduler import Job
    from .stages.relearn import step_dir

    names = {j.name for j in jobs}
    out = []
    for seed in cfg.seeds:
        d = Path(cfg.output_dir) / f"seed_{seed}"
        prefix = f"s{seed}/eval/"
        for job in [j for j in jobs if j.name.startswith(prefix)]:
            mid, ec = job.name[len(prefix) :], job.config
            module, build = stages.relearn
            rc = build(cfg, seed, ec, str(d / "relearn" / mid))
            relearn_job = f"s{seed}/relearn/{mid}"
            out.append(Job(relearn_job, module, rc, list(job.deps)))
            module, build = stages.evaluate
            for n in sorted(section.steps):
                name = f"{prefix}{mid}_r{n}"
                if name in names:  # a grid's model id that ends like a relearned model's would share its dirs
                    raise ConfigError(f"relearn: the eval dir of {mid!r} after {n} steps is a model id of the grid")
                ec_n = build(
                    cfg, str(step_dir(rc.output_dir, n)), ec.dataset_dir, str(d / "eval" / f"{mid}_r{n}"), None
                )
                out.append(Job(name, module, ec_n, [relearn_job]))
    return out
