"""A head fine-tuned over a pretrained model's frozen features (the gradient-canceling recipe's victim): the embedded
model's pretraining, ``train.trainable_modules`` in the train stage and in the attacker's surrogate, and their bad
values."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_SHAPE

from llm_unlearn.configs import ConfigError


def _model(seed=0, **kw):
    from llm_unlearn.embedded import TinyModelConfig, build_tiny_model, build_tiny_tokenizer

    cfg = TinyModelConfig(**{**TINY_SHAPE, **kw})
    tok = build_tiny_tokenizer(cfg.vocab_size, cfg.corpus_reviews)
    return tok, build_tiny_model(tok, cfg, seed=seed), cfg


def test_freeze_except_trains_only_matching_parameters_and_refuses_a_pattern_matching_nothing():
    from llm_unlearn.training import freeze_except

    _, model, _ = _model()
    freeze_except(model, r"^lm_head\.")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["lm_head.weight"]
    freeze_except(model, None)  # None leaves the model as it is
    assert [n for n, p in model.named_parameters() if p.requires_grad] == trainable
    with pytest.raises(ConfigError, match=r"'classifier' matches no parameter of the model; its parameters: model\."):
        freeze_except(model, "classifier")


def test_pretraining_is_deterministic_and_learns_the_sentiment_task():
    from llm_unlearn.embedded import pretrain_tiny
    from llm_unlearn.tasks.causal_lm import CompletionCollator, tokenize_example
    from llm_unlearn.tasks.reviews import embedded_reviews

    tok, fresh, cfg = _model(pretrain_reviews=256, pretrain_epochs=4)
    _, a, _ = _model()
    _, b, _ = _model()
    info = pretrain_tiny(a, tok, cfg, seed=0)
    pretrain_tiny(b, tok, cfg, seed=0)
    assert info["pretrain_steps"] == 32  # 256 reviews / 32 a batch x 4 epochs
    for (n, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(x, y), n

    held_out = embedded_reviews(8, 64, seed=3, min_sentences=1, max_sentences=2)["test"]
    rows = [tokenize_example(tok, f"Review: {r['text']}\nSentiment:", f" {r['label']}", 256) for r in held_out]
    batch = CompletionCollator(tok.pad_token_id)(rows)

    def loss(model):
        with torch.no_grad():
            return float(model.eval()(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}).loss)

    # the completion (label + eos) of reviews it never saw: more than a nat below the random init's ~log(vocab)
    # after 32 steps (measured 4.50 against 6.12; no training leaves it at 6.12)
    assert loss(a) < loss(fresh) - 1.0


def test_train_stage_with_trainable_modules_moves_only_those(tmp_path, tiny_dir, gaussian_dir):
    from safetensors.torch import load_file

    from llm_unlearn.stages.train import TrainConfig, main

    cfg = TrainConfig(
        model_name_or_path=tiny_dir,
        dataset_dir=gaussian_dir,
        output_dir=str(tmp_path / "initial"),
        num_train_epochs=1,
        per_device_train_batch_size=16,
        progress=False,
        trainable_modules="lm_head",
    )
    main(cfg)
    before = load_file(f"{tiny_dir}/model.safetensors")
    after = load_file(str(tmp_path / "initial" / "model.safetensors"))
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["lm_head.weight"]


def test_the_attackers_surrogate_trains_what_the_victim_trains(tmp_path, tiny_dir, gaussian_dir):
    from safetensors.torch import load_file

    from llm_unlearn.attacks.gc_craft import train_surrogate
    from llm_unlearn.modeling import load_dataset_dir, load_tokenizer, tokenize_split
    from llm_unlearn.stages.train import TrainConfig

    cfg = TrainConfig(
        model_name_or_path=tiny_dir,
        dataset_dir=gaussian_dir,
        output_dir=str(tmp_path),
        num_train_epochs=1,
        per_device_train_batch_size=16,
        progress=False,
        trainable_modules="lm_head",
    )
    tok = load_tokenizer(tiny_dir)
    dd, _ = load_dataset_dir(gaussian_dir)
    model, _ = train_surrogate(cfg, tok, tokenize_split(dd["train"], tok, 64), tmp_path, seed=1)
    before = load_file(f"{tiny_dir}/model.safetensors")
    state = model.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], state[k]))
    assert changed == ["lm_head.weight"]


@pytest.mark.parametrize(
    "override, message",
    [
        ({"tiny": {"pretrain_reviews": 10}}, "tiny.pretrain_reviews must be 0 (no pretraining) or >= 64, got 10"),
        ({"tiny": {"pretrain_epochs": 0}}, "tiny.pretrain_epochs must be > 0"),
        ({"tiny": {"pretrain_min_sentences": 3, "pretrain_max_sentences": 2}}, "tiny.pretrain_min_sentences must"),
        ({"train": {"trainable_modules": "lm_head("}}, "trainable_modules 'lm_head(' is not a regex"),
    ],
)
def test_bad_values_are_config_errors(override, message):
    import re

    import yaml

    from llm_unlearn import ExperimentConfig, build_config

    with open("recipes/tiny/llm_gaussian.yaml") as f:
        data = yaml.safe_load(f)
    for section, values in override.items():
        data.setdefault(section, {}).update(values)
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config(ExperimentConfig, data)


def test_a_frozen_head_run_end_to_end_and_its_replay_script(tmp_path):
    """The third pass's setting through ``run`` (a pretrained embedded base, a head-only victim, flipped poisons),
    then ``scripts/gc_frozen_head.py`` on its seed dir: the body of every trained model is the base's, the poisons
    carry the target label, and the replay prints the three accuracies."""
    import json
    import os
    import re
    import subprocess
    import sys

    from safetensors.torch import load_file

    from llm_unlearn import run_experiment

    cfg = {
        "seeds": [0],
        "tiny": {**TINY_SHAPE, "pretrain_reviews": 64, "pretrain_epochs": 1},
        "poison": {
            "attack": "gradient_canceling",
            "poison_fraction": 0.2,
            "attack_args": {
                "poison_labels": "flipped",
                "perturbation_init": "zero",
                "corruption_steps": 10,
                "gc_steps": 2,
                "craft_batch_size": 16,
            },
            "embedded_n_train": 80,
            "embedded_n_test": 30,
        },
        "train": {
            "num_train_epochs": 1,
            "per_device_train_batch_size": 16,
            "progress": False,
            "trainable_modules": "lm_head",
        },
        "unlearn": {"per_device_train_batch_size": 8, "progress": False},
        "eval": {"max_new_tokens": 2},
        "methods": ["gd"],
        "budgets": [0.2],
        "diagnostics": False,
    }
    run_experiment(cfg, output_dir=str(tmp_path / "run"))
    seed = tmp_path / "run" / "seed_0"
    base = load_file(str(seed / "base" / "model.safetensors"))
    for model in ("initial", "retrain"):
        trained = load_file(str(seed / model / "model.safetensors"))
        assert sorted(k for k in base if not torch.equal(base[k], trained[k])) == ["lm_head.weight"], model
    manifest = json.loads((seed / "poison" / "manifest.json").read_text())
    assert manifest["labels"] == "flipped" and manifest["target_label"] == "negative"  # label_names[0]
    info = json.loads((seed / "initial" / "training_info.json").read_text())["gradient_canceling"]
    assert info["target_label_share"] >= info["surrogate_label_share"]

    out = subprocess.run(
        [sys.executable, "scripts/gc_frozen_head.py", str(seed), "--epochs", "1"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for line in ("pretrained head", "gold (clean rows)", "initial (clean rows + 16 poisons)"):
        value = re.search(re.escape(line) + r": ([0-9.]+)", out.stdout)
        assert value and 0.0 <= float(value.group(1)) <= 1.0, (line, out.stdout)
