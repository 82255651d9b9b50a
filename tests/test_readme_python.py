"""The README's Python API examples, executed as written (in a scratch dir, at tiny size): the experiment API block
with its three calls, and the TRL-shaped block on the tiny model. Only what cannot run here as written is supplied
from outside the text: the model dir and the rows the README elides with ``...``, and a smaller embedded model and
data behind the recipe (the code path is the recipe's own)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import TINY_SHAPE

README = Path(__file__).parents[1] / "README.md"

# Shrinks the experiments behind the README's calls (deep-merged into the recipe and into the config it builds).
TINY = {
    "tiny": dict(TINY_SHAPE),
    "poison": {"embedded_n_train": 160, "embedded_n_test": 30},
    "train": {"num_train_epochs": 2, "per_device_train_batch_size": 16, "progress": False},
    "unlearn": {"per_device_train_batch_size": 8, "progress": False},
    "eval": {"fresh_noise_draws": 2},
    "methods": ["gd"],
    "method_args": {},
    "diagnostics": False,
    "workers": 1,
}


def _blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"## {section}\n")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and v else v
    return out


def test_readme_experiment_api_block_runs(tmp_path, monkeypatch):
    import llm_unlearn
    from llm_unlearn.configs import read_yaml

    block = _blocks("Python API")[0]
    assert "run_experiment(" in block and "unlearn(UnlearnConfig(" in block
    real_run, real_build = llm_unlearn.run_experiment, llm_unlearn.build_config
    root = Path(__file__).parents[1]

    def run_experiment(cfg, **overrides):
        if isinstance(cfg, str):  # the recipe, read as the README names it, with the tiny settings merged in
            cfg = _merge(read_yaml(root / cfg), TINY)
        return real_run(cfg, **overrides)

    def build_config(cls, data):
        return real_build(cls, _merge(data, TINY))

    monkeypatch.setattr(llm_unlearn, "run_experiment", run_experiment, raising=False)
    monkeypatch.setattr(llm_unlearn, "build_config", build_config, raising=False)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md (Python API)", "exec"), {})
    assert (tmp_path / "runs/g/report.md").is_file() and (tmp_path / "runs/b/report.md").is_file()
    assert (tmp_path / "runs/g/npo/unlearn_info.json").is_file()


@pytest.fixture()
def trl_block_namespace(tiny_dir, gaussian_dir):
    """What the TRL block leaves to the reader: a model dir, the rows behind ``...``, poisons with their seeds."""
    from llm_unlearn.modeling import load_dataset_dir

    dd, _ = load_dataset_dir(gaussian_dir)

    def rows(split: str, *keys: str) -> list[dict]:
        return [{k: r[k] for k in ("prompt", "completion", *keys)} for r in dd[split]]

    return {
        "model_dir": tiny_dir,
        "_forget": rows("forget"),
        "_retain": rows("retain")[:32],
        "poisons": rows("forget", "noise_seed"),  # the poisons with the seed of the noise each was trained with
    }


def test_readme_trl_block_runs(tmp_path, monkeypatch, trl_block_namespace):
    block = [b for b in _blocks("Python API") if "NPOTrainer" in b][0]
    # the README elides rows with "..."; everything else runs as written
    code = block.replace(
        'Dataset.from_list([{"prompt": "Review: ...\\nSentiment:", "completion": " positive"}, ...])',
        "Dataset.from_list(_forget)",
    )
    code = code.replace("Dataset.from_list([...])", "Dataset.from_list(_retain)")
    assert code.count("Dataset.from_list(_") == 2, "the README's TRL example changed: update this test"
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (TRL-shaped API)", "exec"), dict(trl_block_namespace))
    assert any((tmp_path / "out").glob("*.safetensors"))
