"""A config error in a built-in method's knobs (``method_args``, a grid over them) is found without importing torch or
transformers: each knob class is read from its method file (``llm_unlearn/methods/knobs.py``). These tests keep that
read class the same definition as the registered one, and the check light (in a fresh process, by ``sys.modules``;
the seconds themselves are bench/config_error.py's, never asserted here). The image track's config check is kept
free of torch too (its modules import torch inside the functions that use it)."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

from llm_unlearn.configs import ConfigError, build_config
from llm_unlearn.methods.knobs import NotReadable, _Source, read_knobs
from llm_unlearn.registry import BUILTIN_METHOD_NAMES

ROOT = Path(__file__).resolve().parents[1]
METHOD_DIR = ROOT / "llm_unlearn" / "methods"

# Values tried on every knob, alone and all at once: out of range, wrong types, edge cases of each validate().
PROBES = [-1, 0, 1, 7, -1.0, 0.0, 0.5, 2.0, math.nan, math.inf, "bogus", "(", "nll", "kl", "all", [], [0], [-1], None]


def _outcome(cls: type, args: dict) -> str:
    try:
        return "ok " + repr(dataclasses.asdict(build_config(cls, args)))
    except ConfigError as e:
        return f"error {e}"


@pytest.mark.parametrize("name", BUILTIN_METHOD_NAMES)
def test_the_knob_class_read_from_the_file_is_the_registered_definition(name):
    from llm_unlearn.registry import get_method

    read, real = read_knobs(name), get_method(name).knobs_cls
    assert read is not real and (read.__qualname__, read.__doc__) == (real.__qualname__, real.__doc__)
    assert typing.get_type_hints(read) == typing.get_type_hints(real)
    fields = {f.name: f for f in dataclasses.fields(real)}
    assert [f.name for f in dataclasses.fields(read)] == list(fields)
    for f in dataclasses.fields(read):
        g = fields[f.name]
        assert (f.default, f.default_factory, dict(f.metadata), f.init) == (
            g.default,
            g.default_factory,
            dict(g.metadata),
            g.init,
        ), f.name
    # validate() and the type checks: the same value accepted or the same message, knob by knob and all together
    assert _outcome(read, {}) == _outcome(real, {})
    for probe in PROBES:
        for key in fields:
            assert _outcome(read, {key: probe}) == _outcome(real, {key: probe}), (key, probe)
        if fields:
            every = dict.fromkeys(fields, probe)
            assert _outcome(read, every) == _outcome(real, every), probe


def test_every_method_file_that_registers_a_method_is_a_listed_builtin_of_its_name():
    """``registry.methods()`` imports ``llm_unlearn/methods/<name>.py`` for each listed name, and the knob reader
    reads that file: a method file must register the method of its own name, and be listed."""
    registering = {
        p.stem
        for p in METHOD_DIR.glob("*.py")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register_method"
    }
    assert registering == set(BUILTIN_METHOD_NAMES)
    for name in BUILTIN_METHOD_NAMES:
        assert _Source.of(name).registered_config(name)


def _method_file(tmp_path: Path, stem: str, knobs: str) -> _Source:
    path = tmp_path / f"{stem}.py"
    path.write_text(
        "from __future__ import annotations\n\nimport math\nfrom dataclasses import dataclass, field\n\n"
        "import a_heavy_module_that_is_not_installed\n\nfrom ..configs import ConfigError\n"
        "from ..registry import register_method\n\nLIMIT = 3\n\n\n"
        "def check(k: a_heavy_module_that_is_not_installed.Tensor) -> None:\n"
        "    if not (math.isfinite(k) and k <= LIMIT):\n        raise ConfigError(f'method_args.k > {LIMIT}')\n\n\n"
        + textwrap.dedent(knobs)
        + "\n\n@register_method('mine', config=MineConfig)\n"
        "class MineTrainer(a_heavy_module_that_is_not_installed.T):\n    pass\n"
    )
    return _Source(stem, path)


def test_the_reader_runs_only_what_the_knob_class_reads_and_refuses_a_heavy_import(tmp_path):
    light = _method_file(
        tmp_path,
        "reader_case_light",
        """
        @dataclass
        class MineConfig:
            k: float = field(default=1.0, metadata={"help": f"at most {LIMIT}"})

            def validate(self) -> None:
                check(self.k)
        """,
    )
    try:
        cls = light.load({light.registered_config("mine")})["MineConfig"]  # the trainer's import never runs
        assert dataclasses.fields(cls)[0].metadata["help"] == "at most 3"
        assert build_config(cls, {"k": 2}).k == 2.0
        with pytest.raises(ConfigError, match="method_args.k > 3"):
            build_config(cls, {"k": 4})
        heavy = _method_file(
            tmp_path,
            "reader_case_heavy",
            """
            @dataclass
            class MineConfig:
                k: float = a_heavy_module_that_is_not_installed.DEFAULT
            """,
        )
        with pytest.raises(NotReadable, match="import a_heavy_module_that_is_not_installed"):
            heavy.load({"MineConfig"})
    finally:
        for stem in ("reader_case_light", "reader_case_heavy"):
            sys.modules.pop(f"llm_unlearn.methods._knobs_of_{stem}", None)


def test_an_unreadable_builtin_is_checked_by_importing_it(monkeypatch):
    import llm_unlearn.methods as methods_pkg
    from llm_unlearn import registry
    from llm_unlearn.methods import knobs

    def unreadable(name):
        raise NotReadable("as if the knob class needed torch")

    monkeypatch.setattr(registry, "METHODS", {})  # as in a process that has not imported the methods
    monkeypatch.setattr(knobs, "read_knobs", unreadable)
    monkeypatch.setattr(registry, "methods", lambda: {"ngd": registry.MethodSpec("ngd", dict, object, "")})
    monkeypatch.setattr(methods_pkg, "get_method", lambda name: registry.methods()[name])
    assert methods_pkg.knobs_class("ngd") is dict


# One fresh interpreter checks every case: the error it prints, and the heavy modules it never imported.
CHECKS = r"""
import importlib, json, sys
from llm_unlearn.configs import ConfigError, build_config

CLASSES = {
    "run": "llm_unlearn.stages.run:ExperimentConfig",
    "unlearn": "llm_unlearn.stages.unlearn:UnlearnConfig",
    "image": "image_track.track:ImageExperimentConfig",  # what `run` loads for `track: image` (its entry point)
}
out = {}
for label, (cls, data) in json.loads(sys.argv[1]).items():
    module, name = CLASSES[cls].split(":")
    cls = getattr(importlib.import_module(module), name)
    try:
        build_config(cls, data)
        out[label] = "ok"
    except ConfigError as e:
        out[label] = str(e)
out["heavy"] = sorted(m for m in ("torch", "transformers", "numpy") if m in sys.modules)
print(json.dumps(out))
"""

EVERY_KNOB = {  # a valid value for each built-in's knobs, and a grid over method knobs: all read, none imported
    "methods": list(BUILTIN_METHOD_NAMES),
    "method_args": {
        "cf_k": {"k": 1},
        "eu_k": {"k": 1},
        "graddiff": {"retain_loss": "kl"},
        "neggrad_plus": {"beta": 0.9},
        "ngd": {"sigma": 0.01},
        "npo": {"beta": 0.2, "kl_positions": "completion"},
        "rmu": {"layer_id": 0, "trainable_module_regex": ".*"},
        "scrub": {"msteps": 1},
        "simnpo": {"gamma": 0.5},
        "ssd": {"lam": 0.5},
    },
    "grid": {"npo": {"beta": [0.1, "1e-2"], "learning_rate": [1.0e-4, 1.0e-3]}, "rmu": {"alpha": [1.0, 10.0]}},
    "budgets": [0.05, 0.1],
}
WEIGHTS = ("forget_weight", "retain_weight")
CASES = {
    "valid": ("run", EVERY_KNOB),
    "unknown knob": ("run", {"method_args": {"ngd": {"sigmaa": 0.1}}}),
    "bad type": ("run", {"methods": ["npo"], "method_args": {"npo": {"beta": "abc"}}}),
    "bad value": ("run", {"method_args": {"ngd": {"sigma": -1.0}}}),
    "both weights 0": ("run", {"methods": ["graddiff"], "method_args": {"graddiff": dict.fromkeys(WEIGHTS, 0)}}),
    "bad grid value": ("run", {"methods": ["gd", "ngd"], "grid": {"ngd": {"sigma": [0.1, -1.0]}}}),
    "bad grid key": ("run", {"methods": ["rmu"], "grid": {"rmu": {"steer": [1.0]}}}),
    "grid regex": ("run", {"methods": ["rmu"], "grid": {"rmu": {"trainable_module_regex": ["x", "("]}}}),
    "unlearn stage": ("unlearn", {"method": "ngd", "method_args": {"sigma": -1.0}}),
}
EXPECTED = {
    "valid": "ok",
    "unknown knob": "method 'ngd': unknown key 'sigmaa' for NGDConfig (did you mean 'sigma'?)",
    "bad type": "method 'npo': beta: expected a number, got 'abc'",
    "bad value": "method 'ngd': method_args.sigma must be a finite number >= 0, got -1.0",
    "both weights 0": "method 'graddiff': method_args.forget_weight and method_args.retain_weight cannot both be 0",
    "bad grid value": "method 'ngd': method_args.sigma must be a finite number >= 0, got -1.0",
    "bad grid key": "grid.rmu.steer: unknown key",
    "grid regex": "method 'rmu': method_args.trainable_module_regex '(' is not a regex",
    "unlearn stage": "method 'ngd': method_args.sigma must be a finite number >= 0, got -1.0",
}


def _check_in_a_fresh_process(cases: dict, tmp_path: Path) -> dict:
    """Each case's outcome ("ok" or the ConfigError), and ``heavy``: which of torch, transformers, numpy loaded."""
    cases = {label: (cls, {**data, "output_dir": str(tmp_path / "out")}) for label, (cls, data) in cases.items()}
    proc = subprocess.run(
        [sys.executable, "-c", CHECKS, json.dumps(cases)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_method_knob_errors_are_found_without_importing_torch_or_transformers(tmp_path):
    out = _check_in_a_fresh_process(CASES, tmp_path)
    assert out.pop("heavy") == []
    for label, expected in EXPECTED.items():
        assert out[label].startswith(expected), (label, out[label])


def _recipe(name: str) -> dict:
    import yaml

    return yaml.safe_load((ROOT / "recipes" / "tiny" / f"{name}.yaml").read_text())


IMAGE_RECIPES = ("image_gaussian", "image_badnets", "image_witches_brew", "image_gradient_canceling")
IMAGE = {"track": "image", "seeds": [0]}
IMAGE_CASES = {  # label -> (config, the start of the error; "ok": it checks)
    **{f"recipe {name}": ({**_recipe(name), "seeds": [0]}, "ok") for name in IMAGE_RECIPES},
    "attack_args value": (
        {**IMAGE, "poison": {"attack": "badnets", "attack_args": {"patch_size": 0}}},
        "poison: attack_args of the badnets attack: patch_size must be >= 1, got 0",
    ),
    "attack_args key": (
        {**IMAGE, "poison": {"attack": "gaussian", "attack_args": {"noise_epss": 1.0}}},
        "poison: unknown key 'attack_args.noise_epss' for ImageGaussianConfig (did you mean 'noise_eps'?)",
    ),
    "attack vs model": (
        {**IMAGE, "poison": {"attack": "gradient_canceling"}, "model": {"arch": "cnn"}},
        "poison.attack gradient_canceling needs model.arch: linear",
    ),
    "method knob": (
        {**IMAGE, "methods": ["npo"], "method_args": {"npo": {"beta": "abc"}}},
        "method 'npo': beta: expected a number, got 'abc'",
    ),
    "grid value": (
        {**IMAGE, "grid": {"ngd": {"sigma": [0.1, -1.0]}}},
        "method 'ngd': method_args.sigma must be a finite number >= 0, got -1.0",
    ),
    "data key": ({**IMAGE, "data": {"test_fractoin": 0.5}}, "unknown key 'data.test_fractoin' for DataConfig"),
    "data value": ({**IMAGE, "data": {"test_fraction": 2}}, "data: data.test_fraction must be in (0, 1), got 2"),
    "model value": ({**IMAGE, "model": {"arch": "vit"}}, "model.arch: 'vit' is not allowed"),
    "train value": ({**IMAGE, "train": {"epochs": 0}}, "train: train.epochs and train.batch_size must be >= 1"),
}


def test_image_track_config_errors_are_found_without_importing_torch(tmp_path):
    """The image track's config (its data, model, train, poison sections, every attack's ``attack_args``, method
    knobs and grids) is checked with neither torch nor numpy imported: an error shows before either loads."""
    out = _check_in_a_fresh_process({label: ("image", data) for label, (data, _) in IMAGE_CASES.items()}, tmp_path)
    assert out.pop("heavy") == []
    for label, (_, expected) in IMAGE_CASES.items():
        assert out[label].startswith(expected), (label, out[label])
