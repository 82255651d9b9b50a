"""EU-k re-initialises the last k blocks exactly as the model's own construction initialises them: on a tiny GPT-2
(whose residual projections c_proj are drawn with std 0.02 / sqrt(2 n_layer) by the parent attention/MLP module), a
tiny Llama and the image track's ResNet-18, every re-initialised tensor has the statistics of the same tensor in a
freshly constructed model, and every other tensor is bit-identical to the checkpoint."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from llm_unlearn.methods.eu_k import EUKConfig, prepare_eu_k, reinitialize_


def _gpt2_config():
    from transformers import GPT2Config

    # 8 layers: c_proj's std is 0.02 / sqrt(16) = 0.005, 4x below the 0.02 of every other matrix
    return GPT2Config(
        n_layer=8, n_embd=64, n_head=2, n_positions=64, vocab_size=400, n_inner=256, tie_word_embeddings=False
    )


def _llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        num_hidden_layers=4, hidden_size=64, num_attention_heads=2, num_key_value_heads=2, intermediate_size=128,
        vocab_size=400, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip


def _checkpoint(model_cls, config, tmp_path):
    """A "trained" checkpoint (every tensor moved away from its init), loaded back the way the unlearn stage loads it:
    through ``from_pretrained``, which flags every loaded tensor and module ``_is_hf_initialized``."""
    torch.manual_seed(0)
    model = model_cls(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0).add_(torch.randn_like(p) * 0.1 + 0.05)
    model.save_pretrained(tmp_path / "ckpt")
    return model_cls.from_pretrained(tmp_path / "ckpt")


def _fresh(model_cls, config):
    torch.manual_seed(1234)
    return model_cls(config)


def _assert_same_distribution(name: str, got: torch.Tensor, ref: torch.Tensor) -> None:
    """``got`` is a draw of the distribution ``ref`` was drawn from: constants (norm weights 1, biases 0) exactly,
    random tensors to within sampling error: the std to 15 % or 6 relative standard errors (about 0.5 / sqrt(n) for a
    normal or uniform draw of n entries) if larger, the mean to 6 standard errors."""
    got, ref = got.detach().double(), ref.detach().double()
    assert got.shape == ref.shape, name
    if float(ref.std()) == 0.0:
        assert torch.equal(got, ref), f"{name}: expected the constant {float(ref.flatten()[0])}"
        return
    ratio, tol = float(got.std()) / float(ref.std()), max(0.15, 3.0 / math.sqrt(ref.numel()))
    assert abs(ratio - 1.0) < tol, f"{name}: std {float(got.std()):.5f}, a fresh model has {float(ref.std()):.5f}"
    se = float(ref.std()) / math.sqrt(ref.numel())
    assert abs(float(got.mean()) - float(ref.mean())) < 6 * se, f"{name}: mean {float(got.mean()):.5f}"


def _check(model, fresh, loaded_state, reinit_prefixes):
    fresh_params = dict(fresh.named_parameters())
    n_reinit = 0
    for name, p in model.named_parameters():
        if name.startswith(reinit_prefixes):
            assert not torch.equal(p.detach(), loaded_state[name]), f"{name} was not re-initialised"
            _assert_same_distribution(name, p, fresh_params[name])
            n_reinit += 1
        else:
            assert torch.equal(p.detach(), loaded_state[name]), f"{name} is outside the k blocks but changed"
    assert n_reinit > 0


def test_gpt2_last_k_blocks_get_gpt2s_scaled_init(tmp_path):
    from transformers import GPT2LMHeadModel

    config = _gpt2_config()
    model = _checkpoint(GPT2LMHeadModel, config, tmp_path)
    loaded = {n: p.detach().clone() for n, p in model.named_parameters()}
    prepare_eu_k(model, EUKConfig(k=3), SimpleNamespace(seed=7))
    fresh = _fresh(GPT2LMHeadModel, config)
    top = ("transformer.h.5.", "transformer.h.6.", "transformer.h.7.", "transformer.ln_f.", "lm_head.")
    _check(model, fresh, loaded, top)
    for i in (5, 6, 7):  # the GPT-2 residual scaling, against the number itself, not only against a fresh model
        for proj in ("attn.c_proj", "mlp.c_proj"):
            std = float(model.get_parameter(f"transformer.h.{i}.{proj}.weight").detach().std())
            assert std == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.1), f"h.{i}.{proj}: std {std:.5f}"
        c_attn = model.get_parameter(f"transformer.h.{i}.attn.c_attn.weight").detach()
        assert float(c_attn.std()) == pytest.approx(0.02, rel=0.1)
    # only what was re-initialised trains
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(top) for n in trainable)


def test_llama_last_k_blocks_match_a_fresh_model(tmp_path):
    from transformers import LlamaForCausalLM

    config = _llama_config()
    model = _checkpoint(LlamaForCausalLM, config, tmp_path)
    loaded = {n: p.detach().clone() for n, p in model.named_parameters()}
    prepare_eu_k(model, EUKConfig(k=2), SimpleNamespace(seed=7))
    fresh = _fresh(LlamaForCausalLM, config)
    _check(model, fresh, loaded, ("model.layers.2.", "model.layers.3.", "model.norm.", "lm_head."))
    assert torch.equal(model.model.layers[3].input_layernorm.weight.detach(), torch.ones(64))


def test_reinitialisation_is_seeded_and_leaves_the_global_rng_alone(tmp_path):
    from transformers import GPT2LMHeadModel

    config = _gpt2_config()
    a = _checkpoint(GPT2LMHeadModel, config, tmp_path)
    b = GPT2LMHeadModel.from_pretrained(tmp_path / "ckpt")
    torch.manual_seed(99)
    reinitialize_(a, [a.transformer.h[7]], seed=5)
    after_a = torch.rand(1)
    torch.manual_seed(99)
    torch.rand(3)  # whatever ran before must not matter
    reinitialize_(b, [b.transformer.h[7]], seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    torch.manual_seed(99)
    assert torch.equal(after_a, torch.rand(1))  # the draw ran on a forked RNG


def test_resnet18_last_blocks_match_a_fresh_classifier():
    from image_track.models import ModelConfig, build_model

    def make(seed):
        return build_model(ModelConfig(arch="resnet18", width=8), [3, 32, 32], 10, [0.5] * 3, [0.25] * 3, seed=seed)

    model = make(0)
    with torch.no_grad():  # "trained": weights and BatchNorm statistics moved away from their init
        for p in model.parameters():
            p.mul_(3.0).add_(0.05)
        for name, b in model.named_buffers():
            if "running_" in name:
                b.add_(0.5)
    loaded = {n: p.detach().clone() for n, p in model.named_parameters()}
    prepare_eu_k(model, EUKConfig(k=2), SimpleNamespace(seed=7))  # the last stage and the head
    fresh = make(1)
    _check(model, fresh, loaded, ("blocks.4.", "blocks.5."))
    buffers, fresh_buffers = dict(model.named_buffers()), dict(fresh.named_buffers())
    for name, b in buffers.items():
        if name.startswith("blocks.4."):
            assert torch.equal(b, fresh_buffers[name]), f"{name}: BatchNorm statistics not reset"
        elif "running_" in name:
            assert not torch.equal(b, fresh_buffers[name]), f"{name} is outside the k blocks but was reset"
