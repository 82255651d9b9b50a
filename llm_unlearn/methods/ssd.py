"""SSD, selective synaptic dampening (Foster et al. 2024): no training. Diagonal Fisher importances on the training
data ([]_D) and on the forget set ([]_f); every parameter with []_f,i > alpha []_D,i is scaled by
min(lambda []_D,i / []_f,i, 1). The compute is the Fisher passes: they run until the budget is spent (or
``max_steps`` paired batches), then the weights are dampened once. Edits base weights, so full-parameter only.

[]_D is the mean over batches of D = retain + forget of the squared gradient of the batch-mean NLL. A batch of D
holds forget examples in their true proportion p = |D_f| / |D|, so its gradient is (1 - p) g_retain + p g_forget,
built here from the paired retain and forget batches. Averaging squared gradients of separate retain and forget
batches instead would give []_D >= []_f / 2 and SSD would never select anything."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from transformers.trainer_utils import TrainOutput

from ..configs import ConfigError
from ..stages.train import DivergedError, all_ranks_finite, all_ranks_sum
from .base import UnlearnTrainer


@dataclass
class SSDConfig:
    """Dampen the parameters far more important to the forget set than to the training data."""

    alpha: float = field(default=10.0, metadata={"help": "selection: dampen where []_f > alpha []_D (paper: 10)"})
    lam: float = field(
        default=1.0, metadata={"help": "lambda, dampening: scale by min(lam []_D / []_f, 1) (paper: 1)"}
    )

    def validate(self) -> None:
        for name in ("alpha", "lam"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"method_args.{name} must be > 0, got {getattr(self, name)}")


@torch.no_grad()
def ssd_dampen_(params, imp_data, imp_forget, alpha: float, lam: float) -> int:
    """theta_i <- min(lam imp_data_i / imp_forget_i, 1) theta_i where imp_forget_i > alpha imp_data_i (in place);
    returns how many entries were selected."""
    n = 0
    for p, d, f in zip(params, imp_data, imp_forget, strict=True):
        selected = f > alpha * d  # never true where imp_forget = 0, so the division below is safe where it counts
        factor = (lam * d / f.clamp_min(torch.finfo(f.dtype).tiny)).clamp(max=1.0)
        p.mul_(torch.where(selected, factor, torch.ones_like(factor)).to(p.dtype))
        n += int(selected.sum())
    return n


class SSDTrainer(UnlearnTrainer):
    def train(self, *args, **kwargs) -> TrainOutput:
        model = self.model
        model.eval()  # deterministic Fisher: no dropout
        params = [p for p in model.parameters() if p.requires_grad]
        imp_d = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        imp_f = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        forget, retain = self.train_dataset.forget, self.train_dataset.retain
        p_f = len(forget) / (len(forget) + len(retain))
        limit = self.args.max_steps if self.args.max_steps > 0 else len(self.get_train_dataloader())
        batches, loss_sum = 0, 0.0
        epochs = itertools.chain.from_iterable(self.get_train_dataloader() for _ in itertools.count())
        for inputs in epochs:
            # Each process charges only its own batches: the budget is checked on the sum over processes (collective,
            # so every rank stops at the same batch), as BudgetCallback does for the trained methods.
            if batches >= limit or all_ranks_sum(self.accelerator, self.compute_tokens) >= self.budget_tokens:
                break
            inputs = self._prepare_inputs(inputs)
            model.zero_grad(set_to_none=True)
            f_nll = self.nll(model, self.task.model_inputs(inputs["forget"]))
            (p_f * f_nll).backward()
            for acc, p in zip(imp_f, params):
                if p.grad is not None:
                    acc.add_((p.grad.float() / p_f).square())
            r_nll = self.nll(model, self.task.model_inputs(inputs["retain"]))
            ((1.0 - p_f) * r_nll).backward()  # accumulates onto p_f g_forget: the gradient of a batch of D
            for acc, p in zip(imp_d, params):
                if p.grad is not None:
                    acc.add_(p.grad.float().square())
            loss = p_f * f_nll.detach() + (1.0 - p_f) * r_nll.detach()
            if not all_ranks_finite(self.accelerator, loss):  # collective: a rank stopping alone would hang the rest
                raise DivergedError(batches, float(loss))
            loss_sum += float(loss)
            batches += 1
        model.zero_grad(set_to_none=True)
        if self.accelerator.num_processes > 1:  # every rank must dampen the same entries
            imp_d, imp_f = self.accelerator.reduce([imp_d, imp_f], reduction="mean")
        for acc in imp_d + imp_f:
            acc.div_(max(batches, 1))
        dampened = ssd_dampen_(params, imp_d, imp_f, self.method_cfg.alpha, self.method_cfg.lam)
        self.state.global_step = self.state.max_steps = batches
        metrics = {"train_loss": loss_sum / max(batches, 1), "ssd_fisher_batches": batches, "ssd_dampened": dampened}
        self.state.log_history.append({**metrics, "step": batches})
        return TrainOutput(batches, metrics["train_loss"], metrics)
