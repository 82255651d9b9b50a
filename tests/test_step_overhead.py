"""The unlearning step's shortcuts (bench/unlearn_step.py) compute what HF's own path computes: costs counted on the
CPU by the collator, clipping over the trainable parameters only, the GC frozen during train(), and the budget
decision of one process."""

from __future__ import annotations

import copy
import gc

import pytest
import torch

from helpers import make_unlearn_trainer
from llm_unlearn.methods.base import CostedBatch, ForgetRetainCollator


def _trainer(tiny_dir, gaussian_dir, tmp_path, method="gd", **kw):
    torch.manual_seed(0)  # LoRA's A matrices come from the global RNG: two trainers built alike start alike
    trainer, model = make_unlearn_trainer(tiny_dir, gaussian_dir, tmp_path, method, True, **kw)
    trainer.args.max_steps = 3
    return trainer, model


def _lora(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["gd", "npo"])  # GD reads the retain half only, NPO both and a reference pass
def test_collator_costs_match_the_tasks_count(tiny_dir, gaussian_dir, tmp_path, method):
    """The costs the collator counts on the CPU give the budget the same tokens as counting the model's batches."""
    trainer, _ = _trainer(tiny_dir, gaussian_dir, tmp_path, method)
    assert trainer.data_collator.cost is not None
    batch = next(iter(trainer.get_train_dataloader()))
    for half in ("retain", "forget") if trainer.reads_forget else ("retain",):
        assert batch["costs"][half] == trainer.task.cost(batch[half])
    trainer.train()
    counted_by_collator = trainer.compute_tokens

    plain, _ = _trainer(tiny_dir, gaussian_dir, tmp_path / "plain", method)
    plain.data_collator.cost = None  # every batch recounted by the task, on the batch the model received
    plain.train()
    assert "costs" not in next(iter(plain.get_train_dataloader()))
    assert counted_by_collator == plain.compute_tokens > 0


def test_charge_uses_the_batch_cost_only_when_it_has_one(tiny_dir, gaussian_dir, tmp_path):
    trainer, _ = _trainer(tiny_dir, gaussian_dir, tmp_path)
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 3:] = 0
    batch = {"input_ids": torch.zeros(2, 5, dtype=torch.long), "attention_mask": mask}
    trainer.compute_tokens = 0.0
    trainer.charge(batch)
    assert trainer.compute_tokens == 8.0  # the task's count of a plain dict
    costed = CostedBatch(batch)
    costed.cost = 100.0
    trainer.charge(costed, backward=False)
    assert trainer.compute_tokens == pytest.approx(8.0 + 100.0 / 3)
    assert dict(costed) == batch  # to the model, a plain dict


def test_trainer_does_not_change_the_callers_collator(tiny_dir, gaussian_dir, tmp_path):
    from llm_unlearn.methods.base import UnlearnTrainer

    collator = ForgetRetainCollator(pad_token_id=0)
    trainer, _ = _trainer(tiny_dir, gaussian_dir, tmp_path)
    pairs = trainer.train_dataset
    new = UnlearnTrainer(model=trainer.model, args=trainer.args, forget_dataset=pairs.forget,
                         retain_dataset=pairs.retain, data_collator=collator)  # fmt: skip
    assert collator.cost is None and new.data_collator.cost is not None


def test_clipping_trainable_only_gives_hfs_norm_and_update(tiny_dir, gaussian_dir, tmp_path):
    """The same grad norm, and bit-identical adapters after a few steps, as HF's clipping over all parameters."""
    from transformers import Trainer

    trainer, model = _trainer(tiny_dir, gaussian_dir, tmp_path, max_grad_norm=1e-3)  # always clips
    norms, hf_norms = [], []
    ours = trainer._clip_grad_norm
    trainer._clip_grad_norm = lambda m: norms.append(ours(m)) or norms[-1]
    init = copy.deepcopy(_lora(model))
    trainer.train()
    assert len(trainer._clip_params) == len(init) < len(list(model.parameters()))

    hf, hf_model = _trainer(tiny_dir, gaussian_dir, tmp_path / "hf", max_grad_norm=1e-3)
    assert all(torch.equal(v, _lora(hf_model)[k]) for k, v in init.items())  # same seeded LoRA init
    hf._clip_grad_norm = lambda m: hf_norms.append(Trainer._clip_grad_norm(hf, m)) or hf_norms[-1]
    hf.train()
    assert len(norms) == len(hf_norms) == 3 and all(float(a) > 1e-3 for a in norms)
    assert [float(a) for a in norms] == [float(b) for b in hf_norms]
    after, hf_after = _lora(model), _lora(hf_model)
    assert all(torch.equal(after[k], hf_after[k]) for k in after)


def test_train_leaves_the_gc_as_it_found_it(tiny_dir, gaussian_dir, tmp_path):
    trainer, _ = _trainer(tiny_dir, gaussian_dir, tmp_path)
    frozen_during = []
    step = trainer.training_step
    trainer.training_step = lambda *a, **k: frozen_during.append(gc.get_freeze_count()) or step(*a, **k)
    assert gc.get_freeze_count() == 0
    trainer.train()
    assert all(n > 0 for n in frozen_during) and gc.get_freeze_count() == 0

    # Objects someone else froze stay frozen: train() then leaves the GC alone.
    trainer, _ = _trainer(tiny_dir, gaussian_dir, tmp_path / "again")
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        trainer.train()
        assert gc.get_freeze_count() > before / 2  # (less only by the frozen objects that died meanwhile)
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("budget", [1.0, 500.0, 1e9])
def test_single_process_budget_decision_matches_the_collective(tiny_dir, gaussian_dir, tmp_path, budget):
    """One process skips the all-reduce; summing through the accelerator's reduce decides the same stop."""
    from llm_unlearn.methods.base import BudgetCallback

    trainer, _ = _trainer(tiny_dir, gaussian_dir, tmp_path)
    trainer.budget_tokens = budget
    acc = trainer.accelerator
    assert acc.num_processes == 1
    for spent in (0.0, 0.5, 499.0, 500.0, 501.25, 1e9):
        trainer.compute_tokens = spent
        reduced = float(acc.reduce(torch.tensor([spent], dtype=torch.float64), reduction="sum").item())
        control = BudgetCallback(trainer).on_step_end(trainer.args, trainer.state, copy.copy(trainer.control))
        assert bool(control.should_training_stop) == (reduced >= budget) == (spent >= budget)


def test_training_arguments_skip_per_step_work_nobody_reads(tiny_dir, gaussian_dir, tmp_path):
    trainer, _ = _trainer(tiny_dir, gaussian_dir, tmp_path)
    assert trainer.args.logging_nan_inf_filter is False
    assert trainer.args.average_tokens_across_devices is False
    assert trainer.args.dataloader_num_workers == 0
    overridden, _ = _trainer(
        tiny_dir, gaussian_dir, tmp_path / "o", trainer_args={"logging_nan_inf_filter": True}
    )  # still the user's to choose
    assert overridden.args.logging_nan_inf_filter is True
