"""Security rules: weights only as safetensors, no unpickling except ``torch.load(weights_only=True)``, no remote code
unless asked, and an HF token never lands in any output file or log."""

from __future__ import annotations

import ast
import os
import dataclasses
import importlib
import importlib.util
import inspect
import pkgutil
from pathlib import Path

import pytest
from helpers import TINY_SHAPE

ROOT = Path(__file__).parents[1]
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"}
FAKE_TOKEN = "hf_FAKEtokenForTheLeakTest0123456789abcd"


def _packages() -> list[str]:
    names = ["llm_unlearn"]
    if importlib.util.find_spec("image_track") is not None:  # the image track's code follows the same rules
        names.append("image_track")
    return names


def _source_files() -> list[Path]:
    files = []
    for name in _packages():
        spec = importlib.util.find_spec(name)
        files += sorted(Path(spec.origin).parent.rglob("*.py"))
    return files


def _modules():
    for name in _packages():
        pkg = importlib.import_module(name)
        yield pkg
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{name}."):
            if info.name.endswith("__main__"):
                continue
            yield importlib.import_module(info.name)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny run (an adapter method and a full-weights method) with a fake HF token in the environment, through the
    CLI in a subprocess so that everything it prints (Python, C extensions, worker processes) is captured."""
    import subprocess
    import sys

    import yaml

    out = tmp_path_factory.mktemp("secure")
    config = {
        "seeds": [0],
        "tiny": dict(TINY_SHAPE),
        "poison": {"poison_fraction": 0.1, "embedded_n_train": 60, "embedded_n_test": 20},
        # save_steps: the Trainer's checkpoints (optimizer.pt, rng_state.pth) must be gone at the end
        "train": {"num_train_epochs": 1, "per_device_train_batch_size": 16, "progress": False, "save_steps": 2},
        "unlearn": {"per_device_train_batch_size": 8, "progress": False},
        "eval": {"fresh_noise_draws": 2},
        "methods": ["gd", "ssd"],
        "budgets": [0.2],
        "workers": 1,
    }
    (out.parent / "secure.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN"):
        env[var] = FAKE_TOKEN
    cmd = [sys.executable, "-m", "llm_unlearn", "run", "--config", str(out.parent / "secure.yaml")]
    proc = subprocess.run([*cmd, "--output_dir", str(out / "run")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (out / "console.txt").write_text(proc.stdout + proc.stderr)  # what a person would have seen
    return out / "run"


def test_only_safetensors_weights_are_written(tiny_run):
    files = [p for p in tiny_run.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in PICKLE_SUFFIXES], "pickle-format files were written"
    seed = tiny_run / "seed_0"
    for model_dir in ("base", "initial", "retrain", "unlearn/ssd_b0.2"):
        assert (seed / model_dir / "model.safetensors").is_file(), model_dir
    assert (seed / "unlearn" / "gd_b0.2" / "adapter_model.safetensors").is_file()
    for p in files:  # nothing pickled hides under another name either (pickle protocol 2+ starts with 0x80)
        head = p.read_bytes()[:2]
        assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), p


def test_hf_token_never_reaches_an_output_file(tiny_run):
    hits = [p for p in tiny_run.rglob("*") if p.is_file() and FAKE_TOKEN.encode() in p.read_bytes()]
    assert not hits
    console = (tiny_run.parent / "console.txt").read_text()
    assert console.strip()  # the run's output was captured (not an empty capture that proves nothing)
    assert FAKE_TOKEN not in console


def test_hf_token_never_reaches_the_environment_record(monkeypatch):
    from llm_unlearn.envinfo import environment_info

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    assert FAKE_TOKEN not in repr(environment_info([0]))


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = ast.unparse(func)
            yield node, name


def _torch_load_offenders(source: str) -> tuple[list[int], int]:
    """(line numbers of torch.load calls without weights_only=True, number of torch.load calls) in ``source``."""
    offenders, seen = [], 0
    for node, name in _calls(ast.parse(source)):
        if name == "torch.load" or name.endswith(".torch.load"):
            seen += 1
            value = {k.arg: k.value for k in node.keywords}.get("weights_only")
            if not (isinstance(value, ast.Constant) and value.value is True):
                offenders.append(node.lineno)
    return offenders, seen


def test_every_torch_load_uses_weights_only():
    # The scanner itself first: it must see both calls and flag exactly the unsafe one, or the scan below proves
    # nothing (the package has no torch.load today, so the scan alone would pass whatever the scanner did).
    probe = "import torch\ntorch.load(f, weights_only=True)\ntorch.load(f)\nx.torch.load(g, weights_only=False)\n"
    assert _torch_load_offenders(probe) == ([3, 4], 3)
    offenders = []
    for path in _source_files():
        lines, _ = _torch_load_offenders(path.read_text())
        offenders += [f"{path.relative_to(ROOT)}:{n}" for n in lines]
    assert not offenders, f"torch.load without weights_only=True: {offenders}"


def test_no_pickle_loading_at_all():
    banned = {"pickle.load", "pickle.loads", "cPickle.load", "dill.load", "joblib.load", "torch.serialization.load"}
    offenders = []
    for path in _source_files():
        tree = ast.parse(path.read_text())
        for node, name in _calls(tree):
            if name in banned:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
            kw = {k.arg: k.value for k in node.keywords}
            if name.endswith("load") and isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} allow_pickle=True")
            if isinstance(kw.get("trust_remote_code"), ast.Constant) and kw["trust_remote_code"].value is True:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} trust_remote_code=True")
            if isinstance(kw.get("use_safetensors"), ast.Constant) and kw["use_safetensors"].value is False:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} use_safetensors=False")
            if isinstance(kw.get("safe_serialization"), ast.Constant) and kw["safe_serialization"].value is False:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} safe_serialization=False")
    assert not offenders


def test_trust_remote_code_defaults_to_false_everywhere():
    config_fields, params = 0, 0
    for module in _modules():
        for _, obj in inspect.getmembers(module):
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            if dataclasses.is_dataclass(obj) and isinstance(obj, type):
                for f in dataclasses.fields(obj):
                    if f.name == "trust_remote_code":
                        config_fields += 1
                        assert f.default is False, f"{obj.__qualname__}.trust_remote_code defaults to {f.default!r}"
            if inspect.isfunction(obj):
                p = inspect.signature(obj).parameters.get("trust_remote_code")
                if p is not None:
                    params += 1
                    assert p.default is False, f"{module.__name__}.{obj.__name__}(trust_remote_code={p.default!r})"
    # The stages that load models (train, unlearn, eval, diagnose) and the loaders in modeling.py.
    assert config_fields >= 4 and params >= 2


def test_model_loaders_refuse_pickle_only_dirs(tmp_path):
    from llm_unlearn.configs import ConfigError
    from llm_unlearn.modeling import load_model, load_tokenizer

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04K.")  # would be unpickled by a careless loader
    for load in (load_model, load_tokenizer):
        with pytest.raises(ConfigError, match="only pickle weights"):
            load(str(tmp_path))
