"""True/false keys on the command line the way HF and argparse users type them, for every bool key of every command:
``--KEY`` alone is true, ``--KEY true|false`` as before, ``--no_KEY`` false; a nested key the same with its dotted
name (``--unlearn.use_peft``, ``--no_unlearn.use_peft``); a bad value is still one clear error naming the key. The
stage flag ``--overwrite`` (not a config key) too."""

from __future__ import annotations

import importlib

import pytest

from llm_unlearn.cli import COMMANDS
from llm_unlearn.configs import ConfigError, _coerce
from llm_unlearn.flags import _flags, _is_bool, _leaf_type, argv_data, parse_config


def _config_classes() -> dict[str, type]:
    """Each command's config class (the parser's), found through its make_parser (one per command)."""
    from image_track.track import ImageExperimentConfig
    from llm_unlearn.stages.run import ExperimentConfig

    out = {"run": ExperimentConfig, "run[image]": ImageExperimentConfig}
    for name, (target, _) in COMMANDS.items():
        module = importlib.import_module(f"llm_unlearn.stages.{target.partition(':')[0]}")
        if name in ("run", "suite"):
            continue
        cls = next(
            v
            for k, v in vars(module).items()
            if k.endswith("Config") and isinstance(v, type) and v.__module__ == module.__name__
        )
        out[name] = cls
    from llm_unlearn.stages.run import SuiteConfig

    out["suite"] = SuiteConfig
    return out


CLASSES = _config_classes()
BOOL_KEYS = [
    (command, key)
    for command, cls in CLASSES.items()
    for key, _ in _flags(cls, exclude=frozenset(getattr(cls, "CLI_EXCLUDE", ())))
    if _is_bool(_leaf_type(cls, key))
]


def test_every_command_with_bool_keys_is_covered():
    commands = {c for c, _ in BOOL_KEYS}
    assert {"run", "run[image]", "train", "unlearn", "push"} <= commands
    assert ("push", "dry_run") in BOOL_KEYS and ("run", "unlearn.use_peft") in BOOL_KEYS


def _value(cls, key: str, argv: list[str]):
    data, _ = argv_data(cls, argv)
    node = data
    for part in key.split("."):
        node = node[part]
    return _coerce(node, _leaf_type(cls, key), key)


@pytest.mark.parametrize(("command", "key"), BOOL_KEYS, ids=[f"{c}:{k}" for c, k in BOOL_KEYS])
def test_bool_key_spellings(command, key):
    cls = CLASSES[command]
    assert _value(cls, key, [f"--{key}"]) is True
    assert _value(cls, key, [f"--{key}", "true"]) is True
    assert _value(cls, key, [f"--{key}", "false"]) is False
    assert _value(cls, key, [f"--{key}=false"]) is False
    assert _value(cls, key, [f"--no_{key}"]) is False
    with pytest.raises(ConfigError, match=rf"^{key}: expected true or false, got 'maybe'"):
        _value(cls, key, [f"--{key}", "maybe"])


def test_a_flag_alone_does_not_swallow_the_next_flag(tmp_path):
    from llm_unlearn.stages.push import PushConfig

    data, _ = argv_data(PushConfig, ["--dry_run", "--private", "--repo_id", "me/x"])
    assert data == {"dry_run": True, "private": True, "repo_id": "me/x"}


def test_nested_negation_through_the_whole_parser(tmp_path):
    from llm_unlearn.stages.run import ExperimentConfig

    base = ["--output_dir", str(tmp_path / "o"), "--seeds", "[0]", "--methods", "[gd]"]
    assert parse_config(ExperimentConfig, [*base, "--unlearn.use_peft"]).unlearn.use_peft is True
    assert parse_config(ExperimentConfig, [*base, "--no_unlearn.use_peft"]).unlearn.use_peft is False
    assert parse_config(ExperimentConfig, [*base, "--no_diagnostics"]).diagnostics is False
    # the spelling not chosen is an unknown argument that points at the chosen one
    with pytest.raises(ConfigError, match=r"unknown argument '--unlearn.no_use_peft' \(did you mean --no_unlearn"):
        parse_config(ExperimentConfig, [*base, "--unlearn.no_use_peft"])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [([], False), (["--overwrite"], True), (["--overwrite", "true"], True), (["--no_overwrite"], False)],
)
def test_stage_overwrite_flag(tmp_path, argv, expected):
    from llm_unlearn.harness import parse_stage
    from llm_unlearn.stages.train import TrainConfig

    cfg, overwrite = parse_stage(TrainConfig, ["--output_dir", str(tmp_path / "o"), *argv], "llm-unlearn train")
    assert overwrite is expected and cfg.output_dir == str(tmp_path / "o")


def test_stage_overwrite_bad_value_is_one_clear_error(tmp_path):
    from llm_unlearn.harness import parse_stage
    from llm_unlearn.stages.train import TrainConfig

    with pytest.raises(ConfigError, match="^overwrite: expected true or false, got 'yes please'"):
        parse_stage(TrainConfig, ["--output_dir", str(tmp_path), "--overwrite", "yes please"], "llm-unlearn train")


def test_cli_dry_run_alone_and_bad_value(tmp_path, capsys):
    from llm_unlearn.cli import main

    assert main(["push", "--dry_run", "maybe"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dry_run: expected true or false, got 'maybe'" in err[0]
    assert "--no_KEY" in _help("push")


def _help(command: str) -> str:
    module = importlib.import_module(f"llm_unlearn.stages.{COMMANDS[command][0].partition(':')[0]}")
    return module.make_parser().format_help()
