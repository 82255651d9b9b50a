"""Stage 3: unlearn the poisons from the initial model with one method under a compute budget.

The budget is a fraction of the gold retraining run's compute (its ``compute_tokens``: tokens through
forward+backward). LoRA adapters by default (``use_peft``), full-parameter otherwise. Writes the adapter or model
(safetensors), ``unlearn_info.json`` (compute actually spent, steps, divergence) and ``config.yaml``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..configs import ConfigError
from ..harness import is_main_process, run_stage, stage_commands
from ..files import read_json
from ..training import REPORT_TO_HELP
from .snapshots import BudgetSnapshots, check_nested_budgets


# Shared with the image track's unlearn config: schedules follow the budget (UnlearnTrainer.create_scheduler).
WARMUP_HELP = "fraction of the budget spent in linear warmup, in [0, 1)"
SCHEDULE_HELP = (
    "transformers scheduler name, followed over the budget (linear reaches 0 when it is spent): constant, "
    "constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial, cosine_with_min_lr"
)


@dataclass
class UnlearnRun:
    """The keys every task's unlearn config starts with: which models, data, method, budget and seed (the ones
    ``run`` fills in for every job); the task's config adds its training settings."""

    model_dir: str | None = field(default=None, metadata={"help": "the initial (poisoned) model"})
    dataset_dir: str | None = field(default=None, metadata={"help": "output_dir of the poison stage"})
    output_dir: str | None = field(default=None, metadata={"help": "where the unlearned model (or adapter) goes"})
    retrain_dir: str | None = field(
        default=None, metadata={"help": "gold retrain dir; its training_info.json compute_tokens is the budget's 100%"}
    )
    reference_compute_tokens: float | None = field(
        default=None, metadata={"help": "retraining compute (the task's unit), if retrain_dir is not given"}
    )
    method: str = field(default="gd", metadata={"help": "a METHODS key"})
    method_args: dict[str, Any] = field(default_factory=dict, metadata={"help": "the method's own knobs"})
    budget: float = field(default=0.1, metadata={"help": "fraction of retraining compute, in (0, 1]"})
    save_at_budgets: list[float] = field(
        default_factory=list,
        metadata={
            "help": "nested budgets: smaller fractions at which the model is also saved, once the compute spent "
            "first reaches each, as a finished unlearn output of its own in <output_dir>/at_budget_<fraction> (the "
            "model a run with that budget ends with); needs a schedule that does not follow the budget (constant, "
            "no warmup) and a method whose result does not depend on its total budget (not ssd)"
        },
    )
    seed: int = field(default=0, metadata={"help": "batch order, forget pairing, gradient noise (and augmentation)"})


@dataclass
class UnlearnConfig(UnlearnRun):
    """Unlearn the forget set from a trained model with one method from METHODS under a compute budget."""

    learning_rate: float = field(default=1e-3, metadata={"help": "optimizer learning rate"})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "retain (and forget) examples per step"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.0, metadata={"help": WARMUP_HELP})
    lr_scheduler_type: str = field(default="constant", metadata={"help": SCHEDULE_HELP})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    max_length: int = field(default=256, metadata={"help": "as in training"})
    use_peft: bool = field(default=True, metadata={"help": "train a LoRA adapter (peft) instead of all weights"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] | str = field(
        default="all-linear", metadata={"help": "modules that get adapters ('all-linear' or a list of names)"}
    )
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={"help": "weights dtype"})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (GPU)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the Hub"})
    attn_implementation: str | None = field(default=None, metadata={"help": "eager | sdpa | flash_attention_2"})
    logging_steps: int = field(default=10, metadata={"help": "log every N steps"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    save_steps: int = field(
        default=0,
        metadata={
            "help": "save a Trainer checkpoint every N steps so a killed run resumes from the last one (compute spent "
            "included) instead of starting over (0: no checkpoints); checkpoints are deleted when the stage completes"
        },
    )
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = field(
        default="none", metadata={"help": REPORT_TO_HELP}
    )
    trainer_args: dict[str, Any] = field(default_factory=dict, metadata={"help": "extra TrainingArguments"})

    def validate(self) -> None:
        from ..training import check_report_to

        check_unlearn_settings(self, ("max_length", "lora_r"))
        check_report_to(self.report_to)


def check_unlearn_settings(cfg, positive: tuple[str, ...] = ()) -> None:
    """The checks every task's unlearn config shares: the method and its ``method_args``, the budget, a schedule
    that can follow it, the learning rate, batch sizes (and the ``positive`` keys) >= 1, checkpoints, the budget's
    reference, extra ``TrainingArguments``."""
    from ..registry import BUILTIN_METHOD_NAMES, check_method_names
    from ..training import check_trainer_args

    check_method_names([cfg.method])
    if cfg.method_args or cfg.method not in BUILTIN_METHOD_NAMES:  # a built-in's default knobs are valid: no import
        from ..methods import build_method_config

        build_method_config(cfg.method, cfg.method_args)
    if not 0.0 < cfg.budget <= 1.0:
        raise ConfigError(f"budget must be in (0, 1], got {cfg.budget}")
    check_schedule(cfg.lr_scheduler_type, cfg.warmup_ratio)
    check_nested_budgets(cfg)
    if cfg.learning_rate <= 0 or not math.isfinite(cfg.learning_rate):
        raise ConfigError(f"learning_rate must be a positive number, got {cfg.learning_rate}")
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", *positive):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.save_steps < 0:
        raise ConfigError(f"save_steps must be >= 0 (0 = no checkpoints), got {cfg.save_steps}")
    if cfg.reference_compute_tokens is not None and cfg.reference_compute_tokens <= 0:
        raise ConfigError("reference_compute_tokens must be > 0")
    check_trainer_args(cfg.trainer_args)


def check_schedule(lr_scheduler_type: str, warmup_ratio: float) -> None:
    """Unlearning schedules follow the compute budget (``UnlearnTrainer.create_scheduler``): only those that can."""
    from ..budget import BUDGET_SCHEDULES

    if lr_scheduler_type not in BUDGET_SCHEDULES:
        raise ConfigError(
            f"lr_scheduler_type {lr_scheduler_type!r} cannot follow a compute budget; choose from {BUDGET_SCHEDULES}"
        )
    if not (0.0 <= warmup_ratio < 1.0):
        raise ConfigError(f"warmup_ratio is a fraction of the budget in [0, 1), got {warmup_ratio}")


def reference_compute(cfg: UnlearnConfig) -> float:
    if cfg.reference_compute_tokens is not None:
        return float(cfg.reference_compute_tokens)
    if cfg.retrain_dir is None:
        raise ConfigError("set retrain_dir (a finished gold retrain) or reference_compute_tokens to size the budget")
    info = Path(cfg.retrain_dir) / "training_info.json"
    if not info.is_file():
        raise ConfigError(f"retrain_dir: {cfg.retrain_dir!r} has no training_info.json (not a finished train stage)")
    try:
        return float(read_json(info)["compute_tokens"])
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"retrain_dir: {str(info)!r} holds no readable compute_tokens ({e}); redo that stage") from e


def build_trainer(cfg: UnlearnConfig, model, tokenizer, forget, retain, budget_tokens: float):
    """The causal LM's trainer for the method, ready to ``train()`` (see :func:`method_trainer`): the initial model
    as loaded (the trainer runs the method's preparation and adds the LoRA adapter when ``use_peft``), the tokenized
    splits, and a loader of the initial weights for methods that need a frozen reference in full-parameter runs."""
    from ..methods import uses_adapter
    from ..methods.base import ForgetRetainCollator
    from ..training import peft_config

    def reference():  # called once the Trainer exists (ZeRO-3 shards it); unused with LoRA
        from ..modeling import load_model

        return load_model(cfg.model_dir, cfg.dtype, cfg.trust_remote_code, cfg.attn_implementation)

    return method_trainer(
        cfg,
        model,
        forget,
        retain,
        budget_tokens,
        collator=ForgetRetainCollator(tokenizer.pad_token_id),
        step_cost=lambda world: step_cost(cfg, forget, retain, world),
        reference=reference,
        processing_class=tokenizer,
        peft_config=peft_config(cfg) if uses_adapter(cfg.method, cfg.use_peft) else None,
        max_length=cfg.max_length,
    )


def method_trainer(
    cfg,
    model,
    forget,
    retain,
    budget: float,
    *,
    collator,
    step_cost,
    reference,
    task=None,
    processing_class=None,
    peft_config=None,
    **extra,
):
    """The method's trainer (``METHODS[cfg.method].trainer_cls``), built by the same constructor a user calls, for
    any task: its ``<Name>Config`` (``config_cls``) from the stage config's training settings, ``method_args`` and
    the budget, the forget/retain rows, the reference loader and the LoRA config.

    ``max_steps`` is only an upper bound, from ``step_cost(world_size)`` (the least one optimizer step can cost):
    the budget callback stops the run, and the learning-rate schedule follows the budget spent, not the steps
    (``UnlearnTrainer.create_scheduler``). ``reference``: a loader of the frozen initial model (the trainer calls it
    only when the method needs one and no adapter is trained); ``extra``: more arguments (``optim``...)."""
    from ..methods import build_method_config, get_method
    from ..methods.arguments import knob_values
    from ..training import checkpoint_arguments, training_arguments

    spec = get_method(cfg.method)
    knobs = knob_values(build_method_config(cfg.method, cfg.method_args))
    args = training_arguments(
        cfg,
        Path(cfg.output_dir),
        args_cls=spec.config_cls,
        max_steps=1,
        budget_tokens=budget,
        **knobs,
        **checkpoint_arguments(cfg.save_steps),
        **extra,
    )
    # set after the arguments exist, which know the process count
    args.max_steps = max(1, math.ceil(budget / step_cost(args.world_size)) + 1)
    return spec.trainer_cls(
        model=model,
        args=args,
        forget_dataset=forget,
        retain_dataset=retain,
        processing_class=processing_class,
        ref_model=reference,
        peft_config=peft_config,
        task=task,
        data_collator=collator,
    )


def classifier_trainer(cfg, model, forget, retain, budget: float, load_model):
    """:func:`method_trainer` for a classifier that carries its ``ClassificationTask`` (``model.unlearn_task``):
    paired forget/retain batches through the task's collator; a step costs its examples; the reference is a separate
    frozen ``load_model(cfg.model_dir)`` with the same task (never a deepcopy); ``cfg.optim`` (sgd with
    ``cfg.momentum``, or adamw_torch) is the optimizer."""
    from ..methods.base import ForgetRetainCollator

    task = model.unlearn_task

    def reference():
        ref = load_model(cfg.model_dir)
        ref.unlearn_task = task
        return ref

    optim_args = {"optim_args": f"momentum={cfg.momentum}"} if cfg.optim == "sgd" else {}
    step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    return method_trainer(
        cfg,
        model,
        forget,
        retain,
        budget,
        collator=ForgetRetainCollator(collate=task.collator()),
        step_cost=lambda world: step * world,
        reference=reference,
        task=task,
        optim=cfg.optim,
        **optim_args,
    )


def main(cfg: UnlearnConfig, overwrite: bool = False) -> Path:
    """Run the stage through the harness (:mod:`llm_unlearn.harness`); returns ``output_dir``.

    The one unlearn stage of every task: a config of another task (``task``, e.g. the image track's
    ``image_classification``) gets its checks, model, data and trainer from that task (``check_unlearn``,
    ``prepare_unlearn``, ``save_unlearned``); the budget, resume, divergence and the record are the same for all."""
    from ..tasks import stage_task

    task = stage_task(cfg)
    return run_stage(
        cfg,
        _unlearn,
        name="unlearn",
        required=("model_dir", "dataset_dir", "output_dir"),
        check=check_inputs if task is None else task.check_unlearn,
        overwrite=overwrite,
    )


def check_inputs(cfg: UnlearnConfig) -> None:
    """Before anything is written: the model, the poison stage's output with forget and retain sets a batch can be
    drawn from, the budget's reference, and a gold model of the same architecture and tokenizer as the initial."""
    from ..modeling import check_model_path, check_same_model, read_manifest
    from ..budget import check_budget_buys_a_step, check_manifest_splits

    check_model_path(cfg.model_dir, "model_dir")
    manifest = read_manifest(cfg.dataset_dir)
    n_labels = len(manifest.get("label_names", []))
    check_manifest_splits(manifest, cfg.per_device_train_batch_size, n_labels, cfg.dataset_dir)
    check_same_model({"model_dir": cfg.model_dir, "retrain_dir": cfg.retrain_dir})
    check_budget_buys_a_step(cfg.budget, reference_compute(cfg), least_step_cost(cfg), "tokens")


def least_step_cost(cfg: UnlearnConfig) -> int:
    """:func:`step_cost` from the saved dataset and the tokenizer alone (no model loaded, nothing written), so a
    budget below one step is refused before the stage starts."""
    import datasets

    from ..modeling import load_tokenizer
    from ..tasks.causal_lm import tokenize_example

    tok = load_tokenizer(cfg.model_dir, cfg.trust_remote_code)
    dd = datasets.load_from_disk(str(Path(cfg.dataset_dir) / "dataset"))
    min_len = min(
        len(tokenize_example(tok, p, c, cfg.max_length)["input_ids"])
        for split in ("forget", "retain")
        for p, c in zip(dd[split]["prompt"], dd[split]["completion"])
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world * min_len


def step_cost(cfg, forget, retain, world_size: int = 1) -> int:
    """The least one optimizer step can cost in tokens: one retain or forget batch of the shortest examples on every
    process (what bounds ``max_steps`` in :func:`build_trainer`)."""
    min_len = min(min(len(x) for x in forget["input_ids"]), min(len(x) for x in retain["input_ids"]))
    return cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world_size * min_len


def _prepare(cfg: UnlearnConfig, budget: float):
    """The causal LM's part: tokenizer, model, tokenized forget/retain, trainer (which prepares the model)."""
    from ..modeling import check_vocab, load_dataset_dir, load_tokenizer, tokenize_split
    from ..training import load_whole_model

    dd, _ = load_dataset_dir(cfg.dataset_dir)
    tokenizer = load_tokenizer(cfg.model_dir, cfg.trust_remote_code)
    model = load_whole_model(cfg.model_dir, cfg)
    check_vocab(model, tokenizer)
    forget = tokenize_split(dd["forget"], tokenizer, cfg.max_length)
    retain = tokenize_split(dd["retain"], tokenizer, cfg.max_length)
    return build_trainer(cfg, model, tokenizer, forget, retain, budget), None


def _save(trainer, out: Path) -> None:
    from ..training import save_trained

    # every rank: ZeRO-3 gathers the weights here; the main process writes them (adapter or full model)
    save_trained(trainer, trainer.processing_class, out)


def _unlearn(cfg: UnlearnConfig, out: Path) -> dict:
    from ..seeding import set_seed
    from ..tasks import stage_task
    from ..training import fit, remove_checkpoints

    task = stage_task(cfg)
    ref_tokens = reference_compute(cfg)
    set_seed(cfg.seed)
    prepare, save = (_prepare, _save) if task is None else (task.prepare_unlearn, task.save_unlearned)
    trainer, extra_state = prepare(cfg, cfg.budget * ref_tokens)
    snapshots = (
        BudgetSnapshots(cfg, trainer, save, ref_tokens, task is None, unlearn_record) if cfg.save_at_budgets else None
    )
    if snapshots is not None:
        trainer.add_callback(snapshots.callback)  # after the budget callback, whose spend summed over ranks it reads
    # resuming restores the compute already spent (and extra_state: e.g. an augmentation RNG), so the budget counts
    # across restarts and a resumed run replays what an uninterrupted one would; each process is charged only its own
    # batches, and the record sums them
    run = fit(trainer, cfg.save_steps, extra_state)
    if snapshots is not None:
        snapshots.finish(run)
    info = unlearn_record(cfg, trainer, ref_tokens, run, task is None)
    if not run["diverged"]:
        save(trainer, out)
    if not is_main_process():
        return {}
    remove_checkpoints(out)
    return {"unlearn_info.json": info}


def unlearn_record(cfg, trainer, ref_tokens: float, run: dict, causal_lm: bool) -> dict:
    """What ``unlearn_info.json`` says of a run (or of a nested budget's model, from the run as it was then)."""
    from ..methods import uses_adapter

    spent = run["compute_tokens"]
    return {
        "method": cfg.method,
        "method_args": cfg.method_args,
        "budget": cfg.budget,
        "reference_compute_tokens": ref_tokens,
        "compute_tokens": spent,
        "compute_fraction": spent / ref_tokens,
        "num_processes": trainer.accelerator.num_processes,
        **{k: run[k] for k in ("steps", "train_loss", "diverged", "diverged_step")},
        "use_peft": causal_lm and uses_adapter(cfg.method, cfg.use_peft),
        **{k: run[k] for k in ("wall_seconds", "resumed_from_step")},
        "log_history": list(trainer.state.log_history),
    }


make_parser, cli = stage_commands(UnlearnConfig, main, "llm-unlearn unlearn")
