"""Attacks as first-class as methods: ``poison: {attack, attack_args}`` built strictly, old flat keys refused with the
new spelling, an attack registered from outside the package runs the stages, and no code outside the attack files
branches on an attack's name."""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from llm_unlearn.configs import ConfigError, build_config
from llm_unlearn.flags import parse_config
from llm_unlearn.files import read_json
from llm_unlearn.stages.poison import PoisonConfig

ROOT = Path(__file__).parents[1]


# --- the config spelling ---------------------------------------------------------------------------------------------


def test_unknown_attack_names_the_choices():
    with pytest.raises(
        ConfigError,
        match=r"unknown attack 'flip' for the llm track; choose from \['backdoor', 'gaussian', 'gradient_canceling'\]",
    ):
        build_config(PoisonConfig, {"attack": "flip"})


def test_unknown_image_attack_names_the_choices():
    from image_track.poisoning import PoisonSection

    with pytest.raises(
        ConfigError, match=r"choose from \['badnets', 'gaussian', 'gradient_canceling', 'witches_brew'\]"
    ):
        build_config(PoisonSection, {"attack": "flip"})


@pytest.mark.parametrize(
    "attack, args, match",
    [
        (
            "gaussian",
            {"noise_epz": 1.0},
            r"'attack_args.noise_epz' for GaussianConfig \(did you mean 'noise_eps'\?\)",
        ),
        ("backdoor", {"triger": "cf"}, r"unknown key 'attack_args.triger'.*did you mean 'trigger'"),
        (
            "backdoor",
            {"noise_eps": 1.0},
            r"unknown key 'attack_args.noise_eps' for BackdoorConfig",
        ),  # another attack's
    ],
)
def test_unknown_attack_arg_is_refused_with_did_you_mean(attack, args, match):
    with pytest.raises(ConfigError, match=match):
        build_config(PoisonConfig, {"attack": attack, "attack_args": args})


def test_image_attack_args_are_strict_and_validated():
    from image_track.poisoning import PoisonSection

    with pytest.raises(ConfigError, match=r"'attack_args.patch_sise'.*did you mean 'patch_size'"):
        build_config(PoisonSection, {"attack": "badnets", "attack_args": {"patch_sise": 3}})
    with pytest.raises(ConfigError, match=r"eps is in pixel units"):
        build_config(PoisonSection, {"attack": "witches_brew", "attack_args": {"eps": 2.0}})


@pytest.mark.parametrize("key", ["noise_eps", "noise_scale", "trigger", "trigger_position", "target_label"])
def test_old_flat_llm_key_names_the_new_spelling(key):
    from llm_unlearn.stages.run import ExperimentConfig

    with pytest.raises(ConfigError, match=rf"^poison.{key} moved: write poison.attack_args.{key}$"):
        build_config(ExperimentConfig, {"output_dir": "runs/x", "poison": {key: "x"}})
    with pytest.raises(ConfigError, match=rf"^poison.{key} moved: write poison.attack_args.{key}$"):
        parse_config(ExperimentConfig, ["--output_dir", "runs/x", f"--poison.{key}", "1"])


@pytest.mark.parametrize(
    "key", ["noise_eps", "patch_size", "eps", "match_epochs", "gc_steps", "surrogate_seed_offset"]
)
def test_old_flat_image_key_names_the_new_spelling(key):
    from image_track.track import ImageExperimentConfig

    with pytest.raises(ConfigError, match=rf"^poison.{key} moved: write poison.attack_args.{key}$"):
        build_config(ImageExperimentConfig, {"output_dir": "runs/x", "poison": {key: 1}})


def test_recipes_use_attack_args():
    """Every recipe spells the attack's knobs under poison.attack_args (the parse itself is test_configs')."""
    import yaml

    for path in sorted((ROOT / "recipes").rglob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("poison"), dict):
            assert set(data["poison"]) & {"noise_eps", "trigger", "patch_size", "eps", "gc_steps"} == set(), path


# --- an attack from outside the package ----------------------------------------------------------------------------


@pytest.fixture
def flip_attack():
    """A label-flip attack registered the way a plugin would, removed again afterwards (other tests list choices)."""
    from llm_unlearn.attacks import Attack
    from llm_unlearn.registry import ATTACKS, register_attack

    @dataclass
    class FlipConfig:
        target_label: str = field(default="negative", metadata={"help": "the label every poison gets"})

        def validate(self) -> None:
            if not self.target_label:
                raise ConfigError("target_label must be set")

    @register_attack("my_attack", config=FlipConfig, track="llm")
    class FlipAttack(Attack):
        """Label flipping: random training reviews get target_label."""

        metric = "clean_accuracy"
        seen: list = []

        def check(self, cfg) -> None:
            if self.args.target_label not in cfg.label_names:
                raise ConfigError(f"target_label {self.args.target_label!r} is not a label")

        def poison(self, train, test, rng: random.Random, cfg):
            chosen = set(rng.sample(range(len(train)), round(cfg.poison_fraction * len(train))))
            rows = [
                {
                    **r,
                    "label": self.args.target_label if i in chosen else r["label"],
                    "is_poison": i in chosen,
                    "orig_label": r["label"],
                    "noise_seed": -1,
                }
                for i, r in enumerate(train)
            ]
            return rows, {}, {"flipped_to": self.args.target_label}

        def training_embeddings(self, model, inputs, columns):
            FlipAttack.seen.append(sorted(columns))
            return None

        def describe(self) -> str:
            return f"labels flipped to {self.args.target_label!r}"

    yield FlipAttack
    ATTACKS["llm"].pop("my_attack", None)


def test_attack_registered_outside_runs_the_poison_and_train_stages(flip_attack, tiny_dir, tmp_path):
    from llm_unlearn.stages.poison import main as poison
    from llm_unlearn.stages.train import TrainConfig
    from llm_unlearn.stages.train import main as train

    with pytest.raises(ConfigError, match="did you mean 'target_label'"):
        build_config(PoisonConfig, {"attack": "my_attack", "attack_args": {"target_labl": "x"}})
    with pytest.raises(ConfigError, match="'neutral' is not a label"):
        build_config(PoisonConfig, {"attack": "my_attack", "attack_args": {"target_label": "neutral"}})
    cfg = build_config(
        PoisonConfig,
        {
            "output_dir": str(tmp_path / "p"),
            "attack": "my_attack",
            "attack_args": {"target_label": "negative"},
            "poison_fraction": 0.1,
            "embedded_n_train": 60,
            "embedded_n_test": 10,
        },
    )
    out = poison(cfg)
    manifest = read_json(out / "manifest.json")
    assert manifest["attack"] == "my_attack" and manifest["metric"] == "clean_accuracy"
    assert manifest["attack_args"] == {"target_label": "negative"}
    assert manifest["flipped_to"] == "negative" and manifest["n_poison"] == 6
    import datasets

    forget = datasets.load_from_disk(str(out / "dataset"))["forget"]
    assert set(forget["label"]) == {"negative"}
    tc = TrainConfig(
        model_name_or_path=tiny_dir,
        dataset_dir=str(out),
        output_dir=str(tmp_path / "t"),
        num_train_epochs=1,
        per_device_train_batch_size=16,
        progress=False,
    )
    train(tc)
    # The trainer called the attack's training hook on every batch, with the poison columns taken out of the batch.
    assert len(flip_attack.seen) == 4 and flip_attack.seen[0] == ["index", "noise_seed", "prompt_len"]


# --- no branching on attack names outside the attack files ----------------------------------------------------------

ATTACK_NAMES = {"gaussian", "backdoor", "badnets", "witches_brew", "gradient_canceling"}
ATTACK_DIRS = (ROOT / "llm_unlearn" / "attacks", ROOT / "image_track" / "attacks")


def _names_in(node) -> set[str]:
    """Attack names among the string constants of an expression (a constant, or a tuple/list/set of them)."""
    elts = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return {e.value for e in elts if isinstance(e, ast.Constant) and e.value in ATTACK_NAMES}


def _branches(tree) -> list[tuple[int, str]]:
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):  # attack == "gaussian", attack in ("a", "b"), ...
            for part in [node.left, *node.comparators]:
                hits += [(node.lineno, n) for n in _names_in(part)]
        elif isinstance(node, ast.Dict):  # {"gaussian": ..., "badnets": ...}[attack]
            hits += [(node.lineno, n) for k in node.keys if k is not None for n in _names_in(k)]
        elif isinstance(node, ast.match_case):
            hits += [(node.pattern.lineno, n) for sub in ast.walk(node.pattern) for n in _names_in(sub)]
    return hits


def test_no_attack_name_is_branched_on_outside_the_attack_files():
    found = []
    for pkg in ("llm_unlearn", "image_track"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if any(d in path.parents for d in ATTACK_DIRS):
                continue
            for line, name in _branches(ast.parse(path.read_text(), str(path))):
                found.append(f"{path.relative_to(ROOT)}:{line} branches on {name!r}")
    assert not found, "ask the attack's hooks instead:\n" + "\n".join(found)


def test_the_branch_scan_sees_a_branch():
    src = 'if a == "gaussian": pass\nx = {"badnets": 1}[a]\nif a in ("backdoor", "x"): pass\n'
    assert sorted(n for _, n in _branches(ast.parse(src))) == ["backdoor", "badnets", "gaussian"]
