"""SSD, selective synaptic dampening (Foster et al. 2024): no training. Diagonal Fisher importances on the training
data ([]_D) and on the forget set ([]_f); every parameter with []_f,i > alpha []_D,i is scaled by
min(lambda []_D,i / []_f,i, 1). Edits base weights, so full-parameter only.

Both importances are, as in the authors' code, means over batches of the squared gradient of the batch-mean loss:
[]_D over real batches of the whole training set D = retain + forget, each of B examples drawn from the union, and
[]_f over batches of B forget examples. How a batch of D is drawn matters: for a coordinate that only forget examples
move (gradient g on each of them, 0 on retain examples), a batch holding k forget examples has gradient (k / B) g,
and k varies from batch to batch (hypergeometric, mean p B with p = |D_f| / |D|), so
E[(k / B)^2] g^2 = (p^2 + p (1 - p) (|D| - B) / (B (|D| - 1))) g^2, about (p^2 + p (1 - p) / B) g^2. Mixing a retain
batch and a forget batch in the proportion p, as this file did before, keeps only the p^2 g^2 (4x less at p = 0.02,
B = 16): the threshold alpha would then not mean what it means in the paper. Averaging the squared gradients of pure
retain and pure forget batches with equal weights is wrong the other way (then []_D >= []_f / 2 and nothing with
alpha >= 2 is ever selected).

The compute is the Fisher passes, every one charged to the budget. Each step draws one batch of D and one batch of D_f
and runs forward+backward on both; steps run until the budget is spent, or ``max_steps``, or (without ``max_steps``)
one pass over D, as the authors do; then the weights are dampened once. The batches come from seeded permutations
(seed ``args.seed``; one stream for D, one for D_f; a fresh permutation per pass, the last batch of a pass may be
short; with several processes, batch j of a stream goes to process j mod n), never from the global RNG, so a run is
deterministic from its seed. D is shuffled while the authors' loader reads the retain set and then the forget set in
order (same importances after one whole pass): under a budget that ends before a whole pass, an ordered D would show
[]_D no forget example at all and every forget-specific weight would be zeroed."""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers.trainer_utils import TrainOutput

from ..configs import ConfigError
from ..training import DivergedError, all_ranks_finite, all_ranks_sum
from .base import UnlearnTrainer, costed
from ..registry import register_method


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


def seeded_batches(n: int, batch_size: int, seed: int, stream: int, rank: int = 0, world: int = 1):
    """Endless index batches over ``range(n)``: pass e is a permutation seeded by (seed, stream, e) alone, cut into
    batches of ``batch_size`` (the last one of a pass may be shorter); batch j of the whole stream goes to process
    ``j % world``."""
    j = 0
    for epoch in itertools.count():
        state = np.random.SeedSequence([int(seed) % 2**63, stream, epoch]).generate_state(2, dtype=np.uint32)
        g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        order = torch.randperm(n, generator=g).tolist()
        for start in range(0, n, batch_size):
            if j % world == rank:
                yield order[start : start + batch_size]
            j += 1


@register_method(
    "ssd",
    config=SSDConfig,
    summary="selective synaptic dampening (Fisher ratio, no training)",
    supports_peft=False,
)
class SSDTrainer(UnlearnTrainer):
    """Fisher passes over real batches of D and of D_f (see the module docstring), then one dampening; no optimizer."""

    _DATA, _FORGET = 0, 1  # stream ids of the seeded batch orders
    nests_budgets = False  # the dampening happens once, from the Fisher passes of the whole budget

    def _batches(self, parts: list, half: str, stream: int):
        """Endless collated batches over the concatenation of ``parts``, in the form the paired-batch collator gives
        (``{half: batch, "costs": {half: cost}}``): the collator pads and counts the cost on the CPU."""
        offsets = list(itertools.accumulate(len(x) for x in parts))
        acc = self.accelerator
        for idx in seeded_batches(
            offsets[-1], self.args.train_batch_size, self.args.seed, stream, acc.process_index, acc.num_processes
        ):
            items = []
            for i in idx:
                k = bisect.bisect_right(offsets, i)
                items.append({half: parts[k][i - (offsets[k - 1] if k else 0)]})
            yield self.data_collator(items)

    def _fisher_pass(self, model, params, inputs: dict, half: str, acc: list[torch.Tensor]) -> torch.Tensor:
        """Forward+backward of the batch-mean loss of one batch (charged to the budget); adds its squared gradient to
        ``acc``; returns the loss."""
        inputs = self._prepare_inputs(inputs)
        batch = costed(self.task.model_inputs(inputs[half]), inputs.get("costs", {}).get(half))
        model.zero_grad(set_to_none=True)
        nll = self.nll(model, batch)
        nll.backward()
        for a, p in zip(acc, params):
            if p.grad is not None:
                a.add_(p.grad.float().square())
        return nll.detach()

    def fisher_importances(self, model, params) -> tuple[list[torch.Tensor], list[torch.Tensor], int, float]:
        """([]_D, []_f, steps, summed loss of the D batches): the mean squared batch gradients over ``steps`` steps of
        one D batch and one D_f batch each, averaged over processes."""
        imp_d = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        imp_f = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        forget, retain = self.train_dataset.forget, self.train_dataset.retain
        if self.args.max_steps > 0:
            limit = self.args.max_steps
        else:  # one pass over D, split between the processes
            n_batches = math.ceil((len(retain) + len(forget)) / self.args.train_batch_size)
            limit = math.ceil(n_batches / self.accelerator.num_processes)
        # The collator's halves are only labels here: the D batches travel as "retain" though they hold the union.
        data = self._batches([retain, forget], "retain", self._DATA)
        forget_batches = self._batches([forget], "forget", self._FORGET)
        steps, loss_sum = 0, 0.0
        while steps < limit:
            # Each process charges only its own batches: the budget is checked on the sum over processes (collective,
            # so every rank stops at the same step), as BudgetCallback does for the trained methods.
            if all_ranks_sum(self.accelerator, self.compute_tokens) >= self.budget_tokens:
                break
            d_nll = self._fisher_pass(model, params, next(data), "retain", imp_d)
            f_nll = self._fisher_pass(model, params, next(forget_batches), "forget", imp_f)
            # collective: a rank stopping alone would hang the rest
            if not all_ranks_finite(self.accelerator, torch.stack([d_nll, f_nll])):
                raise DivergedError(steps, float(d_nll + f_nll))
            loss_sum += float(d_nll)
            steps += 1
        model.zero_grad(set_to_none=True)
        if self.accelerator.num_processes > 1:  # every rank must dampen the same entries
            imp_d, imp_f = self.accelerator.reduce([imp_d, imp_f], reduction="mean")
        for a in imp_d + imp_f:
            a.div_(max(steps, 1))
        return imp_d, imp_f, steps, loss_sum

    def train(self, *args, **kwargs) -> TrainOutput:
        model = self.model
        model.eval()  # deterministic Fisher: no dropout
        params = [p for p in model.parameters() if p.requires_grad]
        imp_d, imp_f, steps, loss_sum = self.fisher_importances(model, params)
        dampened = ssd_dampen_(params, imp_d, imp_f, self.method_cfg.alpha, self.method_cfg.lam)
        self.state.global_step = self.state.max_steps = steps
        metrics = {"train_loss": loss_sum / max(steps, 1), "ssd_fisher_batches": steps, "ssd_dampened": dampened}
        self.state.log_history.append({**metrics, "step": steps})
        return TrainOutput(steps, metrics["train_loss"], metrics)
