"""Every METHODS entry: a few steps on the tiny LLM with LoRA and without; loss finite, trainable parameters move,
frozen ones stay; the budget stops training; the loss helpers match the paper's update rules."""

from __future__ import annotations

import pytest
import torch

from helpers import make_unlearn_trainer
from llm_unlearn.methods import METHODS
from llm_unlearn.methods.ga import ga_loss
from llm_unlearn.methods.neggrad_plus import neggrad_plus_loss
from llm_unlearn.methods.ngd import add_parameter_noise


def _trainer(tiny_dir, gaussian_dir, tmp_path, method, use_peft, budget_tokens=1e7, lr=1e-2):
    # GA's ascent is unbounded: no clipping, so 3 steps at a high lr visibly move every LoRA matrix.
    clip = 0.0 if method == "ga" else 1.0
    return make_unlearn_trainer(
        tiny_dir, gaussian_dir, tmp_path, method, use_peft, None, budget_tokens, lr, max_grad_norm=clip
    )


@pytest.mark.parametrize("use_peft", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_updates_trainable_and_keeps_frozen(tiny_dir, gaussian_dir, tmp_path, method, use_peft):
    trainer, model = _trainer(tiny_dir, gaussian_dir, tmp_path, method, use_peft)
    trainer.args.max_steps = 3
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert trainer.state.global_step == 3
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert trainable, "nothing is trainable"
    assert changed <= trainable, f"frozen parameters moved: {sorted(changed - trainable)[:3]}"
    from llm_unlearn.methods import uses_adapter

    if uses_adapter(method, use_peft):
        lora_b = [n for n in trainable if "lora_B" in n]
        assert lora_b and all(n in changed for n in lora_b), "LoRA B matrices did not train"
        assert all(float(dict(model.named_parameters())[n].detach().abs().sum()) > 0 for n in lora_b)
    else:
        assert len(changed) >= 0.5 * len(trainable)  # most trainable tensors get a gradient in 3 steps


@pytest.mark.parametrize("method", sorted(METHODS))
def test_budget_stops_within_one_step(tiny_dir, gaussian_dir, tmp_path, method):
    budget = 2000.0
    trainer, _ = _trainer(tiny_dir, gaussian_dir, tmp_path, method, True, budget_tokens=budget)
    trainer.train()
    spent = trainer.compute_tokens
    assert spent >= budget
    # one step costs at most one forget + one retain batch of the longest examples
    assert spent - budget <= 2 * 4 * 256
    assert trainer.state.global_step < trainer.args.max_steps


def test_loss_formulas():
    r, f = torch.tensor(2.0), torch.tensor(3.0)
    assert float(ga_loss(f)) == -3.0
    assert float(neggrad_plus_loss(r, f, 0.95)) == pytest.approx(0.95 * 2 - 0.05 * 3)
    assert float(neggrad_plus_loss(r, f, 1.0)) == pytest.approx(2.0)  # beta = 1 is plain GD


def test_parameter_noise_has_its_scale():
    """add_parameter_noise moves every parameter by -scale * z, z ~ N(0, 1) (scale = lr * sigma in NGD)."""
    p = torch.nn.Parameter(torch.zeros(200_000))
    assert add_parameter_noise([p], 0.1, seed=0, step=0) == p.numel()
    assert float(p.detach().std()) == pytest.approx(0.1, rel=0.02)
    assert abs(float(p.detach().mean())) < 1e-3


def test_unlearn_stage_writes_adapter_and_info(tiny_dir, gaussian_dir, trained_dirs, tmp_path):
    from llm_unlearn.stages.unlearn import UnlearnConfig, main
    from llm_unlearn.files import read_json

    initial, retrain = trained_dirs
    out = main(
        UnlearnConfig(
            model_dir=initial,
            dataset_dir=gaussian_dir,
            output_dir=str(tmp_path / "u"),
            retrain_dir=retrain,
            method="gd",
            budget=0.1,
            per_device_train_batch_size=8,
            progress=False,
        )
    )
    info = read_json(out / "unlearn_info.json")
    assert (out / "adapter_model.safetensors").is_file()
    assert not list(out.glob("*.bin"))
    assert 0.1 <= info["compute_fraction"] <= 0.1 + 2 * 8 * 256 / info["reference_compute_tokens"]
    assert (out / "config.yaml").is_file()
