"""Methods from outside the package: ``@register_method`` in a user's module, loaded by ``--plugins`` / the
``plugins`` config key / the ``llm_unlearn.plugins`` entry points, in the CLI and in every worker process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest
import yaml
from helpers import tiny_experiment

from llm_unlearn.configs import ConfigError

# The plugin exactly as the issue gives it (a user's file on PYTHONPATH).
PLUGIN = textwrap.dedent(
    """
    from dataclasses import dataclass
    from llm_unlearn import UnlearnTrainer, register_method

    @dataclass
    class HalfGDConfig:
        scale: float = 0.5

    @register_method("half_gd", config=HalfGDConfig)
    class HalfGDTrainer(UnlearnTrainer):
        reads_forget = False
        def unlearn_loss(self, model, forget, retain):
            return self.method_cfg.scale * self.nll(model, retain)
    """
)

# Small versions of recipes/tiny/llm_gaussian.yaml and image_gaussian.yaml (the CLI flags below are the issue's).
LLM = tiny_experiment(
    seeds=[0, 1],
    eval={"fresh_noise_draws": 2},
    methods=["gd", "ngd"],
    method_args={"ngd": {"sigma": 0.01}},  # a setting of a method the command line leaves out: unused, not wrong
    budgets=[0.3],
)
IMAGE = {
    "track": "image",
    "seeds": [0],
    "data": {"max_train_samples": 150, "max_test_samples": 40},
    "model": {"arch": "cnn", "width": 4, "hidden": 16},
    "poison": {"attack": "gaussian", "poison_fraction": 0.1},
    "train": {"epochs": 2, "batch_size": 32},
    "unlearn": {"per_device_train_batch_size": 16},
    "methods": ["gd"],
    "budgets": [0.3],
    "eval": {"fresh_noise_draws": 2},
    "diagnostics": False,
}


def _env(plugin_dir) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LLM_UNLEARN_PLUGINS"}
    # the plugin dir first; what was on the path stays (a checkout run from its own dir imports its own llm_unlearn)
    path = os.pathsep.join(p for p in (str(plugin_dir), os.environ.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _cli(args, plugin_dir, cwd):
    return subprocess.run(
        [sys.executable, "-m", "llm_unlearn", *args],
        env=_env(plugin_dir),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.parametrize("experiment", [LLM, IMAGE], ids=["llm", "image"])
def test_the_issue_plugin_runs_from_the_cli_with_two_workers(tmp_path, experiment):
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "my_unlearn_plugin.py").write_text(PLUGIN)
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(experiment))
    out = tmp_path / "run"
    args = ["run", "--config", str(config), "--plugins", "[my_unlearn_plugin]", "--methods", "[half_gd, gd]"]
    proc = _cli([*args, "--seeds", "[0]", "--workers", "2", "--output_dir", str(out)], plugin_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "seed_0" / "unlearn" / "half_gd_b0.3" / "unlearn_info.json").read_text())
    assert info["method"] == "half_gd" and info["steps"] >= 1 and not info["diverged"]
    # within its budget: it stops after the step that spends it, so by at most one step's cost past it
    assert 0.3 <= info["compute_fraction"] < 0.3 * 1.5
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["method"] for r in rows} >= {"half_gd", "gd"}
    assert yaml.safe_load((out / "experiment.yaml").read_text())["plugins"] == ["my_unlearn_plugin"]
    # the workers were separate processes that imported the plugin themselves (spawned, not forked)
    assert "] s0/unlearn/half_gd_b0.3  " in proc.stderr  # its line on the console
    # the run dir can be reported again in a new process: `report` loads the plugins experiment.yaml names
    again = _cli(["report", "--run_dir", str(out)], plugin_dir, tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]


def test_a_plugin_that_cannot_be_imported_is_one_error_before_any_work(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(LLM))
    out = tmp_path / "run"
    proc = _cli(
        ["run", "--config", str(config), "--plugins", "[no_such_plugin_mod]", "--output_dir", str(out)],
        tmp_path,
        tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("llm-unlearn run: error: plugins: cannot import")
    assert "no_such_plugin_mod" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_an_unregistered_method_names_the_choices_and_the_plugins_flag(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({**LLM, "methods": ["half_gd"]}))
    proc = _cli(["run", "--config", str(config), "--output_dir", str(tmp_path / "run")], tmp_path, tmp_path)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "unknown method 'half_gd'" in last and "'gd'" in last and "--plugins" in last


def test_stage_commands_take_plugins_too(tmp_path):
    """``--plugins`` on a single stage: the stage's config has no such key, the CLI loads and removes it."""
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "my_unlearn_plugin.py").write_text(PLUGIN)
    # a bad method_args key of the plugin's method is refused by the plugin's own config, before any work
    proc = _cli(
        [
            "unlearn",
            "--plugins",
            "my_unlearn_plugin",
            "--method",
            "half_gd",
            "--method_args",
            "{scal: 2}",
            "--model_dir",
            str(tmp_path),
            "--dataset_dir",
            str(tmp_path),
            "--output_dir",
            str(tmp_path / "u"),
        ],
        plugin_dir,
        tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "method 'half_gd'" in proc.stderr and "scal" in proc.stderr and "scale" in proc.stderr
    assert not (tmp_path / "u").exists()


def test_registration_rules(monkeypatch):
    from llm_unlearn import registry
    from llm_unlearn.methods.gd import GDTrainer
    from llm_unlearn.methods.base import UnlearnTrainer

    monkeypatch.setattr(registry, "METHODS", dict(registry.methods()))

    @dataclass
    class Cfg:
        k: int = 1

    @registry.register_method("my_method", config=Cfg)
    class MyTrainer(UnlearnTrainer):
        """Scaled retain NLL."""

        needs_reference = True

        def unlearn_loss(self, model, forget, retain):
            return self.nll(model, retain)

    spec = registry.get_method("my_method")
    assert spec.trainer_cls is MyTrainer and spec.knobs_cls is Cfg and spec.summary == "Scaled retain NLL."
    assert spec.needs_reference and spec.supports_peft  # class attributes are the defaults
    with pytest.raises(ConfigError, match="method 'gd' is registered twice.*GDTrainer.*Other"):

        @registry.register_method("gd")
        class Other(UnlearnTrainer):
            def unlearn_loss(self, model, forget, retain):
                return 0

    assert registry.METHODS["gd"].trainer_cls is GDTrainer
    with pytest.raises(ConfigError, match="config must be a dataclass"):
        registry.register_method("bad", config=dict)
    with pytest.raises(ConfigError, match="decorate a trainer class"):
        registry.register_method("bad2")(object)
    # a method without knobs gets an empty config: method_args must then be empty
    from llm_unlearn.methods import build_method_config

    registry.register_method("no_knobs")(type("NoKnobs", (UnlearnTrainer,), {"unlearn_loss": lambda *a: 0}))
    with pytest.raises(ConfigError, match="unknown key"):
        build_method_config("no_knobs", {"x": 1})


def test_entry_point_plugins_are_loaded_once(monkeypatch, tmp_path):
    """An installed package's ``llm_unlearn.plugins`` entry point is imported when a registry is first used."""
    import importlib.metadata as md

    from llm_unlearn import registry

    (tmp_path / "ep_plugin_mod.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = md.EntryPoint(name="mine", value="ep_plugin_mod", group=registry.PLUGIN_GROUP)
    calls = []

    def entry_points(group=None):
        calls.append(group)
        return [ep] if group == registry.PLUGIN_GROUP else []

    monkeypatch.setattr(md, "entry_points", entry_points)
    monkeypatch.setattr(registry, "_ENTRY_POINTS_LOADED", False)
    registry.methods()
    registry.methods()
    assert calls == [registry.PLUGIN_GROUP] and "ep_plugin_mod" in sys.modules


def test_loaded_plugins_reach_child_processes(monkeypatch, tmp_path):
    from llm_unlearn import registry

    (tmp_path / "env_plugin_mod.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_LOADED", [])
    # setenv first: teardown then restores the variable as it was (absent), so no later test's children inherit it
    monkeypatch.setenv(registry.PLUGIN_ENV, "[]")
    assert registry.load_plugins(["env_plugin_mod"]) == ["env_plugin_mod"]
    assert json.loads(os.environ[registry.PLUGIN_ENV]) == ["env_plugin_mod"]
    monkeypatch.setenv(registry.PLUGIN_ENV, "not json")
    with pytest.raises(ConfigError, match="LLM_UNLEARN_PLUGINS must be a JSON list"):
        registry.load_plugins()


def test_the_static_list_of_builtin_method_names_is_what_the_methods_register():
    """registry.BUILTIN_METHOD_NAMES lets a config naming an unknown method be refused before the methods load: it
    must name exactly the built-ins (a method added without it would be refused, one removed would pass the check)."""
    from llm_unlearn.registry import BUILTIN_METHOD_NAMES, methods

    METHODS = methods()  # registers the built-ins (importing llm_unlearn.methods alone loads none of them)
    builtin = {
        name for name, spec in METHODS.items() if spec.trainer_cls.__module__.startswith("llm_unlearn.methods.")
    }
    assert set(BUILTIN_METHOD_NAMES) == builtin
