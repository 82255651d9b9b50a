from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llm_unlearn.configs import ConfigError, build_config, load_config
from llm_unlearn.flags import parse_config
from llm_unlearn.stages.evaluate import EvalConfig
from llm_unlearn.stages.poison import PoisonConfig
from llm_unlearn.stages.run import ExperimentConfig
from llm_unlearn.stages.train import TrainConfig
from llm_unlearn.stages.unlearn import UnlearnConfig

RECIPES = sorted((Path(__file__).parents[1] / "recipes").rglob("*.yaml"))
# accelerate launch configs are not experiments: tests/test_distributed.py loads them with accelerate's own loader.
EXPERIMENT_RECIPES = [p for p in RECIPES if "accelerate_configs" not in p.parts]


def test_unknown_key_is_named_with_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key 'poison_fracton'.*did you mean 'poison_fraction'"):
        load_config(PoisonConfig, {"poison_fracton": 0.1})


def test_unknown_nested_key_has_its_path():
    with pytest.raises(ConfigError, match=r"unknown key 'train.learnin_rate'"):
        build_config(ExperimentConfig, {"train": {"learnin_rate": 1e-3}})


@pytest.mark.parametrize(
    "data, match",
    [
        ({"seed": "zero"}, "seed: expected an integer"),
        ({"seed": True}, "seed: expected an integer"),
        ({"poison_fraction": "lots"}, "poison_fraction: expected a number"),
        ({"label_names": "negative"}, "label_names: expected a list"),
        (
            {"attack_args": {"noise_scale": "relative"}},
            r"attack_args.noise_scale: 'relative' is not allowed; choose from \['rms', 'absolute'\]",
        ),
    ],
)
def test_wrong_types_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        load_config(PoisonConfig, data).validate()


def test_yaml_float_without_dot_is_accepted():
    cfg = load_config(TrainConfig, yaml.safe_load("learning_rate: 1e-3"))
    assert cfg.learning_rate == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "cls, data, match",
    [
        (PoisonConfig, {"poison_fraction": 0.0}, r"poison_fraction must be in \(0, 1\)"),
        (PoisonConfig, {"poison_fraction": 1.0}, r"poison_fraction must be in \(0, 1\)"),
        (
            PoisonConfig,
            {"attack": "flip"},
            r"unknown attack 'flip' for the llm track; choose from \['backdoor', 'gaussian', 'gradient_canceling'\]",
        ),
        (PoisonConfig, {"attack": "backdoor", "attack_args": {"trigger": "  "}}, "trigger must be a non-empty"),
        (PoisonConfig, {"attack_args": {"noise_eps": 0}}, "noise_eps must be > 0"),
        (
            PoisonConfig,
            {"attack": "backdoor", "attack_args": {"target_label": "neutral"}},
            "target_label 'neutral' is not in label_names",
        ),
        (PoisonConfig, {"noise_eps": 0.5}, r"^noise_eps moved: write attack_args.noise_eps$"),
        (UnlearnConfig, {"budget": 0}, r"budget must be in \(0, 1\]"),
        (UnlearnConfig, {"budget": 1.5}, r"budget must be in \(0, 1\]"),
        (UnlearnConfig, {"method": "forget_it"}, "unknown method 'forget_it'; choose from"),
        (UnlearnConfig, {"method": "neggrad_plus", "method_args": {"betta": 0.9}}, "unknown key 'betta'"),
        (EvalConfig, {"backend": "onnx"}, r"unknown generation backend 'onnx'; choose from \['hf', 'vllm'\]"),
        (ExperimentConfig, {"seeds": []}, "seeds must hold at least one seed"),
        (ExperimentConfig, {"methods": ["gd"], "method_args": {"gaa": {}}}, "method_args.gaa: .gaa. is not in"),
        (ExperimentConfig, {"train": {"output_dir": "x"}}, "train.output_dir is set by run"),
        (TrainConfig, {"trainer_args": {"no_such_arg": 1}}, "unknown TrainingArguments key 'no_such_arg'"),
    ],
)
def test_invalid_values(cls, data, match):
    with pytest.raises(ConfigError, match=match):
        build_config(cls, data)


def test_cli_flags_override_yaml(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("seeds: [0, 1]\ntrain: {learning_rate: 0.01, num_train_epochs: 2}\n")
    cfg = parse_config(ExperimentConfig, ["--config", str(path), "--train.learning_rate", "3e-4", "--seeds", "[5]"])
    assert cfg.seeds == [5]
    assert cfg.train.learning_rate == pytest.approx(3e-4)
    assert cfg.train.num_train_epochs == 2.0  # untouched YAML value survives


def test_cli_unknown_flag_is_config_error():
    with pytest.raises(ConfigError, match=r"unknown argument '--lr'"):
        parse_config(TrainConfig, ["--lr", "1"])


def test_string_flag_stays_string():
    cfg = parse_config(PoisonConfig, ["--text_column", "yes"])
    assert cfg.text_column == "yes"
    cfg = parse_config(PoisonConfig, ["--attack", "backdoor", "--attack_args", "{trigger: 'yes'}"])
    assert cfg.build_attack().args.trigger == "yes"


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config(TrainConfig, ["--config", "/nonexistent/x.yaml"])


@pytest.mark.parametrize(
    "path", EXPERIMENT_RECIPES, ids=[str(p.relative_to(p.parents[1])) for p in EXPERIMENT_RECIPES]
)
def test_every_recipe_parses(path, monkeypatch):
    data = yaml.safe_load(path.read_text())
    if (data.get("eval") or {}).get("backend") == "vllm":
        # Recipes for GPU machines name the vllm backend, whose validation asks whether vllm is installed; CI has no
        # vllm, so answer "installed" for it alone: every other key is still checked.
        import importlib.util

        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "vllm" else find_spec(n, *a))
    from llm_unlearn.stages.run import SuiteConfig, suite_paths, track_name
    from llm_unlearn.tracks import get_track

    if "configs" in data:  # a suite recipe: its experiment files exist (next to it) and parse on their own
        suite = build_config(SuiteConfig, data)
        assert all(p.is_file() for p in suite_paths(suite.configs, path)), suite.configs
        return

    # Each recipe parses into its track's experiment dataclass (llm unless it says `track: image`, ...).
    cfg = build_config(get_track(track_name(data)).config_cls, data)
    assert cfg.track == track_name(data)


def test_there_are_recipes():
    names = {p.name for p in RECIPES}
    assert {"llm_gaussian.yaml", "llm_backdoor.yaml"} <= names
    for scale in ("gpt2-medium-imdb", "llama-3.2-1b-imdb"):  # the real-scale recipes, each with its hardware line
        for attack in ("gaussian", "backdoor"):
            path = Path(__file__).parents[1] / "recipes" / scale / f"{attack}.yaml"
            assert path.read_text().startswith("# Hardware:"), path
            assert yaml.safe_load(path.read_text())["poison"]["attack"] == attack
