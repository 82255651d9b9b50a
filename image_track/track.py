"""The image track for ``llm-unlearn run``: an experiment config and the builders of its stage configs, registered as
the ``image`` entry point of ``llm_unlearn.tracks`` (``llm_unlearn`` never imports this package).

The job graph and output layout are the shared planner's (``llm_unlearn.planner.plan_jobs``), as are the unlearn,
evaluate and diagnose builders; this module only says how the image poison and train configs are filled in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from llm_unlearn.planner import StageBuilders, diagnose_config, eval_config, unlearn_config
from llm_unlearn.protocol import ProtocolConfig, check_degenerate, check_experiment, describe_experiment
from llm_unlearn.stages.unlearn import UnlearnRun
from llm_unlearn.tasks.classification import ClassifierTrainConfig
from llm_unlearn.tracks import Track

from . import attacks  # noqa: F401  (loading the track registers its attacks)
from .data import DataConfig
from .models import ModelConfig
from .task import ImageEvalConfig, ImageTrainConfig, ImageUnlearnConfig
from .poisoning import ImagePoisonConfig, PoisonSection


# Stage keys `run` fills in for every job: setting them in an experiment config is an error.
RUN_OWNED = (
    ("unlearn", tuple(f.name for f in dataclasses.fields(UnlearnRun))),  # every key of UnlearnRun
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
    train: ClassifierTrainConfig = field(
        default_factory=ClassifierTrainConfig, metadata={"help": "initial/gold (and surrogate) training"}
    )
    unlearn: ImageUnlearnConfig = field(default_factory=ImageUnlearnConfig, metadata={"help": "unlearning settings"})
    eval: ImageEvalConfig = field(default_factory=ImageEvalConfig, metadata={"help": "evaluation settings"})

    def validate(self) -> None:
        self.poison.build_attack().check(self)  # the attack against the rest of the experiment (model, training)
        check_experiment(self, ImageUnlearnConfig, RUN_OWNED)
        # Degenerate experiments, before any work, where the data size is known (the embedded digits): the gold run
        # costs one example per retain example and epoch (the stages check the exact figures on the data).
        check_degenerate(self, self._train_size(), 10, self.train.batch_size, self.train.epochs)

    def _train_size(self) -> int | None:
        d = self.data
        if d.dataset_name != "embedded:digits":
            return None
        n = 1797 - round(d.test_fraction * 1797)  # sklearn's digits, split as image_track.data._digits does
        return min(n, d.max_train_samples or n)


def _poison(cfg: ImageExperimentConfig, seed: int, out: str):
    return ImagePoisonConfig(
        output_dir=out, seed=seed, poison=cfg.poison, data=cfg.data, model=cfg.model, train=cfg.train
    )


def _train(cfg: ImageExperimentConfig, seed: int, split: str, dataset_dir: str, out: str, base_dir):
    return ImageTrainConfig(
        dataset_dir=dataset_dir, output_dir=out, split=split, seed=seed, model=cfg.model, train=cfg.train
    )


STAGES = StageBuilders(
    unlearn_cls=ImageUnlearnConfig,
    run_owned=RUN_OWNED,
    poison=("llm_unlearn.stages.poison", _poison),
    train=("llm_unlearn.stages.train", _train),
    unlearn=("llm_unlearn.stages.unlearn", unlearn_config),
    evaluate=("llm_unlearn.stages.evaluate", eval_config),  # the shared stages, with the image task (task.py)
    diagnose=("llm_unlearn.stages.diagnose", diagnose_config),
)


def describe(cfg: ImageExperimentConfig) -> str:
    """The report header line for an image-track experiment."""
    d, m, u = cfg.data, cfg.model, cfg.unlearn
    size = f", resized to {d.image_size}x{d.image_size}" if d.image_size else ""
    shape = {
        "cnn": f" (width {m.width}, hidden {m.hidden})",
        "resnet18": f" (width {m.width})",
        "mlp": f" (hidden {m.hidden})",
    }
    model, dataset = f"`{m.arch}`{shape.get(m.arch, '')}", f"`{d.dataset_name}`{size}"
    unlearning = f"full-parameter ({u.optim}, lr {u.learning_rate:g})"
    return describe_experiment(model, dataset, cfg.poison, f"{cfg.train.epochs} epochs SGD", unlearning)


TRACK = Track(name="image", config_cls=ImageExperimentConfig, plan=STAGES.plan, describe=describe)
