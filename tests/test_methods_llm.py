"""GradDiff, NPO, SimNPO and SCRUB: each pure loss against its paper's equation on hand-made tensors, then 3 steps on
the tiny LLM with LoRA and without (loss finite, trainable parameters move, frozen ones and the reference stay, and
the compute charged counts the reference forwards at 1/3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import make_unlearn_trainer
from llm_unlearn.configs import ConfigError, build_config
from llm_unlearn.methods import METHODS
from llm_unlearn.methods.base import FORWARD_ONLY_COST
from llm_unlearn.methods.graddiff import GradDiffConfig, graddiff_loss, kl_to_reference
from llm_unlearn.methods.npo import NPOConfig, npo_loss
from llm_unlearn.methods.scrub import SCRUBConfig, scrub_kl
from llm_unlearn.methods.simnpo import SimNPOConfig, simnpo_loss


def _logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# ---------------------------------------------------------------------------------------------- pure loss functions


@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0, 7.0])
def test_npo_at_reference_is_2_log2_over_beta(beta):
    logp = torch.tensor([-3.0, -10.0, -0.5])
    assert float(npo_loss(logp, logp.clone(), beta)) == pytest.approx(2 / beta * math.log(2), rel=1e-6)


def test_npo_hand_computed():
    logp, ref = torch.tensor([-3.0, -1.0]), torch.tensor([-2.0, -2.0])  # log-ratios -1 and +1
    expected = -(2 / 0.5) * (_logsigmoid(0.5) + _logsigmoid(-0.5)) / 2
    assert float(npo_loss(logp, ref, 0.5)) == pytest.approx(expected, rel=1e-6)
    # Lowering the forget likelihood lowers the loss, and each example's gradient is GA's (1/n per example)
    # reweighted by 2 sigmoid(beta * log-ratio): 1/n at the reference, less once below it.
    x = torch.tensor([-2.0, -5.0], requires_grad=True)
    npo_loss(x, torch.tensor([-2.0, -2.0]), 0.5).backward()
    assert x.grad[0] == pytest.approx(0.5, rel=1e-6)
    assert x.grad[1] == pytest.approx(0.5 * 2 * torch.sigmoid(torch.tensor(-1.5)).item(), rel=1e-6)


def test_simnpo_hand_computed():
    logp, lengths = torch.tensor([-4.0, -2.0]), torch.tensor([2, 4])
    # beta=2, gamma=0.5: -(2/2)*(-4) - 0.5 = 3.5 and -(2/4)*(-2) - 0.5 = 0.5
    expected = -(2 / 2) * (_logsigmoid(3.5) + _logsigmoid(0.5)) / 2
    assert float(simnpo_loss(logp, lengths, beta=2.0, gamma=0.5)) == pytest.approx(expected, rel=1e-6)
    # gamma = 0, a certain completion (logp = 0): (2/beta) log 2, as NPO at its reference
    assert float(simnpo_loss(torch.zeros(3), torch.tensor([1, 5, 9]), 2.5, 0.0)) == pytest.approx(
        2 / 2.5 * math.log(2)
    )
    # length normalisation: the same mean token log-prob gives the same loss whatever the length
    a = simnpo_loss(torch.tensor([-3.0]), torch.tensor([3]), 2.5, 0.0)
    b = simnpo_loss(torch.tensor([-30.0]), torch.tensor([30]), 2.5, 0.0)
    assert float(a) == pytest.approx(float(b))


def test_graddiff_loss_and_kl():
    assert float(graddiff_loss(torch.tensor(3.0), torch.tensor(2.0), 0.5)) == pytest.approx(-3.0 + 1.0)
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert float(kl_to_reference(logits, logits.clone(), mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_to_reference(logits, logits + 3.0, mask)) == pytest.approx(0.0, abs=1e-5)  # shift-invariant
    assert float(kl_to_reference(logits, logits.flip(-1), mask)) > 0


def test_scrub_kl_matches_torch_kl_div():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 4, 7, generator=g), torch.randn(3, 4, 7, generator=g)
    mask = torch.rand(3, 4, generator=g) > 0.3
    mask[0, 0] = True
    assert float(scrub_kl(s, s.clone(), mask, 4.0)) == pytest.approx(0.0, abs=1e-6)
    for T in (1.0, 4.0):
        per_pos = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="none", log_target=True).sum(
            -1
        )  # KL(teacher || student) per position
        expected = per_pos[mask].mean() * T**2
        assert float(scrub_kl(s, t, mask, T)) == pytest.approx(float(expected), rel=1e-5)
    # masked-out positions do not count
    s2 = s.clone()
    s2[~mask] = 100.0
    assert float(scrub_kl(s2, t, mask, 4.0)) == pytest.approx(float(scrub_kl(s, t, mask, 4.0)), rel=1e-6)


@pytest.mark.parametrize(
    "cls, args, key",
    [
        (NPOConfig, {"beta": 0.0}, "beta"),
        (NPOConfig, {"retain_weight": -1.0}, "retain_weight"),
        (SimNPOConfig, {"beta": -2.5}, "beta"),
        (SimNPOConfig, {"gamma": -0.1}, "gamma"),
        (GradDiffConfig, {"retain_weight": float("nan")}, "retain_weight"),
        (SCRUBConfig, {"temperature": 0.0}, "temperature"),
        (SCRUBConfig, {"alpha": -0.001}, "alpha"),
        (SCRUBConfig, {"msteps": -1}, "msteps"),
    ],
)
def test_configs_reject_bad_values(cls, args, key):
    with pytest.raises(ConfigError, match=f"method_args.{key}"):
        build_config(cls, args)


def test_graddiff_rejects_unknown_retain_loss():
    with pytest.raises(ConfigError, match="retain_loss"):
        build_config(GradDiffConfig, {"retain_loss": "mse"})


# ------------------------------------------------------------------------------------------ runs on the tiny LLM


def _trainer(tiny_dir, gaussian_dir, tmp_path, method, use_peft, method_args=None, budget_tokens=1e7, lr=1e-2):
    return make_unlearn_trainer(tiny_dir, gaussian_dir, tmp_path, method, use_peft, method_args, budget_tokens, lr)


def _expected_tokens(method: str, args: dict, step: int, forget: int, retain: int, ref=FORWARD_ONLY_COST) -> float:
    """Compute one step should charge: passes with backward count 1, reference forwards ``ref``."""
    if method == "graddiff":
        return forget + retain * (1 + ref if args.get("retain_loss") == "kl" else 1)
    if method == "npo":
        return forget * (1 + ref) + retain
    if method == "simnpo":
        return forget + retain
    if method == "scrub":  # a step is all-forget (max) or all-retain (min): one of the two counts is 0
        return (forget + retain) * (1 + ref)
    raise ValueError(method)


# SCRUB with msteps 0 here: its first max epoch starts with student = teacher, where the KL's gradient is exactly
# zero for a model without dropout, so three max steps would move nothing (the max phase is checked in
# test_method_updates.py).
RUNS = [
    ("graddiff", {}),
    ("graddiff", {"retain_loss": "kl"}),
    ("npo", {}),
    ("simnpo", {}),
    ("scrub", {"msteps": 0}),
]


@pytest.mark.parametrize("use_peft", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("method, args", RUNS, ids=[f"{m}-{'-'.join(map(str, a.values()))}" for m, a in RUNS])
def test_three_steps(tiny_dir, gaussian_dir, tmp_path, monkeypatch, method, args, use_peft):
    from llm_unlearn.modeling import load_model
    from llm_unlearn.tasks.causal_lm import batch_tokens, sequence_logps

    trainer, model = _trainer(tiny_dir, gaussian_dir, tmp_path, method, use_peft, args)
    trainer.args.max_steps = 3
    # Record the batches each step sees, to know exactly what it should charge.
    seen, batches, compute_loss = [], [], trainer.compute_loss

    def recording(model, inputs, *a, **kw):
        tokens = {h: batch_tokens(inputs[h]) if h in inputs else 0 for h in ("forget", "retain")}
        seen.append((trainer.state.global_step, tokens["forget"], tokens["retain"]))
        batches.append(inputs["forget"] if "forget" in inputs else inputs["retain"])
        return compute_loss(model, inputs, *a, **kw)

    trainer.compute_loss = recording
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ref_model = trainer.reference_model
    ref_before = None if ref_model is None else {n: p.detach().clone() for n, p in ref_model.named_parameters()}

    result = trainer.train()

    assert math.isfinite(result.training_loss)
    assert trainer.state.global_step == 3 and [s for s, _, _ in seen] == [0, 1, 2]
    expected = sum(_expected_tokens(method, args, s, f, r) for s, f, r in seen)
    assert trainer.compute_tokens == pytest.approx(expected)
    uses_reference = method in ("npo", "scrub") or args.get("retain_loss") == "kl"
    if uses_reference:  # the reference forwards are charged on top of the same passes without them
        assert trainer.compute_tokens > sum(_expected_tokens(method, args, *x, ref=0.0) for x in seen)

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert trainable and changed <= trainable, f"frozen parameters moved: {sorted(changed - trainable)[:3]}"
    if use_peft:
        assert ref_model is None  # the reference is the adapter switched off, not a copy
        lora_b = [n for n in trainable if "lora_B" in n]
        assert lora_b and all(n in changed for n in lora_b), "LoRA B matrices did not train"
        assert all(float(dict(model.named_parameters())[n].detach().abs().sum()) > 0 for n in lora_b)
    else:
        assert len(changed) >= 0.5 * len(trainable)
        if METHODS[method].needs_reference:
            assert ref_model is not None and ref_model is not model
            assert all(torch.equal(p, ref_before[n]) for n, p in ref_model.named_parameters()), "reference moved"

    # The reference is still the initial model after training moved the student.
    if METHODS[method].needs_reference:
        batch = {k: batches[0][k] for k in ("input_ids", "attention_mask", "labels")}
        initial = load_model(tiny_dir).eval()
        with torch.no_grad(), trainer.reference(model) as ref:
            assert torch.allclose(sequence_logps(ref, batch), sequence_logps(initial, batch), atol=1e-5)
        with torch.no_grad():
            assert not torch.allclose(sequence_logps(model, batch), sequence_logps(initial, batch), atol=1e-5)


@pytest.mark.parametrize("method", ["graddiff", "npo", "simnpo", "scrub"])
def test_budget_stops_within_one_step(tiny_dir, gaussian_dir, tmp_path, monkeypatch, method):
    budget = 2000.0
    trainer, _ = _trainer(tiny_dir, gaussian_dir, tmp_path, method, True, budget_tokens=budget)
    trainer.train()
    assert trainer.compute_tokens >= budget
    # a step costs at most a forget and a retain batch of the longest examples, plus their reference forwards
    assert trainer.compute_tokens - budget <= 2 * 4 * 256 * (1 + FORWARD_ONLY_COST)
    assert trainer.state.global_step < trainer.args.max_steps
