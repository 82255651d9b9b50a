"""Tests of llm_unlearn.metrics: GUS (Algorithm 1), membership inference and utility metrics."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from llm_unlearn.metrics import (
    accuracy,
    attack_success_rate,
    gap_closed,
    gaussian_scores,
    gus_summary,
    input_gradients,
    loss_mia,
    normalize_label,
    scores_from_gradients,
    stouffer_z,
    tpr_at_fpr,
)


def _random_mlp(dim: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(dim, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3)).double().eval()


def _ce_loss_fn(model: torch.nn.Module, labels: torch.Tensor):
    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(x), labels, reduction="none")

    return loss_fn


# --------------------------------------------------------------------------- scores_from_gradients


def test_scores_hand_computed():
    grads = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    noises = torch.tensor([[1.0, 2.0], [-2.0, 5.0]])
    scores = scores_from_gradients(grads, noises, 0.5)
    assert scores.shape == (2,)
    assert scores.dtype == torch.float64
    # (3 + 8) / (0.5 * 5) = 4.4 ; (-2) / (0.5 * 1) = -4
    torch.testing.assert_close(scores, torch.tensor([4.4, -4.0], dtype=torch.float64))


def test_scores_flatten_non_batch_dims():
    grads = torch.tensor([[[3.0], [4.0]]])  # (1, 2, 1)
    noises = torch.tensor([[[1.0], [2.0]]])
    torch.testing.assert_close(scores_from_gradients(grads, noises, 0.5), torch.tensor([4.4], dtype=torch.float64))


def test_scores_mask_excludes_coordinates():
    # The third coordinate (masked out) would change both the dot product and the norm.
    grads = torch.tensor([[3.0, 4.0, 12.0]])
    noises = torch.tensor([[1.0, 2.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    masked = scores_from_gradients(grads, noises, 0.5, mask=mask)
    torch.testing.assert_close(masked, torch.tensor([4.4], dtype=torch.float64))
    unmasked = scores_from_gradients(grads, noises, 0.5)
    torch.testing.assert_close(unmasked, torch.tensor([(3 + 8 + 1200) / (0.5 * 13)], dtype=torch.float64))


def test_scores_sequence_mask_broadcast():
    # (n, L, H) embeddings with an (n, L, 1) attention mask: padded positions excluded.
    grads = torch.zeros(2, 3, 2)
    grads[0, 0] = torch.tensor([3.0, 4.0])
    grads[0, 2] = torch.tensor([7.0, 7.0])  # padding, excluded
    grads[1, 1] = torch.tensor([0.0, 2.0])
    noises = torch.ones(2, 3, 2)
    noises[0, 0] = torch.tensor([1.0, 2.0])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]]).unsqueeze(-1)
    scores = scores_from_gradients(grads, noises, 0.5, mask=mask)
    torch.testing.assert_close(scores, torch.tensor([4.4, 2.0 / (0.5 * 2.0)], dtype=torch.float64))


def test_scores_k_draws_shape_and_values():
    grads = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    noises = torch.tensor([[[1.0, 2.0], [1.0, 1.0]], [[0.0, 0.0], [5.0, -1.0]], [[-3.0, -4.0], [2.0, 3.0]]])
    scores = scores_from_gradients(grads, noises, 0.5)
    assert scores.shape == (3, 2)
    for k in range(3):
        torch.testing.assert_close(scores[k], scores_from_gradients(grads, noises[k], 0.5))
    torch.testing.assert_close(scores[:, 0], torch.tensor([4.4, 0.0, -10.0], dtype=torch.float64))


def test_scores_zero_gradient_gives_zero():
    grads = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    noises = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    scores = scores_from_gradients(grads, noises, 0.5)
    assert torch.isfinite(scores).all()
    assert scores[0].item() == 0.0
    # Fully masked sample also has a zero (masked) gradient norm.
    masked = scores_from_gradients(grads, noises, 0.5, mask=torch.tensor([[1.0], [0.0]]))
    torch.testing.assert_close(masked, torch.zeros(2, dtype=torch.float64))


def test_scores_computed_in_float64():
    # float32 would lose the tiny difference; float64 inputs and computation keep it.
    grads = torch.tensor([[1.0, 1e-9]], dtype=torch.float64)
    noises = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    score = scores_from_gradients(grads, noises, 1.0)
    assert score.dtype == torch.float64
    assert score.item() == pytest.approx(1e-9, rel=1e-6)


# --------------------------------------------------------------------------- input_gradients


def test_input_gradients_quadratic_exact():
    torch.manual_seed(0)
    w = torch.rand(5, dtype=torch.float64) + 0.5
    x = torch.randn(7, 5, dtype=torch.float64)
    grads = input_gradients(lambda z: (w * z**2).sum(dim=1), x)
    torch.testing.assert_close(grads, 2 * w * x)
    assert not grads.requires_grad
    assert grads.shape == x.shape


def test_input_gradients_one_backward_and_matches_loop():
    model = _random_mlp(10)
    n = 64
    x = torch.randn(n, 10, dtype=torch.float64)
    labels = torch.randint(0, 3, (n,))
    base = _ce_loss_fn(model, labels)
    counts = {"calls": 0, "backward": 0}

    def counting_loss_fn(z):
        counts["calls"] += 1
        if z.requires_grad:
            z.register_hook(lambda g: counts.__setitem__("backward", counts["backward"] + 1))
        return base(z)

    grads = input_gradients(counting_loss_fn, x)
    assert counts == {"calls": 1, "backward": 1}
    assert all(p.grad is None for p in model.parameters())  # model parameters untouched

    loop = []
    for i in range(n):
        xi = x[i : i + 1].clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(xi), labels[i : i + 1]).backward()
        loop.append(xi.grad[0])
    torch.testing.assert_close(grads, torch.stack(loop))


def test_input_gradients_works_under_no_grad_and_leaves_input():
    x = torch.randn(4, 3)
    with torch.no_grad():
        grads = input_gradients(lambda z: (z**2).sum(dim=1), x)
    torch.testing.assert_close(grads, 2 * x)
    assert not x.requires_grad and x.grad is None


def test_input_gradients_bad_loss_shape():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="loss_fn"):
        input_gradients(lambda z: (z**2).mean(), x)
    with pytest.raises(ValueError, match="loss_fn"):
        input_gradients(lambda z: z**2, x)
    with pytest.raises(ValueError, match="loss_fn"):
        input_gradients(lambda z: torch.zeros(4), x)  # no dependence on inputs


def test_input_gradients_bad_inputs():
    with pytest.raises(ValueError, match="inputs"):
        input_gradients(lambda z: z.sum(dim=1), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="inputs"):
        input_gradients(lambda z: z.sum(dim=1), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="inputs"):
        input_gradients(lambda z: z.sum(dim=1), np.zeros((2, 3)))


# --------------------------------------------------------------------------- null and signal


def test_null_distribution_is_standard_normal():
    dim, n, std = 50, 4000, 0.3
    model = _random_mlp(dim, seed=1)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (n,), generator=gen)
    noises = std * torch.randn(n, dim, generator=gen, dtype=torch.float64)
    fresh = std * torch.randn(n, dim, generator=gen, dtype=torch.float64)
    loss_fn = _ce_loss_fn(model, labels)
    scores = gaussian_scores(loss_fn, x, noises, std)
    fresh_scores = gaussian_scores(loss_fn, x, fresh, std)
    assert scores.shape == (n,)
    assert abs(scores.mean().item()) < 0.1
    assert 0.9 < scores.std().item() < 1.1
    summary = gus_summary(scores, fresh_scores)
    assert abs(summary["gus_z"]) < 4
    assert abs(summary["fresh_gus_z"]) < 4
    assert abs(summary["gus_auc"] - 0.5) < 0.05
    assert summary["gus_tpr_at_1pct_fpr"] < 0.05
    assert summary["n_poison"] == n and summary["n_fresh"] == n


def test_null_with_mask_stays_standard_normal():
    # Noise only on unmasked positions; the gradient is nonzero everywhere. Masking restores N(0, 1).
    n, length, hidden, std = 3000, 6, 8, 0.5
    gen = torch.Generator().manual_seed(3)
    grads = torch.randn(n, length, hidden, generator=gen, dtype=torch.float64)
    mask = (torch.arange(length) < 3).to(torch.float64).expand(n, length).unsqueeze(-1)
    noises = std * torch.randn(n, length, hidden, generator=gen, dtype=torch.float64) * mask
    masked = scores_from_gradients(grads, noises, std, mask=mask)
    assert 0.9 < masked.std().item() < 1.1
    unmasked = scores_from_gradients(grads, noises, std)
    assert unmasked.std().item() < 0.85  # ~ sqrt(1/2): the unmasked statistic is not N(0, 1)


def test_signal_detected():
    dim, n, std, c = 50, 500, 0.3, 0.5
    model = _random_mlp(dim, seed=4)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (n,), generator=gen)
    loss_fn = _ce_loss_fn(model, labels)
    g = input_gradients(loss_fn, x)
    direction = g / g.norm(dim=1, keepdim=True)
    noises = -c * std * direction + std * torch.randn(n, dim, generator=gen, dtype=torch.float64)
    k = 4
    fresh = std * torch.randn(k, n, dim, generator=gen, dtype=torch.float64)
    scores = gaussian_scores(loss_fn, x, noises, std)
    fresh_scores = gaussian_scores(loss_fn, x, fresh, std)
    assert fresh_scores.shape == (k, n)
    summary = gus_summary(scores, fresh_scores)
    assert summary["gus_mean"] < 0
    assert summary["gus_mean"] == pytest.approx(-c, abs=0.15)
    assert summary["gus_z"] < -6
    assert summary["gus_p"] < 1e-8
    assert summary["gus_auc"] > 0.6
    assert summary["gus_tpr_at_1pct_fpr"] > 0.01
    assert summary["n_fresh"] == k * n
    assert abs(summary["fresh_gus_z"]) < 4


# --------------------------------------------------------------------------- gus_summary / stouffer


def test_gus_summary_matches_manual():
    poison = np.array([-1.2, -0.3, 0.4, -2.0, -0.9, 0.1])
    fresh = np.array([[0.5, -0.2, 1.1], [0.3, -1.5, 0.0]])
    summary = gus_summary(poison, torch.tensor(fresh))
    mean, std = poison.mean(), poison.std(ddof=1)
    z = mean / (std / math.sqrt(poison.size))
    fresh_flat = fresh.reshape(-1)
    fresh_z = fresh_flat.mean() / (fresh_flat.std(ddof=1) / math.sqrt(fresh_flat.size))
    labels = np.r_[np.ones(poison.size), np.zeros(fresh_flat.size)]
    expected = {
        "gus_mean": mean,
        "gus_std": std,
        "gus_z": z,
        "gus_p": 2 * norm.sf(abs(z)),
        "gus_auc": roc_auc_score(labels, -np.r_[poison, fresh_flat]),
        "fresh_gus_mean": fresh_flat.mean(),
        "fresh_gus_z": fresh_z,
        "fresh_gus_p": 2 * norm.sf(abs(fresh_z)),
    }
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value, rel=1e-12), key
        assert isinstance(summary[key], float), key
    assert summary["n_poison"] == 6 and summary["n_fresh"] == 6
    assert isinstance(summary["n_poison"], int) and isinstance(summary["n_fresh"], int)
    # 6 negatives: FPR <= 1% admits no false positive; the top score -(-2.0) = 2.0 exceeds every fresh score.
    assert summary["gus_tpr_at_1pct_fpr"] == pytest.approx(1 / 6)


def test_stouffer_z():
    assert stouffer_z([2, 2, 2]) == pytest.approx(2 * math.sqrt(3))
    assert stouffer_z([1.5]) == pytest.approx(1.5)
    assert stouffer_z([1.0, -1.0]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="zs"):
        stouffer_z([])


# --------------------------------------------------------------------------- MIA


def test_tpr_at_fpr_separable_and_identical():
    rng = np.random.default_rng(0)
    members = rng.normal(10.0, 1.0, 1000)
    nonmembers = rng.normal(0.0, 1.0, 1000)
    assert tpr_at_fpr(members, nonmembers) == 1.0
    assert tpr_at_fpr(nonmembers, members) == 0.0
    same = rng.normal(size=5000)
    assert tpr_at_fpr(same[:2500], same[2500:], fpr=0.01) < 0.03
    assert tpr_at_fpr(same[:2500], same[2500:], fpr=0.5) == pytest.approx(0.5, abs=0.05)
    # Ties: identical constant scores cannot be separated at FPR < 1.
    assert tpr_at_fpr(np.zeros(10), np.zeros(10), fpr=0.5) == 0.0


def test_tpr_at_fpr_exact_small_case():
    # Nonmembers 0..99; members 200, 99.5, 98.5, 50.
    nonmembers = np.arange(100.0)
    members = np.array([200.0, 99.5, 98.5, 50.0])
    # FPR < 1%: no false positive allowed -> threshold 99.5 -> TPR 2/4.
    assert tpr_at_fpr(members, nonmembers, fpr=0.005) == pytest.approx(0.5)
    # FPR <= 1%: one false positive (99) allowed -> threshold 98.5 -> TPR 3/4.
    assert tpr_at_fpr(members, nonmembers, fpr=0.01) == pytest.approx(0.75)
    # 50 false positives (50..99) are needed to catch the last member.
    assert tpr_at_fpr(members, nonmembers, fpr=0.49) == pytest.approx(0.75)
    assert tpr_at_fpr(members, nonmembers, fpr=0.5) == pytest.approx(1.0)


def test_loss_mia():
    rng = np.random.default_rng(1)
    separable = loss_mia(rng.uniform(0.0, 0.1, 300), rng.uniform(1.0, 2.0, 300))
    assert separable == {"mia_auc": 1.0, "mia_tpr_at_1pct_fpr": 1.0}
    reversed_ = loss_mia(rng.uniform(1.0, 2.0, 300), rng.uniform(0.0, 0.1, 300))
    assert reversed_["mia_auc"] == 0.0 and reversed_["mia_tpr_at_1pct_fpr"] == 0.0
    losses = rng.exponential(size=6000)
    chance = loss_mia(losses[:3000], losses[3000:])
    assert abs(chance["mia_auc"] - 0.5) < 0.03
    assert chance["mia_tpr_at_1pct_fpr"] < 0.03


# --------------------------------------------------------------------------- utility


def test_normalize_label():
    choices = ["positive", "negative"]
    assert normalize_label("  Positive.", choices) == "positive"
    assert normalize_label("NEGATIVE review", choices) == "negative"
    assert normalize_label("neutral", choices) is None
    assert normalize_label("", choices) is None
    assert normalize_label("The answer is positive", choices) is None  # must start with the choice
    assert normalize_label("pos", ["Positive", "pos"]) == "pos"
    assert normalize_label("positive", ["pos", "positive"]) == "pos"  # first matching choice wins


def test_accuracy():
    preds = [" Positive.", "negative", "neutral", "NEGATIVE!"]
    labels = ["positive", "positive", "negative", "negative"]
    assert accuracy(preds, labels) == pytest.approx(0.5)
    assert accuracy(["positive"], ["Positive"]) == 1.0


def test_attack_success_rate_excludes_target_labelled():
    preds = ["positive", "positive", "negative", "Positive!", "negative"]
    true = ["negative", "negative", "negative", "positive", "positive"]
    # Only the 3 negatives count; 2 of them are flipped to the target.
    assert attack_success_rate(preds, true, "positive") == pytest.approx(2 / 3)
    assert attack_success_rate(["negative"] * 3, ["negative"] * 3, "positive") == 0.0
    with pytest.raises(ValueError, match="true_labels"):
        attack_success_rate(["positive"], ["positive"], "positive")


def test_gap_closed():
    assert gap_closed(0.9, 0.1, 0.1) == pytest.approx(1.0)
    assert gap_closed(0.9, 0.9, 0.1) == pytest.approx(0.0)
    assert gap_closed(0.9, 0.5, 0.1) == pytest.approx(0.5)
    assert gap_closed(0.5, 0.7, 0.1) < 0  # poison got stronger
    assert gap_closed(0.9, 0.95, 0.1) == pytest.approx(-0.0625)
    assert gap_closed(0.3, 0.2, 0.3) is None
    assert gap_closed(-1.0, -0.5, 0.0) == pytest.approx(0.5)  # works for metrics that increase too


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: scores_from_gradients(torch.ones(2, 3), torch.ones(2, 3), 0.0), "noise_std"),
        (lambda: scores_from_gradients(torch.ones(2, 3), torch.ones(2, 3), -1.0), "noise_std"),
        (lambda: scores_from_gradients(torch.ones(2, 3), torch.ones(2, 3), float("nan")), "noise_std"),
        (lambda: scores_from_gradients(torch.ones(2, 3), torch.ones(2, 4), 1.0), "noises"),
        (lambda: scores_from_gradients(torch.ones(2, 3), torch.ones(3, 3, 3), 1.0), "noises"),
        (lambda: scores_from_gradients(torch.ones(0, 3), torch.ones(0, 3), 1.0), "grads"),
        (lambda: scores_from_gradients(torch.ones(2, 3), torch.ones(2, 3), 1.0, mask=torch.ones(3, 1)), "mask"),
        (lambda: scores_from_gradients(torch.ones(2, 3), torch.ones(2, 3), 1.0, mask=torch.ones(2, 2, 3)), "mask"),
        (lambda: scores_from_gradients(torch.full((2, 3), float("nan")), torch.ones(2, 3), 1.0), "grads"),
        (lambda: gaussian_scores(lambda z: z.sum(1), torch.ones(2, 3), torch.ones(2, 3), 0), "noise_std"),
        (lambda: gus_summary([], [0.1, 0.2]), "poison_scores"),
        (lambda: gus_summary([0.1], [0.1, 0.2]), "poison_scores"),
        (lambda: gus_summary([0.1, 0.3], []), "fresh_scores"),
        (lambda: gus_summary([0.1, float("nan")], [0.1, 0.2]), "poison_scores"),
        (lambda: tpr_at_fpr([1.0], [0.0], fpr=0.0), "fpr"),
        (lambda: tpr_at_fpr([1.0], [0.0], fpr=1.0), "fpr"),
        (lambda: tpr_at_fpr([], [0.0]), "member_scores"),
        (lambda: tpr_at_fpr([1.0], []), "nonmember_scores"),
        (lambda: tpr_at_fpr([[1.0]], [0.0]), "member_scores"),
        (lambda: loss_mia([], [1.0]), "member_losses"),
        (lambda: loss_mia([1.0], [np.inf]), "nonmember_losses"),
        (lambda: accuracy([], []), "predictions"),
        (lambda: accuracy(["a"], ["a", "b"]), "labels"),
        (lambda: normalize_label("positive", []), "choices"),
        (lambda: normalize_label("positive", ["", "negative"]), "choices"),
        (lambda: attack_success_rate(["a"], ["a", "b"], "a"), "true_labels"),
        (lambda: attack_success_rate(["a"], ["b"], ""), "target"),
        (lambda: gap_closed(float("nan"), 0.1, 0.2), "m_initial"),
        (lambda: gap_closed(0.1, None, 0.2), "m_updated"),
        (lambda: gap_closed(0.1, 0.1, float("inf")), "m_retrain"),
    ],
)
def test_bad_inputs_raise_value_error(call, name):
    with pytest.raises(ValueError, match=name):
        call()
