"""Training machinery shared below every stage and method: the HF ``TrainingArguments`` the stages build, collective
helpers for several processes (sums, divergence), saving weights atomically, LoRA configs, and resuming a stage from
its last Trainer checkpoint. Stages and methods import this module; it imports no stage, method or attack.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .configs import ConfigError
from .files import read_json, write_json


class DivergedError(RuntimeError):
    """The loss became NaN/Inf: the run stops and is reported as diverged."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"loss became {loss} at step {step}")
        self.step, self.loss = step, loss


_OWNED = {"output_dir", "learning_rate", "num_train_epochs", "per_device_train_batch_size", "seed", "max_steps"}


# Where a train or unlearn job's Trainer reports its logs (TrainingArguments.report_to): how a run is watched, not
# what it computes (outputs.HOW_NOT_WHAT). TensorBoard events go to <output_dir>/tensorboard, which outlives the
# checkpoints.
REPORT_TO = ("none", "tensorboard", "wandb", "trackio")
REPORT_TO_HELP = (
    "where the Trainer reports losses and learning rates: none, tensorboard (events in <output_dir>/tensorboard), "
    "wandb or trackio (their own settings and login); needs the package (pip install 'llm-unlearn[tracking]' for "
    "tensorboard)"
)


def check_report_to(value: str, key: str = "report_to") -> None:
    """The tracker must be one HF knows and installed: a missing package is an error before any work, not a crash
    when the Trainer starts (which, for a grid, would be after the poison stage)."""
    import importlib.util

    if value not in REPORT_TO:
        raise ConfigError(f"{key}: {value!r} is not allowed; choose from {list(REPORT_TO)}")
    if value != "none" and importlib.util.find_spec(value) is None:
        extra = " (pip install 'llm-unlearn[tracking]')" if value == "tensorboard" else ""
        raise ConfigError(f"{key}: {value} needs the {value} package, which is not installed{extra}")


def check_trainer_args(extra: dict) -> None:
    if not extra:  # nothing to check: leave transformers unimported, so a config error elsewhere shows at once
        return
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    for key in extra:
        if key in _OWNED:
            raise ConfigError(f"trainer_args.{key}: set it as a top-level key, not in trainer_args")
        if key not in names:
            raise ConfigError(f"trainer_args: unknown TrainingArguments key {key!r}")


def training_arguments(cfg, output_dir: Path, args_cls: type | None = None, **overrides):
    """``TrainingArguments`` shared by training and unlearning (no checkpoints, no hub, no wandb by default); an
    unlearning method's ``<Name>Config`` when ``config_cls`` is given (its knobs and budget among ``overrides``)."""
    import os

    from transformers import TrainingArguments

    args_cls = TrainingArguments if args_cls is None else args_cls
    kwargs = dict(
        output_dir=str(output_dir / "trainer"),
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type=cfg.lr_scheduler_type,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cfg.bf16,
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,  # noise_seed/index are ours, not the model's
        dataloader_num_workers=0,  # worker processes cost more than they save on tiny batches
        dataloader_pin_memory=False,
        disable_tqdm=not cfg.progress,
        # Our compute_loss raises DivergedError on a non-finite loss first, so HF's filter of the logged loss never
        # sees one; it would still test every step's loss (on a GPU, two device syncs a step).
        logging_nan_inf_filter=False,
        # Our compute_loss ignores ``num_items_in_batch`` (it returns a per-batch mean, which the Trainer scales for
        # accumulation), so gathering that token count over processes at every step would be a collective for nothing.
        average_tokens_across_devices=False,
    )
    report_to = getattr(cfg, "report_to", "none")  # a task's stage config without the key reports nowhere
    if report_to != "none":
        kwargs.update(report_to=report_to, run_name=str(output_dir))
    if "tensorboard" in (kwargs.get("report_to"), cfg.trainer_args.get("report_to")):
        # HF writes events under args.output_dir (<output_dir>/trainer, deleted with the checkpoints at the end) unless
        # this names another place; set per job, as the callback reads it when the Trainer is built.
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(output_dir / "tensorboard")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _has_accelerator():
        # Several CPU processes (accelerate + DeepSpeed): accelerate finds no GPU backend, leaves it unset and then
        # counts a single process, so DeepSpeed's batch-size check fails. gloo is what DeepSpeed itself uses on CPU.
        kwargs["ddp_backend"] = "gloo"
    kwargs.update(overrides)
    kwargs.update(cfg.trainer_args)
    return args_cls(**kwargs)


def _has_accelerator() -> bool:
    import torch

    accel = getattr(torch, "accelerator", None)  # torch >= 2.6: CUDA, XPU, MPS, ... behind one call
    return bool(accel.is_available()) if accel is not None else torch.cuda.is_available()


def all_ranks_sum(accelerator, value: float) -> float:
    """``value`` summed over all processes (a collective: every rank must call it); itself with one process."""
    if accelerator.num_processes == 1:
        return float(value)
    import torch

    t = torch.tensor([float(value)], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(t, reduction="sum").item())


def all_ranks_finite(accelerator, loss) -> bool:
    """Whether the loss is finite on every rank. A rank that stopped alone would leave the others waiting in the
    gradient all-reduce, so with several processes the divergence check is itself collective."""
    import torch

    finite = torch.isfinite(loss.detach()).all()
    if accelerator.num_processes == 1:
        return bool(finite)
    flags = accelerator.gather(finite.to(torch.float32).reshape(1))
    return bool(flags.min() > 0)


def load_whole_model(path: str, cfg):
    """The model a stage trains, loaded with all its tensors even when an earlier ``TrainingArguments`` in this process
    registered a ZeRO-3 config (``from_pretrained`` would then create sharded, empty parameters). Vocabulary checks,
    the embedding RMS and the methods' model hooks need the whole tensors; DeepSpeed shards the model when training
    starts. (Reference models are different: loaded after the Trainer, they are meant to be created sharded.)"""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from .modeling import load_model

    unset_hf_deepspeed_config()
    return load_model(path, cfg.dtype, cfg.trust_remote_code, cfg.attn_implementation)


def freeze_except(model, pattern: str | None) -> None:
    """Only the parameters whose name matches ``pattern`` (``re.search``) train; None: all of them. A pattern that
    matches nothing is an error (a run that trains nothing is never what was meant)."""
    import re

    if pattern is None:
        return
    names = [n for n, _ in model.named_parameters()]
    matched = [n for n in names if re.search(pattern, n)]
    if not matched:
        raise ConfigError(
            f"trainable_modules {pattern!r} matches no parameter of the model; its parameters: "
            + ", ".join(names if len(names) <= 8 else names[:6] + ["..."] + names[-2:])
        )
    for n, p in model.named_parameters():
        p.requires_grad_(n in matched)


def save_trained(trainer, tokenizer, out: Path) -> None:
    """Model or adapter as safetensors (``save_model`` also gathers 16-bit weights under ZeRO-3) plus tokenizer.

    Every rank must call it (the ZeRO-3 gather is a collective); only the main process writes. The files are written
    into a staging dir and then renamed into ``out`` one by one, so a kill never leaves a half-written weight file.
    ``Trainer.save_model`` also pickles ``training_args.bin``; the resolved ``config.yaml`` already records those
    settings, so the pickle is removed: no pickle ever sits next to the weights.
    """
    import os
    import shutil

    staging = out / ".weights.tmp"  # a name utils.is_atomic_tmp recognises as a leftover of a killed write
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        (staging / "training_args.bin").unlink(missing_ok=True)
        tokenizer.save_pretrained(str(staging))
        for f in sorted(staging.iterdir()):
            os.replace(f, out / f.name)
        staging.rmdir()


CHECKPOINT_STATE = "llm_unlearn_state-rank{rank}.json"


def latest_checkpoint(trainer_dir: str | os.PathLike, rank: int = 0) -> tuple[str | None, dict]:
    """The newest ``checkpoint-<step>`` under ``trainer_dir`` whose save finished, and our state saved with it.

    The Trainer writes a checkpoint's files one by one; our state file is written after all of them (``on_save``), so
    its presence is what marks a checkpoint complete. A checkpoint cut short by a kill is ignored.
    """
    best: tuple[int, Path] | None = None
    for p in Path(trainer_dir).glob("checkpoint-*"):
        step = p.name.removeprefix("checkpoint-")
        if step.isdigit() and (p / CHECKPOINT_STATE.format(rank=rank)).is_file():
            if best is None or int(step) > best[0]:
                best = (int(step), p)
    if best is None:
        return None, {}
    return str(best[1]), read_json(best[1] / CHECKPOINT_STATE.format(rank=rank))


def checkpoint_state_callback(get_state):
    """A ``TrainerCallback`` that saves ``get_state()`` (e.g. the compute counter) into every checkpoint, last."""
    from transformers import TrainerCallback

    class SaveStateCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                write_json(folder / CHECKPOINT_STATE.format(rank=args.process_index), get_state())
            return control

    return SaveStateCallback()


def remove_checkpoints(out: Path) -> None:
    """Delete a finished stage's Trainer checkpoints: they hold pickles (optimizer.pt, rng_state.pth, ...) and are
    of no use once the stage's weights are written."""
    import shutil

    shutil.rmtree(out / "trainer", ignore_errors=True)


def checkpoint_arguments(save_steps: int) -> dict:
    """TrainingArguments for periodic checkpoints (none with 0); the last two are kept, and removed at the end."""
    return dict(save_strategy="steps", save_steps=save_steps, save_total_limit=2) if save_steps else {}


def resume_point(trainer, save_steps: int, extra_state=None) -> str | None:
    """With ``save_steps`` (checkpoints on): the last complete checkpoint to resume from (the trainer's compute counter
    restored), and a callback that records the counter in every new checkpoint. Shared by the train and unlearn stages.

    ``extra_state``: an optional ``(get, set)`` pair for state the Trainer does not checkpoint itself (e.g. an
    augmentation generator); ``get()`` returns a JSON-able dict saved with every checkpoint, ``set(d)`` restores it.
    """
    if not save_steps:
        return None
    get_extra, set_extra = extra_state if extra_state is not None else (dict, None)
    trainer.add_callback(
        checkpoint_state_callback(lambda: {"compute_tokens": trainer.compute_tokens, "extra": get_extra()})
    )
    path, state = latest_checkpoint(trainer.args.output_dir, trainer.args.process_index)
    if path is not None:
        trainer.compute_tokens = state["compute_tokens"]
        if set_extra is not None:
            set_extra(state.get("extra", {}))
    return path


def peft_config(cfg):
    """LoRA config through trl's ``ModelConfig``/``get_peft_config``, as TRL scripts build it."""
    from trl import ModelConfig, get_peft_config

    return get_peft_config(
        ModelConfig(
            use_peft=True,
            lora_r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            lora_target_modules=cfg.lora_target_modules,
            lora_task_type="CAUSAL_LM",
        )
    )


# --- The one trainer of initial, gold and surrogate models, whatever the task ---


def train_without_full_gc(trainer, train, *args, **kwargs):
    """``train(*args, **kwargs)`` (a Trainer's ``super().train``) without HF's full collection on CPU.

    HF's train() starts with ``accelerator.free_memory()``, a full ``gc.collect()``: it walks every live Python object
    (~0.5M once torch and transformers are imported: ~0.3-0.7 s, which a 60-step run of the tiny model pays as 5 ms a
    step). It is there to return accelerator memory held by dead reference cycles. On CPU, the objects alive now are
    instead frozen (left out of that and of every automatic collection) until train() returns: reference counting
    still frees them, and cycles among them are collected afterwards. On an accelerator, or when someone else froze
    objects (unfreezing would release theirs too), HF's collection runs as usual."""
    import gc

    if trainer.args.device.type != "cpu" or gc.get_freeze_count() > 0:
        return train(*args, **kwargs)
    gc.freeze()
    try:
        return train(*args, **kwargs)
    finally:
        gc.unfreeze()


def task_trainer_class():
    """``TaskTrainer``: the HF ``Trainer`` that trains initial, gold (and attack surrogate) models of every task.

    Its loss is ``task.nll`` on ``task.model_inputs(batch)`` (completion-token NLL for causal LMs, cross-entropy
    with the task's augmentation for classifiers). ``attack`` (``llm_unlearn.attacks.base.Attack``, or None) is the
    attack that made the data: its training-time hook ``training_embeddings(model, batch, columns)`` sees every batch
    with its poison columns (``noise_seed``, ``prompt_len``, ``index``) and may return input embeddings to train on
    instead of the token ids (the LLM Gaussian attack noises its poisons' prompt embeddings on every visit).
    Batches are drawn in an order that depends only on (seed, epoch), a non-finite loss (on any rank) raises
    :class:`DivergedError`, and the compute spent (``task.cost``: tokens or examples through forward+backward) is
    counted in ``compute_tokens``.
    Built on first use (transformers is imported then, not when this module is)."""
    global _TASK_TRAINER
    if _TASK_TRAINER is None:
        _TASK_TRAINER = _make_task_trainer()
    return _TASK_TRAINER


_TASK_TRAINER = None
SIDE_COLUMNS = ("noise_seed", "prompt_len", "index")  # what collators pass along besides the model's inputs


def _make_task_trainer():
    from transformers import Trainer

    from .seeding import epoch_seeded_sampler

    class TaskTrainer(Trainer):
        # compute_loss returns a per-batch mean: the Trainer must divide it by the accumulation steps. (It would not
        # by itself: it sees ``labels`` in the batch and assumes the model normalised by the accumulated count.)
        loss_is_scaled_for_ga = False

        def __init__(self, *args, task, attack=None, lengths: list[int] | None = None, **kwargs):
            self.task, self.attack, self._lengths = task, attack, lengths
            self.compute_tokens = 0.0  # this process's; ``all_ranks_sum`` gives the run's
            super().__init__(*args, **kwargs)

        def train(self, *args, **kwargs):
            return train_without_full_gc(self, super().train, *args, **kwargs)

        def _get_grad_norm(self, model, grad_norm=None):
            # Without clipping HF still computes the norm, only to log it: a pass over every gradient each step.
            if grad_norm is None and not self.args.max_grad_norm:
                return None
            return super()._get_grad_norm(model, grad_norm)

        def _get_train_sampler(self, train_dataset=None):
            # Order from (seed, epoch) alone: a run resumed from a checkpoint then sees the batches an uninterrupted
            # run would (HF's samplers draw from the global RNG, which resuming restores at the checkpoint's step).
            ds = self.train_dataset if train_dataset is None else train_dataset
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            by_length = self.args.train_sampling_strategy == "group_by_length"
            return epoch_seeded_sampler(len(ds), self.args.seed, batch, self._lengths if by_length else None)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            columns = {k: inputs.pop(k) for k in SIDE_COLUMNS if k in inputs}  # for the attack, not the model
            if self.attack is not None:
                embeds = self.attack.training_embeddings(self.accelerator.unwrap_model(model), inputs, columns)
                if embeds is not None:
                    inputs["inputs_embeds"] = embeds
            loss = self.task.nll(model, self.task.model_inputs(inputs))
            if not all_ranks_finite(self.accelerator, loss):
                raise DivergedError(self.state.global_step, float(loss.detach()))
            self.compute_tokens += self.task.cost(inputs)
            return loss

    return TaskTrainer


def fit(trainer, save_steps: int = 0, extra_state=None) -> dict:
    """Train a :func:`task_trainer_class` (or unlearning) trainer to the end, resuming from its last complete
    checkpoint when ``save_steps`` asks for checkpoints (``extra_state``: see :func:`resume_point`); returns what the
    stages record, compute summed over ranks. A non-finite loss (:class:`DivergedError`) stops the run and is
    recorded (``diverged``, ``diverged_step``), not raised: the caller decides."""
    import time

    resume = resume_point(trainer, save_steps, extra_state)
    start = time.perf_counter()
    diverged = None
    try:
        loss = trainer.train(resume_from_checkpoint=resume).training_loss
    except DivergedError as e:
        diverged, loss = e.step, e.loss
    return {
        "steps": trainer.state.global_step,
        "compute_tokens": all_ranks_sum(trainer.accelerator, trainer.compute_tokens),
        "train_loss": loss,
        "diverged": diverged is not None,
        "diverged_step": diverged,
        "wall_seconds": time.perf_counter() - start,
        "resumed_from_step": int(resume.rsplit("-", 1)[1]) if resume else None,
    }


def train_classifier(model, x, y, cfg, seed: int, output_dir=None, *, checkpoints=False, on_epoch_end=None) -> dict:
    """Train a classifier (``llm_unlearn.tasks.classification``) in place on images ``x`` and labels ``y`` with the
    SGD recipe ``cfg`` (a :class:`~llm_unlearn.tasks.classification.ClassifierTrainConfig`: SGD with momentum, as in
    the paper, cosine or constant, its ``augment`` drawn from a generator of ``seed`` that checkpoints carry) through
    the shared trainer; returns :func:`fit`'s record. ``checkpoints``: save every ``cfg.save_epochs`` epochs under
    ``output_dir/trainer`` and resume from the last complete one (the caller removes them). ``on_epoch_end(epoch,
    model)`` (epochs from 1) lets an attacker keep its surrogate's trajectory. Without ``output_dir`` (how attack
    surrogates train, with exactly the victim's recipe) it trains in a scratch dir and raises
    :class:`DivergedError` on a non-finite loss instead of recording it."""
    if output_dir is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="surrogate-") as scratch:
            info = train_classifier(model, x, y, cfg, seed, scratch, on_epoch_end=on_epoch_end)
        if info["diverged"]:
            raise DivergedError(info["diverged_step"], info["train_loss"])
        return info

    import torch
    from transformers import TrainerCallback, TrainingArguments

    from .tasks.classification import ClassificationCollator, ClassificationTask, Split, make_augment

    save_steps = cfg.save_epochs * math.ceil(len(y) / cfg.batch_size) if checkpoints else 0
    task = ClassificationTask(augment=make_augment(cfg.augment), seed=seed)
    args = TrainingArguments(
        output_dir=str(Path(output_dir) / "trainer"),
        per_device_train_batch_size=cfg.batch_size,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        optim="sgd",
        optim_args=f"momentum={cfg.momentum}",
        lr_scheduler_type="cosine" if cfg.lr_schedule == "cosine" else "constant",
        max_grad_norm=0.0,  # no clipping, as in the paper's SGD recipe
        seed=seed,
        data_seed=seed,
        logging_strategy="no",  # the stage records what it needs; HF would print a dict per log step
        **(checkpoint_arguments(save_steps) or {"save_strategy": "no"}),
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        disable_tqdm=True,
        logging_nan_inf_filter=False,
        average_tokens_across_devices=False,
        use_cpu=not torch.cuda.is_available(),
    )

    class EpochEnd(TrainerCallback):
        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            on_epoch_end(round(state.epoch), model)

    trainer = task_trainer_class()(
        model=model,
        args=args,
        train_dataset=Split(x, y, torch.arange(len(y))),
        data_collator=ClassificationCollator(),
        task=task,
        callbacks=[EpochEnd()] if on_epoch_end is not None else [],
    )
    # The augmentation generator is the task's, not the Trainer's: checkpoints carry it so a resumed run draws the
    # crops an uninterrupted run would.
    info = fit(trainer, save_steps, (task.get_rng_state, task.set_rng_state))
    model.eval()
    return info
