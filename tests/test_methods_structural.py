"""Methods that act on parts of the network (CF-k, EU-k, RMU) or edit weights without training (SSD), on a
2-layer tiny Llama: what must stay frozen is bit-identical, what trains moves; SSD and RMU formulas on hand-made
tensors."""

from __future__ import annotations

import re

import pytest
import torch

from helpers import make_unlearn_trainer
from llm_unlearn.configs import ConfigError
from llm_unlearn.methods.rmu import (
    control_vector,
    rmu_forget_loss,
    rmu_retain_loss,
)
from llm_unlearn.methods.ssd import ssd_dampen_


@pytest.fixture(scope="module")
def tiny2_dir(tmp_path_factory):
    from llm_unlearn.embedded import TinyModelConfig, save_tiny

    out = tmp_path_factory.mktemp("tiny2")
    cfg = TinyModelConfig(
        hidden_size=64, num_attention_heads=1, num_hidden_layers=2, intermediate_size=128, vocab_size=400,
        corpus_reviews=300,
    )  # fmt: skip
    save_tiny(out, cfg, seed=0)
    return str(out)


def _trainer(model_dir, gaussian_dir, tmp_path, method, use_peft, method_args=None, budget_tokens=1e7, lr=1e-2):
    return make_unlearn_trainer(model_dir, gaussian_dir, tmp_path, method, use_peft, method_args, budget_tokens, lr)


def _base_name(name: str) -> str:
    """Parameter name of the plain model for a (possibly peft-wrapped) parameter name."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def _initial(model_dir):
    from llm_unlearn.modeling import load_model

    return {n: p.detach().clone() for n, p in load_model(model_dir).named_parameters()}


def _run_and_check(trainer, model, initial, trains):
    """3 steps; base parameters matching ``trains`` (full) must all move, the rest stay bit-identical to ``initial``;
    with LoRA every base parameter stays and the adapters sit only where ``trains`` matches."""
    trainer.args.max_steps = 3
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert trainer.state.global_step == 3
    params = dict(model.named_parameters())
    lora = {n for n in params if "lora_" in n}
    for n, p in params.items():
        if n in lora:
            assert re.search(trains, n), f"adapter outside the trainable layers: {n}"
            if "lora_B" in n:
                assert not torch.equal(p.detach(), before[n]), f"{n} did not train"
            continue
        base = _base_name(n)
        if lora or not re.search(trains, base):
            assert not p.requires_grad and torch.equal(p.detach(), initial[base]), f"frozen {base} moved"
        else:
            assert p.requires_grad and not torch.equal(p.detach(), before[n]), f"trainable {base} did not move"
    return lora


@pytest.mark.parametrize("use_peft", [True, False], ids=["lora", "full"])
def test_cf_k_trains_only_the_last_k_layers(tiny2_dir, gaussian_dir, tmp_path, use_peft):
    trainer, model = _trainer(tiny2_dir, gaussian_dir, tmp_path, "cf_k", use_peft, {"k": 1})
    lora = _run_and_check(trainer, model, _initial(tiny2_dir), r"model\.layers\.1\.|model\.norm\.|lm_head\.")
    assert bool(lora) == use_peft
    with pytest.raises(ConfigError, match="method_args.k"):
        _trainer(tiny2_dir, gaussian_dir, tmp_path, "cf_k", use_peft, {"k": 3})


@pytest.mark.parametrize("use_peft", [True, False], ids=["lora-ignored", "full"])
def test_eu_k_reinitialises_then_trains_the_last_k_layers(tiny2_dir, gaussian_dir, tmp_path, use_peft):
    initial = _initial(tiny2_dir)
    trainer, model = _trainer(tiny2_dir, gaussian_dir, tmp_path, "eu_k", use_peft, {"k": 1})
    fresh = dict(model.named_parameters())  # re-initialised by prepare_model, no step taken yet
    for n in ("model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "lm_head.weight"):
        assert not torch.equal(fresh[n].detach(), initial[n]), f"{n} was not re-initialised"
        assert abs(float(fresh[n].detach().std()) - 0.02) < 0.005  # Llama's initializer_range
    kept = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(fresh[kept].detach(), initial[kept])
    # frozen parameters are compared with the initial model, trainable ones with their re-initialised values
    assert not _run_and_check(trainer, model, initial, r"model\.layers\.1\.|model\.norm\.|lm_head\.")


@pytest.mark.parametrize(
    ("use_peft", "args", "trains"),
    [
        # default on 2 layers: steer layer round(7/32 * 2) = 0 and train only its MLP down projection (WMDP, scaled)
        (True, {}, r"model\.layers\.0\.mlp\.down_proj\."),
        (False, {}, r"model\.layers\.0\.mlp\.down_proj\."),
        (False, {"layer_id": 1, "trainable_layers": [0], "trainable_module_regex": ".*"}, r"model\.layers\.0\."),
        # layer_id 1: trainable layers default to [0, 1]; adapters on the attention projections of both
        (True, {"layer_id": 1, "trainable_module_regex": "self_attn"}, r"model\.layers\.[01]\.self_attn\."),
    ],
    ids=["lora", "full", "full-whole-layer", "lora-regex"],
)
def test_rmu_trains_only_trainable_layers(tiny2_dir, gaussian_dir, tmp_path, use_peft, args, trains):
    trainer, model = _trainer(tiny2_dir, gaussian_dir, tmp_path, "rmu", use_peft, args, lr=1e-3)
    assert bool(_run_and_check(trainer, model, _initial(tiny2_dir), trains)) == use_peft
    with pytest.raises(ConfigError, match="trainable_layers"):
        _trainer(tiny2_dir, gaussian_dir, tmp_path, "rmu", use_peft, {"layer_id": 0, "trainable_layers": [1]})


def test_ssd_only_shrinks_dampened_parameters(tiny2_dir, gaussian_dir, tmp_path):
    trainer, model = _trainer(tiny2_dir, gaussian_dir, tmp_path, "ssd", True)  # use_peft is ignored: full weights
    trainer.args.max_steps = 3
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert trainer.state.global_step == 3 and trainer.compute_tokens > 0
    dampened = result.metrics["ssd_dampened"]
    changed = 0
    for n, p in model.named_parameters():
        after, old = p.detach(), before[n]
        assert bool((after.abs() <= old.abs()).all()) and bool((after * old >= 0).all()), f"{n} grew or flipped"
        changed += int((after != old).sum())
    assert 0 < changed <= dampened

    trainer, _ = _trainer(tiny2_dir, gaussian_dir, tmp_path, "ssd", False, budget_tokens=500.0)
    steps = trainer.train().global_step
    assert trainer.compute_tokens >= 500.0 and 1 <= steps < trainer.args.max_steps


def test_ssd_dampen_matches_the_formula():
    p = torch.tensor([1.0, 2.0, 3.0, 4.0, -5.0])
    d = torch.tensor([1.0, 0.1, 0.0, 1.0, 0.0])
    f = torch.tensor([5.0, 2.0, 0.0, 20.0, 1.0])
    # selected where f > 10 d: entries 1 (2 > 1), 3 (20 > 10), 4 (1 > 0); factors 0.05, 0.05, 0
    assert ssd_dampen_([p], [d], [f], alpha=10.0, lam=1.0) == 3
    assert torch.allclose(p, torch.tensor([1.0, 0.1, 3.0, 0.2, 0.0]))
    q = torch.tensor([2.0])
    assert ssd_dampen_([q], [torch.tensor([0.1])], [torch.tensor([2.0])], alpha=10.0, lam=100.0) == 1
    assert float(q) == 2.0  # min(lam d / f, 1) = 1: selected but not shrunk


def test_rmu_losses_on_hand_made_tensors():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0]])  # the padding position is ignored
    control = torch.tensor([1.0, 0.0])
    # ((0^2 + 2^2) / 2 + (2^2 + 4^2) / 2) / 2 = (2 + 10) / 2
    assert float(rmu_forget_loss(h, control, mask)) == pytest.approx(6.0)
    frozen = h + torch.tensor([0.0, 1.0])
    assert float(rmu_retain_loss(h, frozen, mask, alpha=100.0)) == pytest.approx(100 * 0.5)
    u = control_vector(128, 20.0, seed=0)
    assert float(u.norm()) == pytest.approx(20.0) and bool((u >= 0).all())
    assert torch.equal(u, control_vector(128, 20.0, seed=0))
