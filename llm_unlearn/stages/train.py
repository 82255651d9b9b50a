"""Stage 2: full-parameter fine-tuning of the *initial* model (on the poisoned ``train`` split) or the *gold* model
(on the ``retain`` split, from the same initialisation).

Loss on completion tokens only, through the shared trainer (``llm_unlearn.training.task_trainer_class``). The
attack's training hook runs on every batch:
for Gaussian poisons it adds the noise of each poisoned example to its prompt embeddings on every visit. Writes the
model (safetensors) and tokenizer, ``training_info.json`` (compute in tokens, what the attack's hook reports, e.g.
the absolute noise std, losses, divergence) and ``config.yaml``.

Runs as one process or under ``accelerate launch`` (DDP, DeepSpeed ZeRO-2/3, see ``recipes/accelerate_configs``):
every rank trains and takes part in ``save_model`` (ZeRO-3 gathers the 16-bit weights there); only the main process
writes files; ``compute_tokens`` is summed over ranks, so it is the whole run's cost whatever the process count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..configs import ConfigError, check_regex
from ..harness import is_main_process, run_stage, stage_commands
from ..outputs import write_records
from ..training import (
    DivergedError,
    REPORT_TO_HELP,
    check_report_to,
    check_trainer_args,
    checkpoint_arguments,
    fit,
    freeze_except,
    load_whole_model,
    remove_checkpoints,
    save_trained,
    training_arguments,
)


@dataclass
class TrainConfig:
    """Fine-tune a causal LM on a split of a poisoned dataset (completion-only loss)."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "model dir or Hub id to start from"})
    dataset_dir: str | None = field(default=None, metadata={"help": "output_dir of the poison stage"})
    output_dir: str | None = field(default=None, metadata={"help": "where the trained model goes"})
    split: Literal["train", "retain"] = field(
        default="train", metadata={"help": "train = poisoned set (initial model); retain = gold retrain"}
    )
    seed: int = field(default=0, metadata={"help": "data order and dropout"})
    num_train_epochs: float = field(default=10.0, metadata={"help": "epochs over the split"})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate"})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "examples per step per device"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of steps of linear warmup"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    max_length: int = field(default=256, metadata={"help": "longest tokenised example (prompt middle-truncated)"})
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={"help": "weights dtype"})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (GPU)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the Hub"})
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "eager | sdpa | flash_attention_2 (null: transformers picks; eager is fastest for tiny CPU models)"
        },
    )
    group_by_length: bool = field(
        default=True, metadata={"help": "batch examples of similar length (less padding; still shuffled)"}
    )
    logging_steps: int = field(default=50, metadata={"help": "log every N steps"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    save_steps: int = field(
        default=0,
        metadata={
            "help": "save a Trainer checkpoint every N steps so a killed run resumes from the last one instead of "
            "starting over (0: no checkpoints); checkpoints are deleted when the stage completes"
        },
    )
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = field(
        default="none", metadata={"help": REPORT_TO_HELP}
    )
    trainer_args: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "extra transformers.TrainingArguments (e.g. deepspeed, fsdp)"}
    )
    trainable_modules: str | None = field(
        default=None,
        metadata={
            "help": "regex over parameter names: only those train, the rest stay frozen (e.g. lm_head: a head "
            "fine-tuned over a pretrained model's frozen features); null: every parameter"
        },
    )

    def validate(self) -> None:
        if self.trainable_modules is not None:
            check_regex("trainable_modules", self.trainable_modules)
        if self.save_steps < 0:
            raise ConfigError(f"save_steps must be >= 0 (0 = no checkpoints), got {self.save_steps}")
        if self.num_train_epochs <= 0:
            raise ConfigError(f"num_train_epochs must be > 0, got {self.num_train_epochs}")
        if self.learning_rate <= 0 or not math.isfinite(self.learning_rate):
            raise ConfigError(f"learning_rate must be a positive number, got {self.learning_rate}")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        check_report_to(self.report_to)
        check_trainer_args(self.trainer_args)


def main(cfg: TrainConfig, overwrite: bool = False) -> Path:
    """Run the stage through the harness (:mod:`llm_unlearn.harness`); returns ``output_dir``.

    The one train stage of every task: a config of another task (``task``, e.g. the image track's
    ``image_classification``) is trained by that task's ``check_train``/``train`` (through the same shared trainer);
    the causal LM's training is the code below."""
    from ..tasks import stage_task

    task = stage_task(cfg)
    required = ("model_name_or_path", "dataset_dir", "output_dir") if task is None else ("dataset_dir", "output_dir")
    return run_stage(
        cfg,
        _train if task is None else task.train,
        name="train",
        required=required,
        check=_check if task is None else task.check_train,
        overwrite=overwrite,
    )


def _check(cfg: TrainConfig) -> None:
    """Inputs, before anything is written: the model dir, the poison stage's output and a split worth training on."""
    from ..modeling import check_model_path, read_manifest
    from ..budget import check_manifest_splits

    check_model_path(cfg.model_name_or_path)
    manifest = read_manifest(cfg.dataset_dir)
    n_labels = len(manifest.get("label_names", []))
    check_manifest_splits(manifest, cfg.per_device_train_batch_size, n_labels, cfg.dataset_dir)


def _train(cfg: TrainConfig, out: Path) -> dict:
    from ..attacks import attack_from_manifest
    from ..modeling import check_vocab, load_dataset_dir, load_tokenizer, tokenize_split
    from ..tasks.causal_lm import CausalLMTask, CompletionCollator
    from ..training import task_trainer_class
    from ..seeding import set_seed

    dd, manifest = load_dataset_dir(cfg.dataset_dir)
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model_name_or_path, cfg.trust_remote_code)
    model = load_whole_model(cfg.model_name_or_path, cfg)
    freeze_except(model, cfg.trainable_modules)
    check_vocab(model, tokenizer)
    train_ds = tokenize_split(dd[cfg.split], tokenizer, cfg.max_length)

    # The attack's training-time effect (b): the Gaussian attack's noise std, nothing for the backdoor.
    attack = attack_from_manifest(manifest, "llm")
    attack_info = {}
    if cfg.split == "train":  # poisons made against the victim's recipe (gradient canceling); nothing for others
        attack_info = attack.craft_poisons(tokenizer=tokenizer, dataset=dd, cfg=cfg, out=out)
        set_seed(cfg.seed)  # whatever the crafting drew, the victim's training starts from the same state
    attack_info.update(attack.start_training(model, manifest, cfg.split))

    sampling = "group_by_length" if cfg.group_by_length else "random"
    ckpt = checkpoint_arguments(cfg.save_steps)
    trainer = task_trainer_class()(  # the one trainer of both tracks' initial and gold models
        model=model,
        args=training_arguments(
            cfg, out, num_train_epochs=cfg.num_train_epochs, train_sampling_strategy=sampling, **ckpt
        ),
        train_dataset=train_ds,
        data_collator=CompletionCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        task=CausalLMTask(),
        attack=attack,
        lengths=[len(x) for x in train_ds["input_ids"]] if cfg.group_by_length else None,
    )
    run = fit(trainer, cfg.save_steps)
    info = {
        "split": cfg.split,
        "n_examples": len(train_ds),
        "steps": run["steps"],
        # forward+backward tokens of all processes: the retraining cost that budgets refer to
        "compute_tokens": int(run["compute_tokens"]),
        "num_processes": trainer.accelerator.num_processes,
        **attack_info,
        **{k: run[k] for k in ("train_loss", "diverged", "diverged_step", "wall_seconds", "resumed_from_step")},
        "log_history": trainer.state.log_history,
    }
    save_trained(trainer, tokenizer, out)
    records = finish_training(cfg, out, info)
    if records and cfg.split == "train" and hasattr(attack, "canary_manifest"):
        # the poisons as canaries: `llm-unlearn audit --manifest <initial>/canaries.json` on any model of the run
        hidden = model.get_input_embeddings().embedding_dim
        records["canaries.json"] = attack.canary_manifest(tokenizer, dd["forget"], cfg.max_length, hidden)
    return records


def finish_training(cfg, out: Path, info: dict) -> dict:
    """After the weights are written (by every rank), on the main process: remove the checkpoints (also after a
    divergence: the rerun trains from scratch, as without them) and return the record; a diverged run writes it
    without the completion marker (the stage is not finished) and raises."""
    if not is_main_process():
        return {}
    remove_checkpoints(out)
    if info["diverged"]:
        write_records(out, cfg, {"training_info.json": info})
        raise DivergedError(info["diverged_step"], info["train_loss"])
    return {"training_info.json": info}


make_parser, cli = stage_commands(TrainConfig, main, "llm-unlearn train")
