"""The vLLM evaluation backend: token-for-token parity with HF greedy generation (base model, LoRA adapter served per
request, merged adapter) and equal clean accuracy / ASR through the evaluate stage.

The engine tests need the ``vllm`` extra (``scripts/test.sh`` installs it, so CI runs them); each starts one engine
(~25-75 s on 2 CPU cores). The plumbing tests at the bottom run everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from llm_unlearn.configs import ConfigError

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vllm is not installed: `pip install -e '.[vllm]'` then "
    "`pip uninstall -y torchvision torchaudio torchcodec` (scripts/test.sh does both)",
)
LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def trained_backdoor(tmp_path_factory, tiny_dir, backdoor_dir):
    """The tiny model fitted long enough on the backdoor set that its answers differ between prompts (~10 s)."""
    from llm_unlearn.stages.train import TrainConfig, main

    out = tmp_path_factory.mktemp("vllm_initial")
    cfg = TrainConfig(
        model_name_or_path=tiny_dir,
        dataset_dir=backdoor_dir,
        output_dir=str(out),
        split="train",
        num_train_epochs=20,
        learning_rate=3e-3,
        per_device_train_batch_size=16,
        progress=False,
    )
    return str(main(cfg))


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, trained_backdoor):
    """A LoRA adapter (all linear layers, r=8) with random non-zero A and B, saved as safetensors: it changes the
    model's answers on some prompts, as an unlearning adapter would."""
    import torch
    from peft import LoraConfig, get_peft_model

    from llm_unlearn.modeling import load_model, load_tokenizer

    out = tmp_path_factory.mktemp("vllm_lora")
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(load_model(trained_backdoor), lora)
    model.save_pretrained(out, safe_serialization=True)
    load_tokenizer(trained_backdoor).save_pretrained(out)
    return str(out)


def _prompts(model_dir, dataset_dir):
    from llm_unlearn.modeling import load_dataset_dir, load_tokenizer
    from llm_unlearn.stages.evaluate import prompts_for

    dd, _ = load_dataset_dir(dataset_dir)
    tok = load_tokenizer(model_dir)
    return tok, prompts_for(tok, dd["test"], 256, LABELS) + prompts_for(tok, dd["test_triggered"], 256, LABELS)


def _hf_ids(model_dir, adapter_dir, tok, prompts, max_new_tokens):
    from peft import PeftModel

    from llm_unlearn.generation.hf import generate_ids
    from llm_unlearn.modeling import load_model

    model = load_model(model_dir)
    if adapter_dir:
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return generate_ids(model, tok, prompts, max_new_tokens, batch_size=16)


@needs_vllm
def test_vllm_greedy_equals_hf_base_and_lora(trained_backdoor, lora_dir, backdoor_dir):
    from llm_unlearn.generation import stop_token_ids
    from llm_unlearn.generation.vllm import generate_ids

    tok, prompts = _prompts(trained_backdoor, backdoor_dir)
    hf_base = _hf_ids(trained_backdoor, None, tok, prompts, 6)
    hf_lora = _hf_ids(trained_backdoor, lora_dir, tok, prompts, 6)
    assert hf_base != hf_lora  # the adapter matters, so serving it (or not) is tested
    assert len({tuple(x) for x in hf_base}) > 1  # answers differ between prompts
    # One engine serves both: the base model, and the adapter per request (LoRARequest).
    v_base, v_lora = generate_ids(
        trained_backdoor, [prompts, prompts], 6, stop_token_ids(tok), adapter_dir=lora_dir, use_adapter=[False, True]
    )
    assert v_base == hf_base
    assert v_lora == hf_lora


@needs_vllm
def test_vllm_merged_adapter_equals_hf(trained_backdoor, lora_dir, backdoor_dir):
    from llm_unlearn.generation.hf import generate
    from llm_unlearn.generation.vllm import generate as vllm_generate

    tok, prompts = _prompts(trained_backdoor, backdoor_dir)
    prompts = prompts[:24]
    from peft import PeftModel

    from llm_unlearn.modeling import load_model

    merged = PeftModel.from_pretrained(load_model(trained_backdoor), lora_dir).merge_and_unload()
    hf = generate(merged, tok, prompts, 4)
    (texts,) = vllm_generate(trained_backdoor, tok, [prompts], 4, adapter_dir=lora_dir, adapter_mode="merge")
    assert texts == hf


@needs_vllm
def test_evaluate_stage_hf_and_vllm_agree(tmp_path, trained_backdoor, lora_dir, backdoor_dir):
    from llm_unlearn.stages.evaluate import EvalConfig, main
    from llm_unlearn.files import read_json

    results = {}
    for backend in ("hf", "vllm"):
        cfg = EvalConfig(
            model_dir=trained_backdoor,
            adapter_dir=lora_dir,
            dataset_dir=backdoor_dir,
            output_dir=str(tmp_path / backend),
            backend=backend,
            max_new_tokens=2,
        )
        cfg.validate()
        out = main(cfg)
        results[backend] = (read_json(out / "eval_results.json"), read_json(out / "per_sample.json"))
    (m_hf, p_hf), (m_v, p_v) = results["hf"], results["vllm"]
    assert p_v["test_predictions"] == p_hf["test_predictions"]
    assert p_v["triggered_predictions"] == p_hf["triggered_predictions"]
    assert m_v["clean_accuracy"] == m_hf["clean_accuracy"]
    assert m_v["asr"] == m_hf["asr"]
    assert m_hf["asr"] is not None and 0 < m_hf["clean_accuracy"] < 1


@needs_vllm
def test_unknown_engine_argument_is_a_config_error(trained_backdoor):
    from llm_unlearn.generation.vllm import generate_ids

    with pytest.raises(ConfigError, match=r"vllm_args: unknown vllm engine argument\(s\) \['gpu_mem'\]"):
        generate_ids(trained_backdoor, [[[1, 2]]], 2, [2], engine_args={"gpu_mem": 0.5})


# --- plumbing, no engine -------------------------------------------------------------------------------------------


def test_missing_vllm_is_a_config_error_with_install_hint(monkeypatch):
    from llm_unlearn.stages.evaluate import EvalConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ConfigError, match=r"not installed; install the vllm extra.*uninstall -y torchvision"):
        EvalConfig(backend="vllm").validate()
    EvalConfig(backend="hf").validate()
    # vllm in another environment (GPU vllm pins its own torch): only that interpreter must exist.
    EvalConfig(backend="vllm", vllm_python=sys.executable).validate()
    with pytest.raises(ConfigError, match="vllm_python: '/nonexistent/python' is not an executable"):
        EvalConfig(backend="vllm", vllm_python="/nonexistent/python").validate()


def test_reserved_vllm_args_are_refused():
    from llm_unlearn.configs import build_config
    from llm_unlearn.stages.evaluate import EvalConfig

    with pytest.raises(ConfigError, match=r"vllm_args: \['dtype', 'model'\] are set by llm-unlearn"):
        build_config(EvalConfig, {"vllm_args": {"model": "x", "dtype": "half"}})
    with pytest.raises(ConfigError, match="vllm_adapter"):
        build_config(EvalConfig, {"vllm_adapter": "fuse"})


def test_stop_ids_and_truncation():
    from types import SimpleNamespace

    from llm_unlearn.generation import stop_token_ids, truncate_at_stop

    tok = SimpleNamespace(eos_token_id=2)
    assert stop_token_ids(tok) == [2]
    assert stop_token_ids(tok, 7) == [2, 7]
    assert stop_token_ids(tok, [9, 2]) == [2, 9]
    assert truncate_at_stop([5, 9, 0, 0], [2, 9]) == [5, 9]  # HF pads after EOS; vLLM ends there
    assert truncate_at_stop([5, 6], [2]) == [5, 6]


def test_lora_rank_rounds_up_to_vllm_ranks(tmp_path):
    from llm_unlearn.generation.vllm import lora_rank

    for r, want in ((4, 8), (8, 8), (12, 16), (64, 64)):
        (tmp_path / "adapter_config.json").write_text(json.dumps({"r": r}))
        assert lora_rank(str(tmp_path)) == want
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 1024}))
    with pytest.raises(ConfigError, match="vllm_adapter: merge"):
        lora_rank(str(tmp_path))


def test_kv_cache_space_sized_from_the_model(tmp_path, monkeypatch):
    from llm_unlearn.generation import vllm as backend
    from llm_unlearn.generation.vllm import kv_cache_gib

    cfg = {"num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096, "num_hidden_layers": 32}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    # Llama-3-8B shape, bf16: 2 * 32 layers * 8 heads * 128 * 2 B = 128 KiB per token; 1,000 prompts of 197 + 3
    # tokens: 24.4 GiB, +25 % = 30.5 -> 31 GiB, unless a quarter of the free memory is less.
    monkeypatch.setattr(backend, "_available_gib", lambda: 1000)
    assert kv_cache_gib(str(tmp_path), [[1] * 197] * 1000, 3, "bfloat16") == 31
    assert kv_cache_gib(str(tmp_path), [[1] * 197] * 1000, 3, "float32") == 62
    monkeypatch.setattr(backend, "_available_gib", lambda: 16)
    assert kv_cache_gib(str(tmp_path), [[1] * 197] * 1000, 3, "bfloat16") == 4
    assert kv_cache_gib(str(tmp_path), [[1] * 10], 3, "float32") == 1  # tiny needs: at least 1 GiB
    assert kv_cache_gib(str(tmp_path / "missing"), [[1]], 3, "float32") == 4  # vLLM's default when unknown
