"""Every METHODS entry trains the tiny image CNN through the classification task: loss finite, trainable parameters
move, frozen ones stay, the budget (examples through forward+backward) stops the run; the task's quantities match
their definitions; the models have the shapes and blocks the methods rely on."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llm_unlearn.methods import METHODS
from llm_unlearn.tasks.classification import ClassificationTask


def _trainer(image_dirs, tmp_path, method, budget=1e7, **kw):
    from image_track.data import load_dataset_dir, splits
    from image_track.task import TASK, ImageUnlearnConfig

    ds, initial, retrain = image_dirs
    cfg = ImageUnlearnConfig(
        model_dir=initial,
        dataset_dir=ds,
        retrain_dir=retrain,
        output_dir=str(tmp_path / method),
        method=method,
        learning_rate=0.05,
        per_device_train_batch_size=8,
        max_grad_norm=0.0 if method == "ga" else 5.0,
        **kw,
    )
    cfg.validate()
    data = splits(*load_dataset_dir(ds))
    model = TASK.prepare_model(cfg)
    return TASK.build_trainer(cfg, model, data["forget"], data["retain"], budget), model


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_the_tiny_cnn(image_dirs, tmp_path, method):
    trainer, model = _trainer(image_dirs, tmp_path, method)
    trainer.args.max_steps = 3
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert trainable and changed, "nothing trained"
    assert changed <= trainable, f"frozen parameters moved: {sorted(changed - trainable)[:3]}"
    if method in ("cf_k", "eu_k"):  # k = 1: the head alone
        assert trainable == {"blocks.3.weight", "blocks.3.bias"}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_budget_in_examples_stops_within_one_step(image_dirs, tmp_path, method):
    trainer, _ = _trainer(image_dirs, tmp_path, method, budget=100.0)
    trainer.train()
    assert trainer.compute_tokens >= 100.0
    assert trainer.compute_tokens - 100.0 <= 3 * 8  # one step: at most forget + retain batches + a reference pass
    assert trainer.state.global_step < trainer.args.max_steps


def test_unlearn_stage_writes_safetensors_and_info(image_dirs, tmp_path):
    from image_track.models import load_model
    from image_track.task import ImageUnlearnConfig
    from llm_unlearn.stages.unlearn import main
    from llm_unlearn.files import read_json

    ds, initial, retrain = image_dirs
    out = main(
        ImageUnlearnConfig(
            model_dir=initial,
            dataset_dir=ds,
            retrain_dir=retrain,
            output_dir=str(tmp_path / "u"),
            method="neggrad_plus",
            budget=0.3,  # 0.1 of this tiny run buys less than one step of 2 x 32 examples: refused as degenerate
        )
    )
    info = read_json(out / "unlearn_info.json")
    ref = read_json(f"{retrain}/training_info.json")["compute_tokens"]
    assert ref == 2 * 144  # 2 epochs over the 144 retain images: examples through forward+backward
    assert info["compute_fraction"] == pytest.approx(info["compute_tokens"] / ref)
    assert 0.1 <= info["compute_fraction"] <= 0.1 + 2 * 64 / ref
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    load_model(out)


def test_classification_task_matches_definitions():
    from image_track.models import ModelConfig, build_model

    model = build_model(ModelConfig(arch="mlp", hidden=8), [1, 4, 4], 3, [0.5], [0.25], seed=0)
    task = model.unlearn_task
    g = torch.Generator().manual_seed(0)
    batch = {"pixel_values": torch.rand(5, 1, 4, 4, generator=g), "labels": torch.tensor([0, 1, 2, 1, 0])}
    logits = model(pixel_values=batch["pixel_values"]).logits
    ce = F.cross_entropy(logits, batch["labels"], reduction="none")
    assert torch.allclose(task.sequence_logps(model, batch), -ce)  # log p(y|x)
    assert torch.allclose(task.nll(model, batch), ce.mean())
    assert task.cost(batch) == 5.0 and task.lengths(batch).tolist() == [1] * 5
    lg, mask = task.logits(model, batch)
    assert lg.shape == (5, 3) and mask.all()
    assert torch.allclose(task.logits_nll(lg, batch, mask), ce.mean())
    h, m = task.hidden_view(torch.zeros(5, 7, 2, 3), batch)
    assert h.shape == (5, 6, 7) and m.shape == (5, 6)
    # NPO on class log-probabilities: at theta = theta_ref the forget term is (2 / beta) log 2
    from llm_unlearn.methods.npo import npo_loss

    lp = task.sequence_logps(model, batch)
    assert float(npo_loss(lp, lp, 0.1).detach()) == pytest.approx(2 / 0.1 * math.log(2))
    assert isinstance(task, ClassificationTask)


def test_resnet18_blocks_and_shapes():
    from image_track.models import ModelConfig, build_model

    model = build_model(ModelConfig(arch="resnet18", width=4), [3, 32, 32], 10, [0.5] * 3, [0.25] * 3, seed=0)
    out = model(pixel_values=torch.rand(2, 3, 32, 32), labels=torch.tensor([1, 2]))
    assert out.logits.shape == (2, 10) and out.loss is not None
    assert len(model.blocks) == 6  # stem, four stages, head
    assert model.blocks[-1][-1].in_features == 32  # 8 x width
    a = build_model(ModelConfig(arch="resnet18", width=4), [3, 32, 32], 10, [0.5] * 3, [0.25] * 3, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), a.parameters()))  # seeded initialisation


def test_crop_flip_keeps_shape_and_is_seeded():
    from llm_unlearn.tasks.classification import random_crop_flip

    x = torch.rand(6, 3, 8, 8)
    a = random_crop_flip(x, torch.Generator().manual_seed(1))
    b = random_crop_flip(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    # zero padding 0 and no flip is the identity
    assert torch.equal(random_crop_flip(x, torch.Generator().manual_seed(1), padding=0, flip=False), x)
