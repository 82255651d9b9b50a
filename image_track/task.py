"""The image classification task for the shared stages (the ``image_classification`` entry point of
``llm_unlearn.tasks``): what the poison, train, unlearn, evaluate and diagnose stages ask of an image model and its
data. Batch-level quantities are ``llm_unlearn.tasks.classification.ClassificationTask``'s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from llm_unlearn.attacks import attack_from_manifest
from llm_unlearn.budget import check_budget_buys_a_step, check_manifest_splits
from llm_unlearn.configs import ConfigError, check_positive
from llm_unlearn.stages.evaluate import eval_record
from llm_unlearn.stages.train import finish_training
from llm_unlearn.stages.unlearn import SCHEDULE_HELP, WARMUP_HELP, UnlearnRun, classifier_trainer
from llm_unlearn.stages.unlearn import check_unlearn_settings, reference_compute
import llm_unlearn.training as training
from llm_unlearn.tasks.classification import ClassificationTask, ClassifierTrainConfig, make_augment
from llm_unlearn.tasks.classification import per_example_loss, predict

from . import attacks  # noqa: F401  (registers the image attacks: a worker running an image stage rebuilds one)
from .data import load_dataset_dir, read_manifest, splits
from .models import ModelConfig, build_model, check_same_arch, load_model, save_model
from .poisoning import poison_images


@dataclass
class ImageEvalConfig:
    """Evaluate an image classifier: utility, attack success, Gaussian Unlearning Score, loss MIA."""

    task: ClassVar[str] = "image_classification"  # the shared evaluate stage hands this config to ImageTask

    model_dir: str | None = field(default=None, metadata={"help": "a trained or unlearned model dir"})
    dataset_dir: str | None = field(default=None, metadata={"help": "output_dir of the image poison stage"})
    output_dir: str | None = field(default=None, metadata={"help": "where eval_results.json goes"})
    batch_size: int = field(default=512, metadata={"help": "inference batch size"})
    gus_batch_size: int = field(default=256, metadata={"help": "poisons per input-gradient backward pass"})
    fresh_noise_draws: int = field(default=10, metadata={"help": "fresh (never trained) noises per poison"})

    def validate(self) -> None:
        check_positive(self, at_least_one=("batch_size", "gus_batch_size", "fresh_noise_draws"))


@dataclass
class ImageTrainConfig:
    """Train the initial model on ``train`` (poisons included) or the gold model on ``retain`` of a poisoned image
    dataset, from the same seeded initialisation; ``train.save_epochs`` makes a killed run resume."""

    task: ClassVar[str] = "image_classification"

    dataset_dir: str | None = field(default=None, metadata={"help": "output_dir of the image poison stage"})
    output_dir: str | None = field(default=None, metadata={"help": "where the model goes"})
    split: Literal["train", "retain"] = field(
        default="train", metadata={"help": "train = poisoned set (initial model); retain = gold retrain"}
    )
    seed: int = field(default=0, metadata={"help": "initialisation (shared by initial and gold) and data order"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "architecture"})
    train: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig, metadata={"help": "optimisation"})


@dataclass
class ImageUnlearnConfig(UnlearnRun):
    """Unlearn the forget set from an image classifier with one method from METHODS under a compute budget: the
    shared unlearn stage with the image task; the budget unit is examples through forward+backward (a reference
    forward counts one third). Full-parameter only (LoRA is an LLM-track option)."""

    task: ClassVar[str] = "image_classification"

    learning_rate: float = field(default=0.01, metadata={"help": "optimizer learning rate"})
    optim: Literal["sgd", "adamw_torch"] = field(default="sgd", metadata={"help": "sgd (momentum) or adamw_torch"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "retain (and forget) examples per step"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    weight_decay: float = field(default=5e-4, metadata={"help": "weight decay (as in training)"})
    warmup_ratio: float = field(default=0.0, metadata={"help": WARMUP_HELP})
    lr_scheduler_type: str = field(default="constant", metadata={"help": SCHEDULE_HELP})
    max_grad_norm: float = field(default=5.0, metadata={"help": "gradient clipping (0 = off)"})
    augment: Literal["none", "crop_flip"] = field(default="none", metadata={"help": "as train.augment"})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (GPU)"})
    logging_steps: int = field(default=10, metadata={"help": "log every N steps"})
    progress: bool = field(default=False, metadata={"help": "show a progress bar"})
    save_steps: int = field(
        default=0,
        metadata={
            "help": "save a Trainer checkpoint every N steps so a killed run resumes from the last one (compute spent "
            "and augmentation RNG included) instead of starting over (0: no checkpoints); deleted at the end"
        },
    )
    trainer_args: dict[str, Any] = field(default_factory=dict, metadata={"help": "extra TrainingArguments"})

    def validate(self) -> None:
        check_unlearn_settings(self, ("logging_steps",))
        for key in ("optim", "optim_args"):
            if key in self.trainer_args:
                raise ConfigError(f"trainer_args.{key}: set optim/momentum as top-level unlearn keys")


def check_image_splits(manifest: dict, batch_size: int, dataset_dir: str) -> None:
    check_manifest_splits(manifest, batch_size, int(manifest.get("num_classes", 0)), dataset_dir)


class ImageTask:
    """The stage-level seam of image classifiers (``llm_unlearn.tasks.stage_task``)."""

    name = "image_classification"

    def load_model(self, model_dir: str, cfg=None):
        return load_model(model_dir)

    def check_models(self, dirs: dict[str, str | None]) -> None:
        check_same_arch(dirs)

    def check_eval(self, cfg: ImageEvalConfig) -> None:
        self.check_models({"model_dir": cfg.model_dir})
        read_manifest(cfg.dataset_dir)

    def evaluate(self, cfg: ImageEvalConfig, out: Path) -> dict:
        """Clean accuracy, the attack's metrics (its ``evaluate`` hook), loss MIA: the LLM track's keys."""
        start = time.perf_counter()
        tensors, manifest = load_dataset_dir(cfg.dataset_dir)
        model, data = self.load_model(cfg.model_dir), splits(tensors, manifest)
        test, forget = data["test"], data["forget"]
        preds = predict(model, test.images, cfg.batch_size)
        attack = attack_from_manifest(manifest, "image").evaluate(
            model=model, tensors=tensors, manifest=manifest, cfg=cfg
        )
        forget_loss = per_example_loss(model, forget.images, forget.labels, cfg.batch_size)
        test_loss = per_example_loss(model, test.images, test.labels, cfg.batch_size)
        accuracy = float((preds == test.labels).float().mean())
        metrics, per_sample = eval_record(
            "image", accuracy, preds.tolist(), attack, forget_loss.tolist(), test_loss.tolist()
        )
        metrics["eval_seconds"] = time.perf_counter() - start
        return {"per_sample.json": per_sample, "eval_results.json": metrics}

    poison = staticmethod(poison_images)

    def check_train(self, cfg: ImageTrainConfig) -> None:
        check_image_splits(read_manifest(cfg.dataset_dir), cfg.train.batch_size, cfg.dataset_dir)

    def train(self, cfg: ImageTrainConfig, out: Path) -> dict:
        tensors, manifest = load_dataset_dir(cfg.dataset_dir)
        data = splits(tensors, manifest)[cfg.split]
        shape, k, mean, std = (manifest[key] for key in ("image_shape", "num_classes", "mean", "std"))
        model = build_model(cfg.model, shape, k, mean, std, seed=cfg.seed)
        run = training.train_classifier(model, data.images, data.labels, cfg.train, cfg.seed, out, checkpoints=True)
        # compute: examples through forward+backward (the budget unit); wall_seconds: since this run (re)started
        info = {"split": cfg.split, "n_examples": len(data), **run, "compute_unit": "examples"}
        save_model(model.cpu(), out)
        return finish_training(cfg, out, info)

    def check_unlearn(self, cfg: ImageUnlearnConfig) -> None:
        """Before anything is written: forget and retain sets a batch can be drawn from, the initial and gold models
        (one architecture), and a budget that pays for one step."""
        check_image_splits(read_manifest(cfg.dataset_dir), cfg.per_device_train_batch_size, cfg.dataset_dir)
        self.check_models({"model_dir": cfg.model_dir, "retrain_dir": cfg.retrain_dir})
        step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
        check_budget_buys_a_step(cfg.budget, reference_compute(cfg), step, "examples")

    def prepare_model(self, cfg: ImageUnlearnConfig):
        """The initial model with its classification task (the trainer runs the method's own preparation)."""
        model = self.load_model(cfg.model_dir)
        model.unlearn_task = ClassificationTask(augment=make_augment(cfg.augment), seed=cfg.seed)
        return model

    def build_trainer(self, cfg: ImageUnlearnConfig, model, forget, retain, budget: float):
        return classifier_trainer(cfg, model, forget, retain, budget, self.load_model)

    def prepare_unlearn(self, cfg: ImageUnlearnConfig, budget: float):
        """The trainer, and the state the Trainer's checkpoints do not hold: the augmentation generator."""
        data = splits(*load_dataset_dir(cfg.dataset_dir))
        trainer = self.build_trainer(cfg, self.prepare_model(cfg), data["forget"], data["retain"], budget)
        return trainer, (trainer.task.get_rng_state, trainer.task.set_rng_state)

    def save_unlearned(self, trainer, out: Path) -> None:
        save_model(trainer.model.cpu(), out)


TASK = ImageTask()
