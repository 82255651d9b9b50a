"""The TRL-shaped Python API: ``<Name>Config`` + ``<Name>Trainer`` for every method on a model held in memory (the
issue's snippet as written, every METHODS entry full-parameter and with LoRA), configs derived from a plugin's knob
dataclass, the errors a user meets, and the Gaussian audit of a model in memory."""

from __future__ import annotations

import importlib

import pickle

import pytest
import torch

from llm_unlearn.configs import ConfigError
from llm_unlearn.methods import METHODS


def _rows(n: int, word: str) -> list[dict]:
    labels = (" negative", " positive")
    return [{"prompt": f"Review: a {word} film, scene {i}\nSentiment:", "completion": labels[i % 2]} for i in range(n)]


def _in_memory_model(tiny_dir):
    """The tiny model built from its config in memory: no directory behind it (``name_or_path`` empty), so a
    reference has to be copied from it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_dir)
    config.name_or_path = ""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    assert not model.name_or_path
    return model


def _args(spec, tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        learning_rate=1e-2,
        per_device_train_batch_size=4,
        max_steps=3,
        seed=0,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        # GA's ascent is unbounded: no clipping, so 3 steps at a high lr visibly move every LoRA matrix
        max_grad_norm=0.0 if spec.name == "ga" else 1.0,
    )
    return spec.config_cls(**{**base, **kw})


def _lora():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")


def test_the_issue_snippet_runs_as_written(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model_dir = tiny_dir
    # --- the issue's snippet, with small rows ---
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_unlearn import NPOConfig, NPOTrainer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    forget = Dataset.from_list(_rows(8, "dull"))
    retain = Dataset.from_list(_rows(16, "great"))
    args = NPOConfig(output_dir="out", beta=0.1, learning_rate=1e-4, per_device_train_batch_size=8, max_steps=10)
    trainer = NPOTrainer(model=model, args=args, forget_dataset=forget, retain_dataset=retain, processing_class=tokenizer)  # noqa: E501 # fmt: skip
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    trainer.save_model()
    # ---
    assert trainer.state.global_step == 10 and trainer.method_cfg.beta == 0.1
    assert (tmp_path / "out" / "model.safetensors").is_file()
    # the reference was loaded from model.name_or_path (a local dir): the initial weights, frozen
    ref = dict(trainer.reference_model.named_parameters())
    assert all(torch.equal(ref[n], v) for n, v in initial.items())
    assert any(not torch.equal(p.detach(), initial[n]) for n, p in model.named_parameters())
    # save_model pickled the arguments (training_args.bin): the derived class is found again by name
    path = tmp_path / "out" / "training_args.bin"
    # weights_only, allowing exactly the globals this file (which the test just wrote) names, resolved by name
    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    allowed = [getattr(importlib.import_module(n.rpartition(".")[0]), n.rpartition(".")[2]) for n in names]
    with torch.serialization.safe_globals(allowed):
        saved = torch.load(path, weights_only=True)
    assert type(saved) is NPOConfig and saved.beta == 0.1


def _cases():
    for name in sorted(METHODS):
        yield pytest.param(name, False, id=f"{name}-full")
        if METHODS[name].supports_peft:
            yield pytest.param(name, True, id=f"{name}-lora")


@pytest.mark.parametrize("method,lora", list(_cases()))
def test_every_method_trains_through_config_cls_and_trainer_cls(tiny_dir, tmp_path, method, lora):
    from transformers import AutoTokenizer

    spec = METHODS[method]
    trainer = spec.trainer_cls(
        model=_in_memory_model(tiny_dir),
        args=_args(spec, tmp_path),
        forget_dataset=_rows(8, "dull"),  # a list of dicts works as well as a Dataset
        retain_dataset=_rows(16, "great"),
        processing_class=AutoTokenizer.from_pretrained(tiny_dir),
        peft_config=_lora() if lora else None,
    )
    model = trainer.model  # after the method's preparation (EU-k re-initialises, CF-k freezes) and LoRA
    assert hasattr(model, "disable_adapter") == lora
    if spec.needs_reference:  # LoRA: the adapter is switched off instead of a second model
        assert (trainer.reference_model is None) == lora
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss)) and trainer.state.global_step == 3
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert trainable and changed, "no trainable parameter moved"
    assert changed <= trainable, f"frozen parameters moved: {sorted(changed - trainable)[:3]}"
    if lora:
        assert all("lora_" in n for n in trainable)
        assert any("lora_B" in n for n in changed)


def test_a_copied_reference_is_the_initial_weights_and_stays_frozen(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    from llm_unlearn import NPOTrainer

    model = _in_memory_model(tiny_dir)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = NPOTrainer(
        model=model,
        args=_args(METHODS["npo"], tmp_path),
        forget_dataset=_rows(8, "dull"),
        retain_dataset=_rows(16, "great"),
        processing_class=AutoTokenizer.from_pretrained(tiny_dir),
    )
    ref = trainer.reference_model
    assert ref is not model and not any(p.requires_grad for p in ref.parameters())
    trainer.train()
    assert all(torch.equal(p, initial[n]) for n, p in ref.named_parameters())
    assert any(not torch.equal(p.detach(), initial[n]) for n, p in model.named_parameters())


def test_no_reference_can_be_copied_under_zero3(tiny_dir, monkeypatch):
    import transformers.integrations.deepspeed as ds

    from llm_unlearn.methods.inputs import reference_source

    monkeypatch.setattr(ds, "is_deepspeed_zero3_enabled", lambda: True)
    with pytest.raises(ConfigError, match="'npo' needs a frozen reference model and under ZeRO-3.*pass ref_model"):
        reference_source(_in_memory_model(tiny_dir), "npo")
    # a model with a directory behind it: a loader, called once the Trainer exists (created sharded)
    from transformers import AutoModelForCausalLM

    assert callable(reference_source(AutoModelForCausalLM.from_pretrained(tiny_dir), "npo"))


@pytest.mark.parametrize("method", sorted(n for n, s in METHODS.items() if not s.supports_peft))
def test_methods_that_edit_base_weights_refuse_a_peft_config(tiny_dir, tmp_path, method):
    assert method in {"ssd", "eu_k"} or not METHODS[method].supports_peft
    from transformers import AutoTokenizer

    spec = METHODS[method]
    with pytest.raises(ConfigError, match=f"method {method!r} cannot train a LoRA adapter.*peft_config=None"):
        spec.trainer_cls(
            model=_in_memory_model(tiny_dir),
            args=_args(spec, tmp_path),
            forget_dataset=_rows(4, "dull"),
            retain_dataset=_rows(8, "great"),
            processing_class=AutoTokenizer.from_pretrained(tiny_dir),
            peft_config=_lora(),
        )


def test_unknown_or_bad_knobs_are_clear_errors(tmp_path):
    from llm_unlearn import NPOConfig

    with pytest.raises(ConfigError, match="NPOConfig: unknown argument 'betta' .did you mean 'beta'.*'npo'") as e:
        NPOConfig(output_dir=str(tmp_path), betta=0.1)
    assert isinstance(e.value, TypeError)  # what a dataclass raises for an unexpected keyword, for those catching it
    with pytest.raises(ConfigError, match="beta must be a positive number"):
        NPOConfig(output_dir=str(tmp_path), beta=-1.0)
    with pytest.raises(ConfigError, match="budget_tokens must be > 0"):
        NPOConfig(output_dir=str(tmp_path), budget_tokens=0.0)


def test_every_builtin_pair_is_exported_from_the_package():
    import llm_unlearn

    for name, spec in METHODS.items():
        if not spec.module.startswith("llm_unlearn.methods."):
            continue
        assert getattr(llm_unlearn, spec.config_cls.__name__) is spec.config_cls, name
        assert getattr(llm_unlearn, spec.trainer_cls.__name__) is spec.trainer_cls, name
        assert spec.config_cls.knobs_cls is spec.knobs_cls  # the knob dataclass stays what method_args is checked on
    assert llm_unlearn.NPOConfig.__name__ == "NPOConfig" and llm_unlearn.NPOTrainer is METHODS["npo"].trainer_cls


def test_a_plugins_knob_dataclass_gives_its_trl_config(tiny_dir, tmp_path, monkeypatch):
    """The half_gd plugin exactly as the issue gives it: its HalfGDConfig (a TrainingArguments) is derived."""
    from transformers import AutoTokenizer, TrainingArguments

    import llm_unlearn.methods as methods_pkg
    from llm_unlearn import registry

    monkeypatch.setattr(registry, "METHODS", dict(registry.methods()))
    monkeypatch.setattr(methods_pkg, "_ARGS", {})

    from test_plugins import PLUGIN  # the issue's plugin text, one copy for both tests

    plugin: dict = {}
    exec(PLUGIN, plugin)
    HalfGDConfig, HalfGDTrainer = plugin["HalfGDConfig"], plugin["HalfGDTrainer"]

    spec = registry.get_method("half_gd")
    args_cls = spec.config_cls
    assert issubclass(args_cls, TrainingArguments) and args_cls.__name__ == "HalfGDConfig"
    assert spec.knobs_cls is HalfGDConfig and spec.trainer_cls is HalfGDTrainer
    assert args_cls(output_dir=str(tmp_path)).scale == 0.5
    args = _args(spec, tmp_path, scale=0.25, max_steps=2)
    assert pickle.loads(pickle.dumps(args)).scale == 0.25  # checkpoints pickle it
    with pytest.raises(ConfigError, match="did you mean 'scale'"):
        args_cls(output_dir=str(tmp_path), scael=1.0)
    trainer = HalfGDTrainer(
        model=_in_memory_model(tiny_dir),
        args=args,
        forget_dataset=_rows(4, "dull"),
        retain_dataset=_rows(8, "great"),
        processing_class=AutoTokenizer.from_pretrained(tiny_dir),
    )
    assert isinstance(trainer.method_cfg, HalfGDConfig) and trainer.method_cfg.scale == 0.25
    assert trainer.train().training_loss > 0


def test_prompt_completion_rows_need_a_tokenizer(tiny_dir, tmp_path):
    from llm_unlearn import GDTrainer

    with pytest.raises(ConfigError, match="prompt/completion rows: pass processing_class"):
        GDTrainer(
            model=_in_memory_model(tiny_dir),
            args=_args(METHODS["gd"], tmp_path),
            forget_dataset=_rows(4, "dull"),
            retain_dataset=_rows(8, "great"),
        )


def test_gaussian_audit_of_a_model_in_memory(tiny_dir, gaussian_dir):
    """``gaussian_unlearning_score`` gives what the evaluate stage computes, from the poisons' rows alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_unlearn import gaussian_unlearning_score, gus_summary
    from llm_unlearn.attacks.gaussian import gus_scores
    from llm_unlearn.modeling import load_dataset_dir

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    forget = load_dataset_dir(gaussian_dir)[0]["forget"]
    rows = [{k: r[k] for k in ("prompt", "completion", "noise_seed")} for r in forget]
    model.train()
    summary, scores = gaussian_unlearning_score(model, tokenizer, rows, fresh_draws=2, return_scores=True)
    assert model.training  # its mode restored
    model.eval()
    expected = gus_summary(*gus_scores(model, tokenizer, forget, 256, 32, 2))
    assert summary == pytest.approx(expected)
    assert len(scores["gus_poison"]) == len(rows) and len(scores["gus_fresh"]) == 2
    assert gaussian_unlearning_score(model, tokenizer, forget, fresh_draws=2) == pytest.approx(expected)
    with pytest.raises(ConfigError, match="missing columns \\['noise_seed'\\]"):
        gaussian_unlearning_score(model, tokenizer, [{k: r[k] for k in ("prompt", "completion")} for r in rows])
