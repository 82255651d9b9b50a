"""What every unlearning method shares: paired forget/retain batches, a compute budget in tokens, divergence stops.

A method is a ``Trainer`` subclass of :class:`UnlearnTrainer` that implements ``unlearn_loss(model, forget, retain)``
from the pure loss helpers below; its config dataclass holds its own knobs. The budget counts the tokens that go
through forward+backward passes (a forward-only pass, e.g. of a reference model, counts one third: backward costs
about twice a forward), in the same unit as the retraining run's ``compute_tokens``.

Methods never touch a batch directly: they go through ``self.task`` (``tasks.causal_lm.CausalLMTask`` by default,
the ``ClassificationTask`` of :mod:`llm_unlearn.tasks.classification` for classifiers), which says what the loss, the
per-example log-probability, the logits that KL terms compare, the cost of a batch and the model's blocks are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import Trainer, TrainerCallback

from ..budget import BUDGET_SCHEDULES
from ..training import DivergedError, all_ranks_finite, train_without_full_gc
from ..tasks import causal_lm, task_of

FORWARD_ONLY_COST = 1.0 / 3.0

# Resolution of a budget-driven schedule: the fraction spent is mapped onto this many virtual steps.
_VIRTUAL_STEPS = 100_000


class ForgetRetainDataset(torch.utils.data.Dataset):
    """One item per retain example, paired with a forget example drawn by a seeded shuffle (cycled).

    An epoch walks the retain set once; the forget set, usually far smaller, is revisited many times. Methods that
    never read the forget set (GD, NGD, CF-k, EU-k) pass ``with_forget=False``: fetching and collating it would be
    pure overhead (most of the Trainer's extra cost over a bare loop at batch 32, per bench/unlearn_step.py).
    """

    def __init__(self, forget, retain, seed: int = 0, with_forget: bool = True):
        if len(forget) == 0 or len(retain) == 0:
            raise ValueError(f"forget ({len(forget)}) and retain ({len(retain)}) sets must be non-empty")
        self.forget, self.retain = forget, retain
        order = list(range(len(forget)))
        random.Random(seed).shuffle(order)
        self.forget_order = order
        self.with_forget = with_forget

    def __len__(self) -> int:
        return len(self.retain)

    def __getitem__(self, i: int) -> dict:
        if not self.with_forget:
            return {"retain": self.retain[i]}
        return {"retain": self.retain[i], "forget": self.forget[self.forget_order[i % len(self.forget)]]}


@dataclass
class ForgetRetainCollator:
    """Collates paired items with ``collate`` (default: the causal-LM collator with ``pad_token_id``).

    With ``cost`` (the task's, set by :class:`UnlearnTrainer`), each half's compute cost is also counted here, on the
    CPU, under ``"costs"``: on an accelerator, counting the tokens of the batch the model received would wait for the
    device at every step (``int(mask.sum())`` is a sync)."""

    pad_token_id: int | None = None
    collate: Callable | None = None
    cost: Callable | None = None

    def __call__(self, items: list[dict]) -> dict:
        collate = self.collate or causal_lm.CompletionCollator(self.pad_token_id)
        # A batch holds either half or both: SCRUB's batches are all-forget (max steps) or all-retain (min steps).
        out = {half: collate([x[half] for x in items]) for half in ("retain", "forget") if half in items[0]}
        if self.cost is not None:
            out["costs"] = {half: float(self.cost(batch)) for half, batch in out.items()}
        return out


class CostedBatch(dict):
    """The model inputs of one half of a paired batch, carrying its ``cost`` as counted by the collator (or None).

    A plain ``dict`` to everything that reads it; :meth:`UnlearnTrainer.charge` uses the cost instead of recounting.
    A batch a method derives from it (a copy, a slice) is a plain dict again, and is counted by the task."""

    cost: float | None = None


def costed(batch: dict, cost: float | None) -> CostedBatch:
    out = CostedBatch(batch)
    out.cost = cost
    return out


def _base_args():
    from .arguments import UnlearnArguments

    return UnlearnArguments


class BudgetCallback(TrainerCallback):
    """Stops training once the spent compute reaches the budget (so it overshoots by at most one step).

    Each process charges only its own batches, so the spend is summed over processes (one all-reduce per step) and
    every rank takes the same decision; otherwise each rank would spend the whole budget by itself."""

    def __init__(self, trainer: UnlearnTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        from ..training import all_ranks_sum

        # kept on the trainer: the nested-budget snapshots (stages/unlearn.py) read the same sum, no second all-reduce
        self.trainer.spent_all_ranks = all_ranks_sum(self.trainer.accelerator, self.trainer.compute_tokens)
        if self.trainer.spent_all_ranks >= self.trainer.budget_tokens:
            control.should_training_stop = True
        return control


class UnlearnTrainer(Trainer):
    """Base trainer: ``compute_loss`` unpacks the paired batch, calls ``unlearn_loss`` and checks finiteness.

    Built the way TRL's trainers are, whether by a user on a model held in memory or by the unlearn stage::

        args = NPOConfig(output_dir="out", beta=0.1, learning_rate=1e-4, max_steps=10)
        trainer = NPOTrainer(model=model, args=args, forget_dataset=forget, retain_dataset=retain,
                             processing_class=tokenizer)

    Args:
        model: the model to unlearn from (a ``PreTrainedModel``, or a task's own ``torch.nn.Module``). The method's
            ``prepare_model`` hook runs on it first (EU-k re-initialises its top, CF-k freezes the rest).
        args: the method's ``<Name>Config`` (``METHODS[name].config_cls``: ``TrainingArguments``, the method's knobs,
            ``budget_tokens``, ``max_length``); plain ``TrainingArguments`` give the knobs their defaults. The knobs
            become ``self.method_cfg`` (the method's knob dataclass).
        forget_dataset, retain_dataset: the rows to forget and to keep: a ``datasets.Dataset`` or a list of dicts in
            TRL's prompt/completion format (tokenized here, with ``processing_class``), or already tokenized rows, or
            a task's own items (with a ``data_collator`` for them). Paired by :class:`ForgetRetainDataset`.
        processing_class: the tokenizer (pads batches, tokenizes prompt/completion rows; saved with the model).
        ref_model: the frozen initial model of methods with ``needs_reference`` (NPO, SCRUB, RMU...): a model, or a
            zero-argument callable that loads one, called once the Trainer (and its accelerator) exists so that
            under ZeRO-3 it is created sharded; then wrapped in its own DeepSpeed inference engine as TRL prepares
            its reference models, or moved to the device. None: with LoRA the adapter is switched off instead; else
            loaded from ``model.name_or_path`` when that is a local dir, else copied through
            ``type(model)(model.config)`` + ``load_state_dict`` (never a ``deepcopy``; refused under ZeRO-3).
        peft_config: a peft ``LoraConfig``: the model is wrapped with ``get_peft_model`` and only the adapter trains.
            Refused by methods that edit the base weights themselves (SSD, EU-k: ``supports_peft = False``).
        task: how batches are read (loss, cost, log-probs, blocks; default: the model's own ``unlearn_task``, else the
            causal-LM task).
        data_collator: collates paired items (default: :class:`ForgetRetainCollator` padding with the tokenizer's
            pad id).
        **kwargs: the rest of ``transformers.Trainer``'s arguments (callbacks, optimizers...).

    The compute budget (``args.budget_tokens``, in the task's units: tokens, examples) stops training after the step
    that spends it, and budget-following learning-rate schedules use it; None: ``max_steps`` rules.
    """

    # False for methods whose loss never reads the forget batch: the dataset then skips it.
    reads_forget = True
    # Whether the model this trainer holds once it has spent a fraction f of its budget is the model a run with budget
    # f would end with (with a schedule that does not follow the budget): true of every method that is a sequence of
    # optimizer steps; false of one whose result depends on the total budget (SSD dampens once, at the end). ``run``
    # then takes all budgets of a grid point from one run (``save_at_budgets``) only for methods where it holds.
    nests_budgets = True
    # What registration fills in (``@register_method``): the method's name and config class.
    method_name: str | None = None
    method_config_cls: type | None = None

    def __init__(
        self,
        model=None,
        args=None,
        forget_dataset=None,
        retain_dataset=None,
        processing_class=None,
        ref_model=None,
        peft_config=None,
        *,
        task=None,
        data_collator=None,
        **kwargs,
    ):
        from ..configs import ConfigError
        from .arguments import knobs_of
        from .inputs import as_examples, has_adapter, pad_token_id, prepared_model, reference_source

        if "train_dataset" in kwargs:
            raise ConfigError(f"{type(self).__name__}: pass forget_dataset and retain_dataset, not train_dataset")
        if model is None:
            raise ConfigError(f"{type(self).__name__}: model is required")
        spec = self._spec()
        if args is None:  # HF's default output_dir, as Trainer(args=None) uses
            args = (spec.config_cls if spec is not None else _base_args())(output_dir="tmp_trainer")
        # Set before Trainer.__init__: a method's own __init__ (and HF's callbacks) may read them.
        self.method_cfg = knobs_of(args, type(self).method_config_cls)
        budget = getattr(args, "budget_tokens", None)
        self.budget_tokens = float("inf") if budget is None else float(budget)
        self.compute_tokens = 0.0
        self.spent_all_ranks = 0.0  # compute_tokens summed over processes, as of the last finished step
        self.reference_model = None
        self._clip_params = None
        needs_reference = spec.needs_reference if spec is not None else getattr(self, "needs_reference", False)
        if needs_reference and ref_model is None and peft_config is None and not has_adapter(model):
            ref_model = reference_source(model, self.method_name or type(self).__name__)  # before any re-init
        model = prepared_model(model, spec, self.method_cfg, args.seed, peft_config)
        max_length = getattr(args, "max_length", 256)
        forget = as_examples(forget_dataset, processing_class, max_length, "forget_dataset")
        retain = as_examples(retain_dataset, processing_class, max_length, "retain_dataset")
        if data_collator is None:
            data_collator = ForgetRetainCollator(pad_token_id(processing_class))
        super().__init__(
            model=model,
            args=args,
            train_dataset=ForgetRetainDataset(forget, retain, seed=args.seed, with_forget=self.reads_forget),
            data_collator=data_collator,
            processing_class=processing_class,
            **kwargs,
        )
        self.task = task if task is not None else task_of(self.model)
        if isinstance(self.data_collator, ForgetRetainCollator) and self.data_collator.cost is None:
            self.data_collator = dataclasses.replace(self.data_collator, cost=self.task.cost)
        if needs_reference and ref_model is not None and not has_adapter(self.model):
            self.reference_model = self._prepare_reference(ref_model)
        if math.isfinite(self.budget_tokens):
            self.add_callback(BudgetCallback(self))

    @classmethod
    def _spec(cls):
        """The registered method of this class (None for an unregistered subclass)."""
        from ..registry import METHODS

        spec = METHODS.get(cls.method_name) if cls.method_name else None
        # a user's subclass of a registered trainer is still that method (its hook, its reference)
        return spec if spec is not None and issubclass(cls, spec.trainer_cls) else None

    def _prepare_reference(self, ref):
        if callable(ref) and not isinstance(ref, torch.nn.Module):
            ref = ref()
        ref.requires_grad_(False).eval()
        if self.is_deepspeed_enabled:
            from trl.models.utils import prepare_deepspeed

            return prepare_deepspeed(ref, self.accelerator)
        return ref.to(self.args.device)

    def train(self, *args, **kwargs):
        self._clip_params = None
        return train_without_full_gc(self, super().train, *args, **kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """A learning-rate schedule over the *budget* rather than over ``max_steps``.

        How many steps a budget buys is not known in advance (a step's cost depends on its examples' lengths and on the
        method), and ``max_steps`` is only an upper bound: a schedule spread over it would never reach its end (a
        ``linear`` decay would stop half way). Here the schedule's position is the fraction of the budget spent so far
        (summed over processes), mapped onto HF's own schedule functions: with ``linear`` the rate falls to 0 exactly
        when the budget is spent; warmup is the first ``warmup_ratio`` of the budget. Without a finite budget (the
        Python API with none given), HF's step-based schedule is used."""
        if self.lr_scheduler is not None or not math.isfinite(self.budget_tokens):
            return super().create_scheduler(num_training_steps, optimizer)
        from transformers import get_scheduler

        from ..configs import ConfigError
        from ..training import all_ranks_sum

        name = getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type)
        if name not in BUDGET_SCHEDULES:
            raise ConfigError(
                f"lr_scheduler_type {name!r} cannot follow a compute budget; choose from {BUDGET_SCHEDULES}"
            )
        if self.args.warmup_steps >= 1:
            raise ConfigError("unlearning warmup is a fraction of the budget: give warmup_ratio < 1, not warmup steps")
        optimizer = self.optimizer if optimizer is None else optimizer
        by_step = get_scheduler(
            name,
            optimizer=optimizer,
            num_warmup_steps=self.args.get_warmup_steps(_VIRTUAL_STEPS),
            num_training_steps=_VIRTUAL_STEPS,
            scheduler_specific_kwargs=self.args.lr_scheduler_kwargs,
        )

        def position() -> int:  # collective: the scheduler steps on every process at once
            spent = all_ranks_sum(self.accelerator, self.compute_tokens)
            return round(min(1.0, spent / self.budget_tokens) * _VIRTUAL_STEPS)

        def follow(f):
            return lambda _step: f(position())

        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [follow(f) for f in by_step.lr_lambdas])
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def _clip_grad_norm(self, model):
        # HF clips ``model.parameters()``, which walks every module and frozen weight at every step (~0.4 ms for the
        # tiny Llama with LoRA: 175 modules, 49 tensors of which 28 train). Frozen weights have no gradient and torch's
        # clipping skips those, so the trainable ones alone, in the same order, give the same norm and the same update.
        # Only in a plain single process: DeepSpeed and FSDP clip their own way (FSDP compares the list with the
        # model's), and HF's path handles DTensor meshes.
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type != DistributedType.NO:
            return super()._clip_grad_norm(model)
        if self._clip_params is None:
            self._clip_params = [p for p in model.parameters() if p.requires_grad]
        return self.accelerator.clip_grad_norm_(self._clip_params, self.args.max_grad_norm)

    def _get_train_sampler(self, train_dataset=None):
        # Order from (seed, epoch) alone, as in training: a run resumed from a checkpoint then replays the batches an
        # uninterrupted run would (HF's default sampler draws from the global RNG, restored at the checkpoint's step).
        from ..seeding import epoch_seeded_sampler

        ds = self.train_dataset if train_dataset is None else train_dataset
        return epoch_seeded_sampler(len(ds), self.args.seed, self.args.train_batch_size)

    @contextlib.contextmanager
    def reference(self, model):
        """Yield the frozen initial model for forward passes (no grad): ``model`` with its LoRA adapter disabled, or
        the separate reference copy. Charge its tokens with ``charge(batch, backward=False)``."""
        unwrapped = self.accelerator.unwrap_model(model)
        if hasattr(unwrapped, "disable_adapter"):
            with unwrapped.disable_adapter(), torch.no_grad():
                yield model
        elif self.reference_model is not None:
            with torch.no_grad():
                yield self.reference_model
        else:
            raise RuntimeError("this method needs a reference model: register it with needs_reference=True")

    def nll(self, model, batch, backward: bool = True) -> torch.Tensor:
        """The task's training loss of a batch (completion-token NLL for LMs), charging its cost to the budget."""
        self.charge(batch, backward)
        return self.task.nll(model, batch)

    def charge(self, batch, backward: bool = True) -> None:
        cost = getattr(batch, "cost", None)  # counted on the CPU by the collator (a CostedBatch), else by the task
        if cost is None:
            cost = self.task.cost(batch)
        self.compute_tokens += cost * (1.0 if backward else FORWARD_ONLY_COST)

    def unlearn_loss(self, model, forget: dict, retain: dict) -> torch.Tensor:
        raise NotImplementedError

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        costs = inputs.get("costs", {})
        forget = costed(self.task.model_inputs(inputs["forget"]), costs.get("forget")) if "forget" in inputs else None
        retain = costed(self.task.model_inputs(inputs["retain"]), costs.get("retain")) if "retain" in inputs else None
        loss = self.unlearn_loss(model, forget, retain)
        if not all_ranks_finite(self.accelerator, loss):  # collective: a rank stopping alone would hang the rest
            raise DivergedError(self.state.global_step, float(loss.detach()))
        return loss
