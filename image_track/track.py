"""The image track for ``llm-unlearn run``: an experiment config and a planner of image stage jobs, registered as
the ``image`` entry point of ``llm_unlearn.tracks`` (``llm_unlearn`` never imports this package).

The job graph and output layout are the LLM track's (``seed_<s>/{poison,initial,retrain,unlearn/<id>,eval/<id>,
diag/<id>}``), so the shared report reads both; the grid and model ids come from ``unlearn_variants``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from llm_unlearn.configs import ConfigError
from llm_unlearn.protocol import ProtocolConfig
from llm_unlearn.tracks import Track

from . import attacks  # noqa: F401  (loading the track registers its attacks)
from .data import DataConfig
from .models import ModelConfig
from .stages.evaluate import ImageEvalConfig
from .stages.poison import PoisonSection
from .stages.unlearn import ImageUnlearnConfig
from .training import TrainSection

_STAGES = "image_track.stages."

# Stage keys `run` fills in for every job: setting them in an experiment config is an error.
RUN_OWNED = (
    (
        "unlearn",
        (
            "model_dir",
            "dataset_dir",
            "output_dir",
            "retrain_dir",
            "reference_compute_tokens",
            "method",
            "method_args",
            "budget",
            "seed",
        ),
    ),
    ("eval", ("model_dir", "dataset_dir", "output_dir")),
)


@dataclass
class ImageExperimentConfig(ProtocolConfig):
    """The protocol on image classifiers: poison, train initial + gold, unlearn (methods x budgets x grid), eval."""

    CLI_EXCLUDE = tuple(f"{sec}.{n}" for sec, names in RUN_OWNED for n in names)

    track: str = field(default="image", metadata={"help": "image (this config)"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "the clean images"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the classifier"})
    poison: PoisonSection = field(default_factory=PoisonSection, metadata={"help": "the attack"})
    train: TrainSection = field(
        default_factory=TrainSection, metadata={"help": "initial/gold (and surrogate) training"}
    )
    unlearn: ImageUnlearnConfig = field(default_factory=ImageUnlearnConfig, metadata={"help": "unlearning settings"})
    eval: ImageEvalConfig = field(default_factory=ImageEvalConfig, metadata={"help": "evaluation settings"})

    def validate(self) -> None:
        from llm_unlearn.protocol import check_experiment

        if self.track != "image":
            raise ConfigError(f"track: this is the image track's config, got track={self.track!r}")
        self.poison.build_attack().check(self)  # the attack against the rest of the experiment (model, training)
        check_experiment(self, ImageUnlearnConfig, RUN_OWNED)
        from llm_unlearn.protocol import check_degenerate

        # Degenerate experiments, before any work, where the data size is known (the embedded digits): the gold run
        # costs one example per retain example and epoch (the stages check the exact figures on the data).
        check_degenerate(self, self._train_size(), 10, self.train.batch_size, self.train.epochs)

    def _train_size(self) -> int | None:
        d = self.data
        if d.dataset_name != "embedded:digits":
            return None
        n = 1797 - round(d.test_fraction * 1797)  # sklearn's digits, split as image_track.data._digits does
        return min(n, d.max_train_samples or n)


def plan(cfg: ImageExperimentConfig) -> list:
    """The DAG of image stage jobs for the whole grid."""
    from llm_unlearn.protocol import unlearn_variants
    from llm_unlearn.scheduler import Job

    from .stages.diagnose import ImageDiagnoseConfig
    from .stages.poison import ImagePoisonConfig
    from .stages.train import ImageTrainConfig

    root = Path(cfg.output_dir)
    jobs = []
    for seed in cfg.seeds:
        d = root / f"seed_{seed}"
        poison = ImagePoisonConfig(
            output_dir=str(d / "poison"), seed=seed, poison=cfg.poison, data=cfg.data, model=cfg.model, train=cfg.train
        )
        jobs.append(Job(f"s{seed}/poison", _STAGES + "poison", poison, []))
        for name, split in (("initial", "train"), ("retrain", "retain")):
            tc = ImageTrainConfig(
                dataset_dir=poison.output_dir,
                output_dir=str(d / name),
                split=split,
                seed=seed,
                model=cfg.model,
                train=cfg.train,
            )
            jobs.append(Job(f"s{seed}/{name}", _STAGES + "train", tc, [f"s{seed}/poison"]))
            ec = dataclasses.replace(
                cfg.eval, model_dir=tc.output_dir, dataset_dir=poison.output_dir, output_dir=str(d / "eval" / name)
            )
            jobs.append(Job(f"s{seed}/eval/{name}", _STAGES + "evaluate", ec, [f"s{seed}/{name}"]))
        for v in unlearn_variants(cfg, ImageUnlearnConfig, RUN_OWNED):
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
            ec = dataclasses.replace(
                cfg.eval,
                model_dir=uc.output_dir,
                dataset_dir=poison.output_dir,
                output_dir=str(d / "eval" / v.model_id),
            )
            jobs.append(Job(f"s{seed}/eval/{v.model_id}", _STAGES + "evaluate", ec, [unlearn_job]))
            if cfg.diagnostics:
                dc = ImageDiagnoseConfig(
                    initial_dir=str(d / "initial"),
                    retrain_dir=str(d / "retrain"),
                    model_dir=uc.output_dir,
                    output_dir=str(d / "diag" / v.model_id),
                )
                jobs.append(Job(f"s{seed}/diag/{v.model_id}", _STAGES + "diagnose", dc, [unlearn_job]))
    return jobs


def describe(cfg: ImageExperimentConfig) -> str:
    """The report header line for an image-track experiment."""
    p, dcfg = cfg.poison, cfg.data
    what = p.build_attack().describe()  # the attack's own line (d)
    size = f", resized to {dcfg.image_size}x{dcfg.image_size}" if dcfg.image_size else ""
    shape = {
        "cnn": f" (width {cfg.model.width}, hidden {cfg.model.hidden})",
        "resnet18": f" (width {cfg.model.width})",
        "mlp": f" (hidden {cfg.model.hidden})",
    }.get(cfg.model.arch, "")
    return (
        f"Model `{cfg.model.arch}`{shape}, dataset `{dcfg.dataset_name}`{size}, {p.attack} poisons "
        f"on {p.poison_fraction:g} of the training set ({what}), training {cfg.train.epochs} epochs SGD; unlearning "
        f"full-parameter ({cfg.unlearn.optim}, lr {cfg.unlearn.learning_rate:g})."
    )


TRACK = Track(name="image", config_cls=ImageExperimentConfig, plan=plan, describe=describe)
