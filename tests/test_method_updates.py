"""How updates are applied, beyond the loss formulas: NGD's noise (its scale under any optimizer), learning-rate
schedules that follow the compute budget, and SCRUB's whole-epoch max/min phases. Each of these failed on the code
before issue 11 (NGD's noise went through Adam's normalisation; a linear schedule stopped half way; SCRUB's max
steps were single optimizer steps touching a few forget examples)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_unlearn_trainer

from llm_unlearn.methods.ngd import PAPER_SIGMA, step_generator
from llm_unlearn.methods.scrub import scrub_schedule

LR = 1e-2


def _one_step(tiny_dir, gaussian_dir, tmp_path, method, args, optim, seed=0):
    trainer, model = make_unlearn_trainer(
        tiny_dir,
        gaussian_dir,
        tmp_path / f"{method}-{args}-{optim}",
        method,
        False,
        args,
        lr=LR,
        trainer_args={"optim": optim},
        seed=seed,
    )
    trainer.args.max_steps = 1
    trainer.train()
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------------------------------------- NGD


@pytest.mark.parametrize("optim", ["adamw_torch", "sgd"])
def test_ngd_noise_is_lr_times_sigma_whatever_the_optimizer(tiny_dir, gaussian_dir, tmp_path, optim):
    """theta <- theta - eta (grad + n): after one step NGD's weights minus GD's (same data, same start) are exactly
    -lr * sigma * z, z the step's regenerated N(0, I) draw, so the displacement grows linearly with sigma. Under
    AdamW the old code (noise added to the gradient before Adam's normalisation) gave displacement ratio 1.00
    between sigma 0.01 and 0.1."""
    gd = _one_step(tiny_dir, gaussian_dir, tmp_path, "gd", {}, optim)
    z = None
    displacement = {}
    for sigma in (0.01, 0.1):
        ngd = _one_step(tiny_dir, gaussian_dir, tmp_path, "ngd", {"sigma": sigma}, optim)
        assert ngd.keys() == gd.keys()
        if z is None:  # the noise of step 0, in parameter order, as NGD draws it
            g = step_generator(0, 0, "cpu")
            z = {n: torch.randn(t.shape, generator=g, dtype=torch.float32) for n, t in gd.items()}
        for n in gd:
            torch.testing.assert_close(ngd[n] - gd[n], -LR * sigma * z[n], rtol=0, atol=1e-6 + 1e-3 * LR * sigma)
        displacement[sigma] = torch.cat([(ngd[n] - gd[n]).flatten() for n in gd]).norm()
    assert float(displacement[0.1] / displacement[0.01]) == pytest.approx(10.0, rel=1e-3)


def test_ngd_default_sigma_is_the_papers():
    from llm_unlearn.methods.ngd import NGDConfig

    assert NGDConfig().sigma == PAPER_SIGMA and PAPER_SIGMA**2 == pytest.approx(1e-7)


def test_ngd_noise_replays_from_seed_and_step():
    a = torch.randn(5, generator=step_generator(3, 7, "cpu"))
    assert torch.equal(a, torch.randn(5, generator=step_generator(3, 7, "cpu")))
    assert not torch.equal(a, torch.randn(5, generator=step_generator(3, 8, "cpu")))


# -------------------------------------------------------------------------------------------- budget schedules


def _lr_curve(trainer):
    return [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_reaches_its_end_when_the_budget_is_spent(tiny_dir, gaussian_dir, tmp_path, schedule):
    """The learning rate follows the fraction of the budget spent, not the ``max_steps`` upper bound: a linear or
    cosine decay ends at 0 exactly when the budget is spent, and each step's rate is the schedule at the budget
    fraction spent before it. (Before: spread over the upper bound, the rate at the budget's end was ~half its
    peak.)"""
    budget = 6000.0
    trainer, _ = make_unlearn_trainer(
        tiny_dir,
        gaussian_dir,
        tmp_path,
        "gd",
        True,
        budget_tokens=budget,
        lr=LR,
        lr_scheduler_type=schedule,
        warmup_ratio=0.1,
        logging_steps=1,
    )
    spent = []
    charge = trainer.charge

    def recording(batch, backward=True):
        charge(batch, backward)
        spent.append(trainer.compute_tokens)

    trainer.charge = recording
    trainer.train()
    steps = trainer.state.global_step
    assert 5 <= steps < trainer.args.max_steps - 10  # the upper bound is far beyond what the budget buys
    lrs = _lr_curve(trainer)
    assert len(lrs) == steps
    fractions = [0.0] + [s / budget for s in spent[:-1]]  # budget spent before each step (GD charges once a step)

    def expected(f):
        if f < 0.1:
            return LR * f / 0.1
        x = (f - 0.1) / 0.9
        return LR * max(0.0, 1 - x) if schedule == "linear" else LR * 0.5 * (1 + math.cos(math.pi * x))

    for lr, f in zip(lrs, fractions):
        assert lr == pytest.approx(expected(min(f, 1.0)), rel=1e-3, abs=LR * 2e-5)  # logs keep 4 digits
    assert trainer.compute_tokens >= budget
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # at the budget's end
    assert lrs[-1] < 0.25 * LR


def test_schedules_that_cannot_follow_a_budget_are_refused():
    from llm_unlearn.configs import ConfigError
    from llm_unlearn.stages.unlearn import UnlearnConfig

    with pytest.raises(ConfigError, match="inverse_sqrt.*choose from"):
        UnlearnConfig(lr_scheduler_type="inverse_sqrt").validate()
    with pytest.raises(ConfigError, match="warmup_ratio"):
        UnlearnConfig(warmup_ratio=5).validate()


# ---------------------------------------------------------------------------------------------------- SCRUB


def test_scrub_schedule_is_whole_epochs():
    """Round k < msteps: a max epoch over the whole forget set, then a min epoch over the retain set; then min
    epochs only. Every example of a phase's set appears in it; the last step is filled by cycling."""
    n_f, n_r, per_step = 10, 23, 4
    sched = scrub_schedule(n_f, n_r, per_step, msteps=2, n_steps=40, seed=0)
    m, r = math.ceil(n_f / per_step), math.ceil(n_r / per_step)
    kinds = [k for k, _ in sched]
    assert kinds == (["max"] * m + ["min"] * r) * 2 + ["min"] * (40 - 2 * (m + r))
    first_max = torch.tensor([int(i) for _, idx in sched[:m] for i in idx])
    assert set(first_max.tolist()) == set(range(n_f)) and len(first_max) == m * per_step
    first_min = {int(i) for _, idx in sched[m : m + r] for i in idx}
    assert first_min == set(range(n_r))
    assert all(len(idx) == per_step for _, idx in sched)
    # rounds reshuffle, and the order depends only on the seed
    assert not all((a == b).all() for (_, a), (_, b) in zip(sched[:m], sched[m + r : 2 * m + r]))
    again = scrub_schedule(n_f, n_r, per_step, msteps=2, n_steps=40, seed=0)
    assert all((a == b).all() for (_, a), (_, b) in zip(sched, again))
    assert [k for k, _ in scrub_schedule(n_f, n_r, per_step, 0, 10, 0)] == ["min"] * 10


def test_scrub_max_epoch_covers_the_whole_forget_set(tiny_dir, gaussian_dir, tmp_path):
    """The trainer's batches follow the schedule: the first ceil(|D_f| / B) steps are max steps whose forget batches
    hold every forget example, then min steps on retain batches; each step charges the pass it ran (+ the teacher)."""
    from llm_unlearn.methods.base import FORWARD_ONLY_COST
    from llm_unlearn.tasks.causal_lm import batch_tokens

    trainer, _ = make_unlearn_trainer(tiny_dir, gaussian_dir, tmp_path, "scrub", True, {"msteps": 1})
    n_f = len(trainer.train_dataset.forget)
    m = math.ceil(n_f / 4)
    trainer.args.max_steps = m + 3
    seen, compute_loss = [], trainer.compute_loss

    def recording(model, inputs, *a, **kw):
        half = "forget" if "forget" in inputs else "retain"
        assert set(inputs) - {"costs"} == {half}  # a batch is all forget or all retain
        seen.append((half, inputs[half]["index"].tolist(), batch_tokens(inputs[half])))
        return compute_loss(model, inputs, *a, **kw)

    trainer.compute_loss = recording
    trainer.train()
    assert [h for h, _, _ in seen] == ["forget"] * m + ["retain"] * 3
    forget_ids = trainer.train_dataset.forget["index"]
    assert {i for h, ids, _ in seen[:m] for i in ids} == set(forget_ids)
    assert trainer.compute_tokens == pytest.approx(sum(t for _, _, t in seen) * (1 + FORWARD_ONLY_COST))
