"""What every unlearning method shares: paired forget/retain batches, a compute budget in tokens, divergence stops.

A method is a ``Trainer`` subclass of :class:`UnlearnTrainer` that implements ``unlearn_loss(model, forget, retain)``
from the pure loss helpers below; its config dataclass holds its own knobs. The budget counts the tokens that go
through forward+backward passes (a forward-only pass, e.g. of a reference model, counts one third: backward costs
about twice a forward), in the same unit as the retraining run's ``compute_tokens``.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import torch
from transformers import Trainer, TrainerCallback

from ..stages.train import DivergedError
from ..tasks.causal_lm import CompletionCollator, batch_tokens, mean_token_nll

FORWARD_ONLY_COST = 1.0 / 3.0


class ForgetRetainDataset(torch.utils.data.Dataset):
    """One item per retain example, paired with a forget example drawn by a seeded shuffle (cycled).

    An epoch walks the retain set once; the forget set, usually far smaller, is revisited many times.
    """

    def __init__(self, forget, retain, seed: int = 0):
        if len(forget) == 0 or len(retain) == 0:
            raise ValueError(f"forget ({len(forget)}) and retain ({len(retain)}) sets must be non-empty")
        self.forget, self.retain = forget, retain
        order = list(range(len(forget)))
        random.Random(seed).shuffle(order)
        self.forget_order = order

    def __len__(self) -> int:
        return len(self.retain)

    def __getitem__(self, i: int) -> dict:
        return {"retain": self.retain[i], "forget": self.forget[self.forget_order[i % len(self.forget)]]}


@dataclass
class ForgetRetainCollator:
    pad_token_id: int

    def __call__(self, items: list[dict]) -> dict:
        collate = CompletionCollator(self.pad_token_id)
        return {"forget": collate([x["forget"] for x in items]), "retain": collate([x["retain"] for x in items])}


class BudgetCallback(TrainerCallback):
    """Stops training once the spent compute reaches the budget (so it overshoots by at most one step)."""

    def __init__(self, trainer: UnlearnTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer.compute_tokens >= self.trainer.budget_tokens:
            control.should_training_stop = True
        return control


class UnlearnTrainer(Trainer):
    """Base trainer: ``compute_loss`` unpacks the paired batch, calls ``unlearn_loss`` and checks finiteness."""

    method_cfg = None
    budget_tokens: float = float("inf")
    compute_tokens: float = 0.0
    # Full-parameter runs of methods with ``needs_reference``: a frozen ``from_pretrained`` copy of the initial model
    # (never ``deepcopy``: it breaks under ZeRO-3). LoRA runs need no copy: the adapter is switched off instead.
    reference_model = None

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
        """Mean completion-token NLL of a batch, charging its tokens to the budget."""
        self.charge(batch, backward)
        return mean_token_nll(model, batch)

    def charge(self, batch, backward: bool = True) -> None:
        self.compute_tokens += batch_tokens(batch) * (1.0 if backward else FORWARD_ONLY_COST)

    def unlearn_loss(self, model, forget: dict, retain: dict) -> torch.Tensor:
        raise NotImplementedError

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forget = _model_inputs(inputs["forget"])
        retain = _model_inputs(inputs["retain"])
        loss = self.unlearn_loss(model, forget, retain)
        if not bool(torch.isfinite(loss).all()):
            raise DivergedError(self.state.global_step, float(loss))
        return loss


def _model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
