"""Relearning: does what unlearning seems to remove come back after a little more fine-tuning?

Fine-tunes one model of a run (the initial or gold model, or an unlearned model: a full model dir, or a LoRA adapter
on top of ``model_dir``, merged as the evaluate stage merges it) for a few more optimizer steps, either on benign
``retain`` rows or on a seeded subset of the poisons (``forget_fraction``), all weights trainable, through the shared
trainer (``llm_unlearn.training.task_trainer_class``). One run of ``max(steps)`` steps at a constant learning rate
saves the model after each of ``steps`` into ``output_dir/r<n>/``: with a constant rate and an order of batches that
depends only on the seed, the model saved at step n is the one an n-step run gives. Each ``r<n>`` dir is itself a
finished stage output (safetensors, ``relearn_info.json``, ``config.yaml`` with ``steps: [n]``, ``.complete``), so an
evaluation of it follows the harness's rules (redone when the relearning is redone). ``relearn_info.json`` records
the rows used: the training-set ``index`` of every example of every batch the trainer trained on.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar, Literal

from ..configs import ConfigError
from ..harness import is_main_process, run_stage, stage_commands

DATA_CHOICES = ("retain", "forget_fraction")


@dataclass
class RelearnConfig:
    """Fine-tune a model a few more steps (on retain rows or a few poisons), saving it after each of ``steps``."""

    model_dir: str | None = field(default=None, metadata={"help": "full model dir (or the base of adapter_dir)"})
    adapter_dir: str | None = field(default=None, metadata={"help": "optional LoRA adapter on model_dir (merged)"})
    dataset_dir: str | None = field(default=None, metadata={"help": "output_dir of the poison stage"})
    output_dir: str | None = field(default=None, metadata={"help": "where r<n>/ (the model after n steps) go"})
    steps: list[int] = field(
        default_factory=list,
        metadata={
            "help": "optimizer steps after which the model is saved, e.g. [10, 50] (one run of max(steps) steps); "
            "in an experiment's relearn section, [] (the default) means no relearning"
        },
    )
    data: Literal["retain", "forget_fraction"] = field(
        default="retain",
        metadata={"help": "retain: benign retain rows; forget_fraction: a seeded subset of the poisons (fraction)"},
    )
    fraction: float = field(
        default=0.1,
        metadata={"help": "data forget_fraction: max(1, round(fraction * n_forget)) poisons, drawn with the seed"},
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate, constant over the steps"})
    per_device_train_batch_size: int = field(
        default=32, metadata={"help": "examples per step (all of them when the data holds fewer)"}
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    max_length: int = field(default=256, metadata={"help": "as in training"})
    seed: int = field(default=0, metadata={"help": "the forget subset, the batch order"})
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={"help": "weights dtype"})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (GPU)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the Hub"})
    attn_implementation: str | None = field(default=None, metadata={"help": "eager | sdpa | flash_attention_2"})
    logging_steps: int = field(default=10, metadata={"help": "log every N steps"})
    progress: bool = field(default=False, metadata={"help": "show a progress bar"})

    # What ``training.training_arguments`` reads besides the fields: fixed here, not settable. A constant rate without
    # warmup is what makes the model saved at step n of one run the model of an n-step run.
    warmup_ratio: ClassVar[float] = 0.0
    lr_scheduler_type: ClassVar[str] = "constant"
    trainer_args: ClassVar[MappingProxyType] = MappingProxyType({})

    def validate(self) -> None:
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in self.steps):
            raise ConfigError(f"steps must be optimizer step counts >= 1, got {self.steps}")
        if len(set(self.steps)) != len(self.steps):
            raise ConfigError(f"steps must be distinct, got {self.steps}")
        if self.data not in DATA_CHOICES:
            raise ConfigError(f"data must be one of {list(DATA_CHOICES)}, got {self.data!r}")
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"fraction must be in (0, 1] (of the forget set), got {self.fraction}")
        if self.learning_rate <= 0 or not math.isfinite(self.learning_rate):
            raise ConfigError(f"learning_rate must be a positive number, got {self.learning_rate}")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


def step_dir(output_dir: str | Path, n: int) -> Path:
    """Where the model after ``n`` relearning steps goes (a finished stage output of its own)."""
    return Path(output_dir) / f"r{n}"


def forget_subset(n_forget: int, fraction: float, seed: int) -> list[int]:
    """Positions in the forget split of the ``max(1, round(fraction * n_forget))`` poisons relearned on, drawn
    without replacement from ``seed`` (sorted)."""
    import numpy as np

    k = min(n_forget, max(1, round(fraction * n_forget)))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n_forget, size=k, replace=False))


def main(cfg: RelearnConfig, overwrite: bool = False) -> Path:
    """Run the stage through the harness (:mod:`llm_unlearn.harness`); returns ``output_dir``."""
    return run_stage(
        cfg,
        _relearn,
        name="relearn",
        required=("model_dir", "dataset_dir", "output_dir"),
        check=_check,
        overwrite=overwrite,
    )


def source_diverged(cfg: RelearnConfig) -> bool:
    """Whether the model to relearn is an unlearning run that diverged (it saved no weights: nothing to relearn)."""
    from ..files import read_json

    info = Path(cfg.adapter_dir or cfg.model_dir) / "unlearn_info.json"
    return info.is_file() and bool(read_json(info).get("diverged", False))


def _check(cfg: RelearnConfig) -> None:
    """Before anything is written: step counts, the model (and adapter), the poison stage's output and rows to train
    on."""
    from ..modeling import check_model_path, read_manifest

    if not cfg.steps:
        raise ConfigError("steps must list at least one optimizer step count, e.g. [10, 50]")
    check_model_path(cfg.model_dir, "model_dir")
    manifest = read_manifest(cfg.dataset_dir)
    if cfg.adapter_dir and not source_diverged(cfg):
        check_model_path(cfg.adapter_dir, "adapter_dir")
    split = "retain" if cfg.data == "retain" else "forget"
    n_train, n_forget = manifest.get("n_train"), manifest.get("n_poison")
    n = n_forget if split == "forget" else (None if None in (n_train, n_forget) else n_train - n_forget)
    if n is not None and int(n) < 1:
        raise ConfigError(f"data {cfg.data}: the {split} split of {cfg.dataset_dir!r} is empty; nothing to relearn on")


def load_relearn_model(cfg: RelearnConfig):
    """The model to fine-tune, every weight trainable: a LoRA adapter is merged into its base, as evaluate does, so
    the relearned model is a plain full model whatever the source was."""
    from ..training import load_whole_model

    model = load_whole_model(cfg.model_dir, cfg)
    if cfg.adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, cfg.adapter_dir).merge_and_unload()
    for p in model.parameters():  # peft froze the base weights; relearning trains all of them
        p.requires_grad_(True)
    return model


class BatchRecorder:
    """The trainer's per-batch attack hook (``TaskTrainer(attack=...)``), used to record the ``index`` of every row
    of every micro-batch trained on (what the record says was used is what the loss saw); it delegates to the
    attack that made the data (the Gaussian attack noises its poisons' prompt embeddings, as in training)."""

    def __init__(self, attack=None):
        self.attack, self.batches = attack, []

    def training_embeddings(self, model, inputs, columns):
        self.batches.append([int(i) for i in columns["index"].tolist()])
        return None if self.attack is None else self.attack.training_embeddings(model, inputs, columns)


def _save_at(steps: list[int], save):
    """A callback that calls ``save(n)`` once the optimizer has taken step ``n`` of ``steps``."""
    from transformers import TrainerCallback

    class SaveAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in steps:
                save(state.global_step)
            return control

    return SaveAt()


def _relearn(cfg: RelearnConfig, out: Path) -> dict:
    import shutil

    from ..attacks import attack_from_manifest
    from ..modeling import check_vocab, load_dataset_dir, load_tokenizer, tokenize_split
    from ..outputs import finish
    from ..seeding import set_seed
    from ..tasks.causal_lm import CausalLMTask, CompletionCollator
    from ..training import DivergedError, fit, remove_checkpoints, save_trained, task_trainer_class
    from ..training import training_arguments

    steps = sorted(cfg.steps)
    for n in steps:  # what a killed run of this config left: redone from the start
        shutil.rmtree(step_dir(out, n), ignore_errors=True)
    base = {
        "data": cfg.data,
        "learning_rate": cfg.learning_rate,
        "model_dir": cfg.model_dir,
        "adapter_dir": cfg.adapter_dir,
    }
    if source_diverged(cfg):
        return _diverged_source(cfg, out, steps, base)
    dd, manifest = load_dataset_dir(cfg.dataset_dir)
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model_dir, cfg.trust_remote_code)
    model = load_relearn_model(cfg)
    check_vocab(model, tokenizer)
    if cfg.data == "retain":
        rows, attack = dd["retain"], None
        picked = None
    else:
        picked = forget_subset(len(dd["forget"]), cfg.fraction, cfg.seed)
        rows = dd["forget"].select(picked)
        attack = attack_from_manifest(manifest, "llm")  # the poisons as the initial model was trained on them
        base.update(attack.start_training(model, manifest, "train"))
    train_ds = tokenize_split(rows, tokenizer, cfg.max_length)
    recorder = BatchRecorder(attack)
    args = training_arguments(cfg, out, max_steps=steps[-1], lr_scheduler_type="constant", warmup_steps=0)
    trainer = task_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        data_collator=CompletionCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        task=CausalLMTask(),
        attack=recorder,
    )
    saved = []

    def save(n: int) -> None:
        step_dir(out, n).mkdir(parents=True, exist_ok=True)
        save_trained(trainer, tokenizer, step_dir(out, n))
        saved.append((n, len(recorder.batches)))

    trainer.add_callback(_save_at(steps, save))
    run = fit(trainer)
    accum = cfg.gradient_accumulation_steps
    info = {
        **base,
        "steps": steps,
        "fraction": cfg.fraction if cfg.data == "forget_fraction" else None,
        "n_rows": len(train_ds),
        "rows": [int(i) for i in rows["index"]] if picked is not None else None,  # training-set indices
        "steps_done": run["steps"],
        **{k: run[k] for k in ("train_loss", "diverged", "diverged_step", "wall_seconds")},
        "batches": recorder.batches,
        "log_history": trainer.state.log_history,
    }
    if not is_main_process():
        return {}
    remove_checkpoints(out)
    if run["diverged"]:
        from ..outputs import write_records

        write_records(out, cfg, {"relearn_info.json": info})
        raise DivergedError(run["diverged_step"], run["train_loss"])
    if run["steps"] != steps[-1] or [n for n, _ in saved] != steps:
        raise RuntimeError(f"relearning took {run['steps']} steps and saved after {saved}; expected {steps}")
    for n, _ in saved:
        # The record of the model after n steps: the batches of those n steps (each of ``accum`` micro-batches).
        sub = {**info, "steps": n, "steps_done": n, "batches": recorder.batches[: n * accum]}
        sub.pop("log_history")
        sub.pop("train_loss")
        finish(
            step_dir(out, n),
            dataclasses.replace(cfg, output_dir=str(step_dir(out, n)), steps=[n]),
            {"relearn_info.json": sub},
        )
    return {"relearn_info.json": info}


def _diverged_source(cfg: RelearnConfig, out: Path, steps: list[int], base: dict) -> dict:
    """An unlearned model that diverged saved no weights: nothing is relearned. Each ``r<n>`` says so the way a
    diverged unlearning run does (``unlearn_info.json`` with ``diverged``), so its evaluation is skipped as the
    source model's is, and the report leaves these rows out."""
    from ..outputs import finish

    note = {"diverged": True, "diverged_step": None, "source_diverged": True}
    for n in steps:
        step_dir(out, n).mkdir(parents=True, exist_ok=True)
        finish(
            step_dir(out, n),
            dataclasses.replace(cfg, output_dir=str(step_dir(out, n)), steps=[n]),
            {"relearn_info.json": {**base, **note, "steps": n}, "unlearn_info.json": note},
        )
    return {"relearn_info.json": {**base, **note, "steps": steps}}


make_parser, cli = stage_commands(RelearnConfig, main, "llm-unlearn relearn")
