"""Image stage 3: unlearn the poisons from the initial classifier with one ``METHODS`` entry under a compute budget.

The same trainers as the LLM track (``llm_unlearn.methods``), reading batches through the classification task; the
budget unit is examples through forward+backward (a reference forward counts one third), as the train stage counts
them. Full-parameter only: LoRA adapters are an LLM-track option. Writes ``model.safetensors`` (unless the run
diverged), ``unlearn_info.json`` and ``config.yaml``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llm_unlearn.configs import ConfigError
from llm_unlearn.harness import run_stage, stage_commands
from llm_unlearn.stages.unlearn import SCHEDULE_HELP, WARMUP_HELP


@dataclass
class ImageUnlearnConfig:
    """Unlearn the forget set from an image classifier with one method from METHODS under a compute budget."""

    model_dir: str | None = field(default=None, metadata={"help": "the initial (poisoned) model"})
    dataset_dir: str | None = field(default=None, metadata={"help": "output_dir of the image poison stage"})
    output_dir: str | None = field(default=None, metadata={"help": "where the unlearned model goes"})
    retrain_dir: str | None = field(
        default=None, metadata={"help": "gold retrain dir; its training_info.json compute_tokens is the budget's 100%"}
    )
    reference_compute_tokens: float | None = field(
        default=None, metadata={"help": "retraining compute in examples, if retrain_dir is not given"}
    )
    method: str = field(default="gd", metadata={"help": "a METHODS key"})
    method_args: dict[str, Any] = field(default_factory=dict, metadata={"help": "the method's own knobs"})
    budget: float = field(default=0.1, metadata={"help": "fraction of retraining compute, in (0, 1]"})
    seed: int = field(default=0, metadata={"help": "batch order, forget pairing, gradient noise, augmentation"})
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
        from llm_unlearn.methods import build_method_config
        from llm_unlearn.training import check_trainer_args
        from llm_unlearn.stages.unlearn import check_schedule

        build_method_config(self.method, self.method_args)
        if not 0.0 < self.budget <= 1.0:
            raise ConfigError(f"budget must be in (0, 1], got {self.budget}")
        check_schedule(self.lr_scheduler_type, self.warmup_ratio)
        if self.learning_rate <= 0 or not math.isfinite(self.learning_rate):
            raise ConfigError(f"learning_rate must be a positive number, got {self.learning_rate}")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.save_steps < 0:
            raise ConfigError(f"save_steps must be >= 0 (0 = no checkpoints), got {self.save_steps}")
        if self.reference_compute_tokens is not None and self.reference_compute_tokens <= 0:
            raise ConfigError("reference_compute_tokens must be > 0")
        check_trainer_args(self.trainer_args)
        for key in ("optim", "optim_args"):
            if key in self.trainer_args:
                raise ConfigError(f"trainer_args.{key}: set optim/momentum as top-level unlearn keys")


def build_trainer(cfg: ImageUnlearnConfig, model, forget, retain, budget: float):
    """The method's trainer over paired forget/retain batches; ``max_steps`` is an upper bound (each step costs at
    least one batch of examples), the budget callback stops it."""
    from llm_unlearn.methods import build_method_config, get_method
    from llm_unlearn.methods.base import ForgetRetainCollator, ForgetRetainDataset
    from llm_unlearn.training import checkpoint_arguments, training_arguments

    from ..models import load_model

    spec = get_method(cfg.method)
    method_cfg = build_method_config(cfg.method, cfg.method_args)
    task = model.unlearn_task
    per_step = step_cost(cfg)
    max_steps = max(1, math.ceil(budget / per_step) + 1)
    extra = {"optim": cfg.optim, **checkpoint_arguments(cfg.save_steps)}
    if cfg.optim == "sgd":
        extra["optim_args"] = f"momentum={cfg.momentum}"
    args = training_arguments(cfg, Path(cfg.output_dir), max_steps=max_steps, **extra)

    def reference():  # a separate frozen load of the initial weights, never a deepcopy
        ref = load_model(cfg.model_dir)
        ref.unlearn_task = task
        return ref

    return spec.trainer_cls(
        model=model,
        args=args,
        train_dataset=ForgetRetainDataset(forget, retain, seed=cfg.seed, with_forget=spec.trainer_cls.reads_forget),
        data_collator=ForgetRetainCollator(collate=task.collator()),
        method_cfg=method_cfg,
        task=task,
        budget_tokens=budget,
        reference_model=reference if spec.needs_reference else None,
    )


def prepare(cfg: ImageUnlearnConfig):
    """The initial model with its task (augmentation as configured), after the method's own preparation."""
    from llm_unlearn.methods import build_method_config, get_method
    from llm_unlearn.tasks.classification import ClassificationTask

    from ..data import make_augment
    from ..models import load_model

    model = load_model(cfg.model_dir)
    model.unlearn_task = ClassificationTask(augment=make_augment(cfg.augment), seed=cfg.seed)
    spec = get_method(cfg.method)
    if spec.prepare_model is not None:
        model = spec.prepare_model(model, build_method_config(cfg.method, cfg.method_args), cfg)
    return model


def reference_compute(cfg: ImageUnlearnConfig) -> float:
    from llm_unlearn.stages.unlearn import reference_compute as _rc

    return _rc(cfg)


def main(cfg: ImageUnlearnConfig, overwrite: bool = False) -> Path:
    """Run the stage through the harness (:mod:`llm_unlearn.harness`); returns ``output_dir``."""
    return run_stage(
        cfg,
        _unlearn,
        name="image unlearn",
        required=("model_dir", "dataset_dir", "output_dir"),
        check=check_inputs,
        overwrite=overwrite,
    )


def step_cost(cfg: ImageUnlearnConfig) -> int:
    """The least one optimizer step costs in examples: one batch (what bounds ``max_steps`` in build_trainer)."""
    return cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps


def check_inputs(cfg: ImageUnlearnConfig) -> None:
    """Before anything is written: the data (forget and retain sets a batch can be drawn from), the initial and gold
    models (one architecture), and a budget that pays for one step."""
    from llm_unlearn.budget import check_budget_buys_a_step

    from ..data import read_manifest
    from ..models import check_model_dir, check_same_arch
    from .train import check_image_splits

    check_model_dir(cfg.model_dir)
    check_image_splits(read_manifest(cfg.dataset_dir), cfg.per_device_train_batch_size, cfg.dataset_dir)
    check_same_arch({"model_dir": cfg.model_dir, "retrain_dir": cfg.retrain_dir})
    check_budget_buys_a_step(cfg.budget, reference_compute(cfg), step_cost(cfg), "examples")


def _unlearn(cfg: ImageUnlearnConfig, out: Path) -> dict:
    from llm_unlearn.training import DivergedError, remove_checkpoints, resume_point
    from llm_unlearn.seeding import set_seed

    from ..data import load_dataset_dir, splits
    from ..models import save_model

    ref = reference_compute(cfg)
    tensors, manifest = load_dataset_dir(cfg.dataset_dir)
    data = splits(tensors, manifest)
    set_seed(cfg.seed)
    model = prepare(cfg)
    trainer = build_trainer(cfg, model, data["forget"], data["retain"], cfg.budget * ref)
    task = model.unlearn_task
    resume = resume_point(trainer, cfg, (task.get_rng_state, task.set_rng_state))
    start = time.perf_counter()
    diverged, loss = None, None
    try:
        loss = trainer.train(resume_from_checkpoint=resume).training_loss
    except DivergedError as e:
        diverged, loss = e.step, e.loss
    info = {
        "method": cfg.method,
        "method_args": cfg.method_args,
        "budget": cfg.budget,
        "reference_compute_tokens": ref,
        "compute_tokens": trainer.compute_tokens,
        "compute_fraction": trainer.compute_tokens / ref,
        "steps": trainer.state.global_step,
        "train_loss": loss,
        "diverged": diverged is not None,
        "diverged_step": diverged,
        "use_peft": False,
        "wall_seconds": time.perf_counter() - start,
        "resumed_from_step": int(resume.rsplit("-", 1)[1]) if resume else None,
        "log_history": trainer.state.log_history,
    }
    if diverged is None:
        save_model(trainer.model.cpu(), out)
    remove_checkpoints(out)
    return {"unlearn_info.json": info}


make_parser, cli = stage_commands(ImageUnlearnConfig, main, "image unlearn")
