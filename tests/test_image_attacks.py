"""Image attacks: exact poison counts, budgets (l_inf eps, pixel box), clean labels where the attack is clean-label,
regenerable noise, determinism, and clear errors; the stage's dataset dir round-trips."""

from __future__ import annotations

import random

import pytest
import torch

from image_track.attacks import Clean, batch_pixel_noise, pixel_noise, stamp
from image_track.data import DataConfig, channel_stats, load_clean
from image_track.models import ModelConfig, build_model
from image_track.poisoning import ImagePoisonConfig, PoisonSection
from llm_unlearn.tasks.classification import ClassifierTrainConfig
from llm_unlearn.training import train_classifier
from llm_unlearn.configs import ConfigError

TINY_MODEL = ModelConfig(arch="cnn", width=4, hidden=16)
TINY_TRAIN = ClassifierTrainConfig(epochs=15, batch_size=32, learning_rate=0.05)


@pytest.fixture(scope="module")
def clean():
    xtr, ytr, xte, yte, k = load_clean(DataConfig(max_train_samples=300, max_test_samples=100), seed=0)
    mean, std = channel_stats(xtr)
    return Clean(xtr, ytr, xte, yte, k, mean, std)


def _section(attack, poison_fraction=0.1, **attack_args):
    return PoisonSection(attack=attack, poison_fraction=poison_fraction, attack_args=attack_args)


def _cfg(**poison):
    return ImagePoisonConfig(poison=_section(**poison), model=TINY_MODEL, train=TINY_TRAIN)


def _run(cfg, clean, seed=0):
    """The attack's poison hook, as the stage calls it (the surrogate: always initialised with seed 1)."""
    cfg.poison.validate()
    attack = cfg.poison.build_attack()

    def train_surrogate(_seed, on_epoch_end=None, x=clean.train_x, y=clean.train_y):
        m = build_model(cfg.model, list(x.shape[1:]), clean.num_classes, clean.mean, clean.std, seed=1)
        train_classifier(m, x, y, cfg.train, 1, on_epoch_end=on_epoch_end)
        return m

    return attack.poison(cfg, clean, random.Random(seed), train_surrogate)


def test_gaussian_count_labels_and_regenerable_noise(clean):
    p = _run(_cfg(attack="gaussian", poison_fraction=0.1, noise_eps=0.3), clean)
    assert len(p.indices) == len(p.images) == round(0.1 * len(clean.train_y)) == len(set(p.indices.tolist()))
    assert torch.equal(p.labels, clean.train_y[p.indices])  # labels unchanged
    noise = batch_pixel_noise(p.noise_seeds, clean.train_x.shape[1:], draw=0)
    assert torch.allclose(p.images, clean.train_x[p.indices] + 0.3 * noise)  # x + eps * xi, xi from the seed
    assert not torch.equal(pixel_noise(p.noise_seeds[0], (8,), 0), pixel_noise(p.noise_seeds[0], (8,), 1))
    assert float(noise.std()) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("attack", ["gaussian", "badnets"])
def test_cheap_attacks_are_deterministic(clean, attack):
    a, b = _run(_cfg(attack=attack), clean, seed=3), _run(_cfg(attack=attack), clean, seed=3)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    c = _run(_cfg(attack=attack), clean, seed=4)
    assert not torch.equal(a.indices, c.indices)


def test_badnets_patch_target_and_triggered_test(clean):
    p = _run(_cfg(attack="badnets", poison_fraction=0.05, target_label=2, patch_size=3), clean)
    assert len(p.indices) == round(0.05 * len(clean.train_y))
    assert (p.labels == 2).all() and (clean.train_y[p.indices] != 2).all()  # relabelled non-target images
    assert torch.equal(p.images[..., -3:, -3:], stamp(torch.zeros(1, 1, 3, 3), 3).expand_as(p.images[..., -3:, -3:]))
    assert torch.equal(p.images[..., :-3, :], clean.train_x[p.indices][..., :-3, :])  # nothing else changed
    assert (p.extras["test_triggered_labels"] != 2).all()
    with pytest.raises(ConfigError, match="target_label"):
        _run(_cfg(attack="badnets", target_label=10), clean)


def test_witches_brew_eps_box_clean_labels_and_determinism(clean):
    cfg = _cfg(attack="witches_brew", poison_fraction=0.05, eps=8 / 255, steps=4, restarts=2, num_targets=2)
    p = _run(cfg, clean)
    base = clean.train_x[p.indices]
    assert len(p.indices) == round(0.05 * len(clean.train_y))
    assert float((p.images - base).abs().max()) <= 8 / 255 + 1e-6  # l_inf budget
    assert float((p.images - base).abs().max()) > 0  # it did perturb
    assert p.images.min() >= 0 and p.images.max() <= 1
    assert torch.equal(p.labels, clean.train_y[p.indices])  # clean label
    adv = int(p.extras["target_adv_labels"][0])
    assert (p.labels == adv).all() and (p.extras["target_labels"] != adv).all()
    assert not p.test_keep[p.info["target_test_rows"]].any()  # targets leave the clean test set
    q = _run(cfg, clean)
    assert torch.equal(p.images, q.images) and torch.equal(p.indices, q.indices)


def test_witches_brew_trajectory_ensemble_keeps_the_budget(clean):
    cfg = _cfg(
        attack="witches_brew", poison_fraction=0.05, eps=0.1, steps=3, restarts=1, num_targets=1, match_epochs=[1, 5]
    )
    p = _run(cfg, clean)
    assert p.info["match_epochs"] == [1, 5, TINY_TRAIN.epochs]  # two checkpoints + the final surrogate
    assert float((p.images - clean.train_x[p.indices]).abs().max()) <= 0.1 + 1e-6
    assert torch.equal(p.labels, clean.train_y[p.indices])  # still clean-label
    with pytest.raises(ConfigError, match="match_epochs"):
        _run(_cfg(attack="witches_brew", poison_fraction=0.05, steps=1, restarts=1, match_epochs=[99]), clean)


def test_gradient_canceling_reduces_the_gradient_and_needs_linear(clean):
    cfg = ImagePoisonConfig(
        poison=_section("gradient_canceling", poison_fraction=0.05, gc_steps=30, corruption_steps=10),
        model=ModelConfig(arch="linear"),
        train=TINY_TRAIN,
    )
    p = _run(cfg, clean)
    assert len(p.indices) == round(0.05 * len(clean.train_y))
    assert p.images.min() >= 0 and p.images.max() <= 1
    assert p.info["gradient_norm_after"] < p.info["gradient_norm_before"]
    assert p.info["target_accuracy"] < p.info["clean_surrogate_accuracy"]
    with pytest.raises(ConfigError, match="model.arch: linear"):
        _run(_cfg(attack="gradient_canceling"), clean)


def test_gradient_canceling_picks_the_least_accurate_simulated_target(clean):
    cfg = ImagePoisonConfig(
        poison=_section(
            "gradient_canceling",
            poison_fraction=0.05,
            gc_steps=20,
            corruption_steps=10,
            corruption_radii=[0.05, 0.3],
        ),
        model=ModelConfig(arch="linear"),
        train=ClassifierTrainConfig(epochs=5, batch_size=32, learning_rate=0.05, weight_decay=0.02),
    )
    p = _run(cfg, clean)
    cands = p.info["candidates"]
    assert [c["corruption_radius"] for c in cands] == [0.05, 0.3]
    assert p.info["simulated_train_accuracy"] == min(c["simulated_train_accuracy"] for c in cands)
    assert p.info["corruption_radius"] in (0.05, 0.3)
    assert cands[1]["target_accuracy"] < cands[0]["target_accuracy"]  # the farther target is the worse one
    assert p.images.min() >= 0 and p.images.max() <= 1 and len(p.indices) == round(0.05 * len(clean.train_y))
    with pytest.raises(ConfigError, match="corruption_radii"):
        _section("gradient_canceling", corruption_radii=[0.1, 0.0]).validate()


def test_poison_stage_roundtrip(tmp_path):
    from image_track.data import load_dataset_dir, splits
    from llm_unlearn.stages.poison import main

    cfg = ImagePoisonConfig(
        output_dir=str(tmp_path / "p"),
        poison=PoisonSection(attack="badnets", poison_fraction=0.05),
        data=DataConfig(max_train_samples=200, max_test_samples=50, image_size=12),
    )
    main(cfg)
    tensors, manifest = load_dataset_dir(cfg.output_dir)
    s = splits(tensors, manifest)
    assert len(s["forget"]) == manifest["n_poison"] == 10
    assert len(s["retain"]) + len(s["forget"]) == len(s["train"]) == 200
    assert s["train"].images.shape[1:] == (1, 12, 12)
    assert manifest["metric"] == "asr"
    assert set(s["forget"].index.tolist()).isdisjoint(s["retain"].index.tolist())
