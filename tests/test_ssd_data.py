"""SSD's data importance []_D comes from real batches of the whole training set D = retain + forget: on hand-built
gradients its value is the expectation over random batches of D (which keeps the spread in how many forget examples a
batch holds), and it selects other coordinates than a batch mixed in the proportion p would; the budget charges every
batch that went through the model; the LM and the image track both run it."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from helpers import make_unlearn_trainer
from llm_unlearn.methods.base import ForgetRetainCollator
from llm_unlearn.methods.ssd import SSDConfig, SSDTrainer, seeded_batches

# A linear "model" with loss mean(x @ w): the gradient of a batch is the mean of its x. Every example has x_0 = 1
# (a coordinate all of D uses: gradient 1 in every batch), only forget examples have x_1 = G (a coordinate only the
# forget set uses: gradient G k / B in a batch of D holding k forget examples).
G = 2.0
N_RETAIN, N_FORGET, B = 28, 4, 8
N = N_RETAIN + N_FORGET
P = N_FORGET / N  # 1/8


class _LinearTask:
    name = "linear"

    def nll(self, model, batch):
        return (batch["x"] @ model.w).mean()

    def cost(self, batch):
        return float(batch["x"].shape[0])

    def model_inputs(self, batch):
        return {"x": batch["x"]}

    def collator(self, pad_token_id=None):
        return lambda items: {"x": torch.stack([it["x"] for it in items])}


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.5, 0.5]))
        self.unlearn_task = _LinearTask()

    def forward(self, x):
        return x @ self.w


def _linear_trainer(tmp_path, alpha: float, steps: int):
    from llm_unlearn.methods import METHODS

    task = _LinearTask()
    retain = [{"x": torch.tensor([1.0, 0.0])} for _ in range(N_RETAIN)]
    forget = [{"x": torch.tensor([1.0, G])} for _ in range(N_FORGET)]

    args = METHODS["ssd"].config_cls(
        output_dir=str(tmp_path / "t"), per_device_train_batch_size=B, max_steps=steps, seed=0, report_to="none",
        use_cpu=True, disable_tqdm=True, dataloader_pin_memory=False, alpha=alpha, lam=1.0,
    )  # fmt: skip
    model = _Linear()
    trainer = SSDTrainer(
        model=model,
        args=args,
        forget_dataset=forget,
        retain_dataset=retain,
        data_collator=ForgetRetainCollator(collate=task.collator()),
        task=task,
    )
    assert trainer.method_cfg == SSDConfig(alpha=alpha, lam=1.0)
    return trainer, model


def _expected_data_importance_1() -> float:
    """E over the batches of a seeded pass (a uniformly random partition of D into batches of B) of (G k / B)^2, with
    k ~ Hypergeometric(N, N_FORGET, B): G^2 (p^2 + p (1 - p) (N - B) / (B (N - 1)))."""
    return G**2 * (P**2 + P * (1 - P) * (N - B) / (B * (N - 1)))


def test_data_importance_is_that_of_real_batches_and_changes_the_selection(tmp_path):
    old_rule = (P * G) ** 2  # gradient p g_f + (1 - p) g_r of a "mixed" batch, squared: 0.0625
    new_rule = _expected_data_importance_1()  # 0.1048: 1.7x more, the p (1 - p) / B term
    assert new_rule / old_rule > 1.5
    # []_f of coordinate 1 is G^2 = 4. alpha = 50 separates the two rules: 50 * 0.0625 < 4 < 50 * 0.1048.
    trainer, model = _linear_trainer(tmp_path, alpha=50.0, steps=800)  # 200 passes over D
    result = trainer.train()
    assert result.metrics["ssd_fisher_batches"] == 800
    w = model.w.detach()
    assert float(w[0]) == 0.5, "a coordinate every example uses was dampened"
    assert float(w[1]) == 0.5, "[]_D is too small: the batch-to-batch spread of forget examples was dropped"
    # a smaller alpha selects it under both rules, and dampens it by lam []_D / []_f
    trainer, model = _linear_trainer(tmp_path, alpha=30.0, steps=800)
    assert trainer.train().metrics["ssd_dampened"] == 1
    assert float(model.w.detach()[1]) == pytest.approx(0.5 * new_rule / G**2, rel=0.1)


def test_importances_match_their_expectations(tmp_path):
    trainer, model = _linear_trainer(tmp_path, alpha=10.0, steps=800)
    params = [model.w]
    imp_d, imp_f, steps, _ = trainer.fisher_importances(model, params)
    assert steps == 800
    assert float(imp_d[0][0]) == pytest.approx(1.0)  # gradient 1 in every batch
    assert float(imp_f[0][0]) == pytest.approx(1.0)
    assert float(imp_f[0][1]) == pytest.approx(G**2)  # every forget batch: mean of G
    assert float(imp_d[0][1]) == pytest.approx(_expected_data_importance_1(), rel=0.1)
    assert trainer.compute_tokens == pytest.approx(800 * (B + N_FORGET))  # examples of the D and D_f batches


def test_seeded_batches_cover_each_pass_and_split_between_processes():
    one = seeded_batches(10, 4, seed=3, stream=0)
    first = [next(one) for _ in range(3)]
    assert [len(b) for b in first] == [4, 4, 2] and sorted(sum(first, [])) == list(range(10))
    again = seeded_batches(10, 4, seed=3, stream=0)
    assert [next(again) for _ in range(3)] == first  # from the seed alone
    assert first != [next(seeded_batches(10, 4, 3, 1)) for _ in range(3)]  # another stream, another order
    ranks = [seeded_batches(10, 4, 3, 0, rank=r, world=2) for r in range(2)]
    assert [next(ranks[0]), next(ranks[1]), next(ranks[0])] == first
    # fewer batches in a pass than processes: every process still gets batches (from later passes)
    lone = [seeded_batches(3, 4, 0, 0, rank=r, world=2) for r in range(2)]
    assert sorted(next(lone[1])) == [0, 1, 2]


def _example_key(batch: dict, i: int) -> tuple:
    return tuple(batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist())


def test_lm_budget_charges_every_batch_and_d_batches_hold_the_whole_training_set(
    tiny_dir, gaussian_dir, tmp_path, monkeypatch
):
    from llm_unlearn.tasks.causal_lm import batch_tokens

    trainer, _ = make_unlearn_trainer(tiny_dir, gaussian_dir, tmp_path, "ssd", False)
    forget, retain = trainer.train_dataset.forget, trainer.train_dataset.retain
    bs = trainer.args.train_batch_size
    steps = math.ceil((len(forget) + len(retain)) / bs)  # one pass over D
    trainer.args.max_steps = steps
    seen = []
    nll = trainer.task.nll

    def recording_nll(model, batch):
        seen.append({k: v.detach().clone() for k, v in batch.items()})
        return nll(model, batch)

    monkeypatch.setattr(trainer.task, "nll", recording_nll)
    result = trainer.train()
    assert result.global_step == steps and len(seen) == 2 * steps
    # charged compute = the tokens of every batch that went through forward+backward, D batches included
    assert trainer.compute_tokens == sum(batch_tokens(b) for b in seen)
    data, forget_batches = seen[0::2], seen[1::2]  # each step: a batch of D, then a batch of D_f
    assert all(b["input_ids"].shape[0] <= bs for b in seen)

    def keys(split):
        return Counter(tuple(x) for x in split["input_ids"])

    got = Counter(_example_key(b, i) for b in data for i in range(b["input_ids"].shape[0]))
    assert got == keys(retain) + keys(forget), "one pass of D batches is not the whole training set, once"
    forget_keys = keys(forget)
    assert all(_example_key(b, i) in forget_keys for b in forget_batches for i in range(b["input_ids"].shape[0]))
    mixed = [b for b in data if any(_example_key(b, i) in forget_keys for i in range(b["input_ids"].shape[0]))]
    assert 0 < len(mixed) < len(data)  # shuffled: forget examples spread over D batches, not all at the end

    # the budget stops it within one step, and the same seed gives the same importances
    runs = []
    for _ in range(2):
        trainer, model = make_unlearn_trainer(tiny_dir, gaussian_dir, tmp_path, "ssd", False, budget_tokens=400.0)
        trainer.train()
        assert 400.0 <= trainer.compute_tokens < 400.0 + 2 * bs * 256
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_image_track_ssd_runs_on_real_batches(image_dirs, tmp_path):
    from image_track.data import load_dataset_dir, splits
    from image_track.task import TASK, ImageUnlearnConfig

    ds, initial, retrain = image_dirs
    cfg = ImageUnlearnConfig(
        model_dir=initial, dataset_dir=ds, retrain_dir=retrain, output_dir=str(tmp_path / "ssd"), method="ssd",
        per_device_train_batch_size=8,
    )  # fmt: skip
    cfg.validate()
    data = splits(*load_dataset_dir(ds))
    model = TASK.prepare_model(cfg)
    trainer = TASK.build_trainer(cfg, model, data["forget"], data["retain"], 1e7)
    n = len(data["forget"]) + len(data["retain"])
    trainer.args.max_steps = math.ceil(n / 8)  # one pass over D
    seen = []
    collate = trainer.data_collator

    def recording_collate(items):
        out = collate(items)
        seen.append(out)
        return out

    trainer.data_collator = recording_collate
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    result = trainer.train()
    assert math.isfinite(result.training_loss) and result.metrics["ssd_dampened"] > 0
    assert any(not torch.equal(p.detach(), before[k]) for k, p in model.named_parameters())
    data_batches = [b["retain"] for b in seen if "retain" in b]
    assert sorted(torch.cat([b["index"] for b in data_batches]).tolist()) == sorted(
        data["retain"].index.tolist() + data["forget"].index.tolist()
    )
    halves = [b[h] for b in seen for h in ("retain", "forget") if h in b]
    assert len(halves) == 2 * result.global_step
    assert trainer.compute_tokens == sum(float(h["labels"].shape[0]) for h in halves)  # examples of every batch
