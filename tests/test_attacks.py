from __future__ import annotations

import datasets
import pytest
import torch

from llm_unlearn.canaries import batch_prompt_noise, prompt_noise
from llm_unlearn.files import read_json


def _load(d):
    return datasets.load_from_disk(f"{d}/dataset"), read_json(f"{d}/manifest.json")


def test_gaussian_poisons_exact_count_labels_unchanged(gaussian_dir):
    dd, manifest = _load(gaussian_dir)
    train = dd["train"]
    n_poison = round(0.1 * len(train))
    assert manifest["n_poison"] == n_poison == len(dd["forget"]) == sum(train["is_poison"])
    assert len(dd["retain"]) == len(train) - n_poison
    assert train["label"] == train["orig_label"]  # clean label: the noise is the only change
    seeds = [s for s, p in zip(train["noise_seed"], train["is_poison"]) if p]
    assert all(s >= 0 for s in seeds) and len(set(seeds)) == len(seeds)
    assert all(s == -1 for s, p in zip(train["noise_seed"], train["is_poison"]) if not p)
    assert sorted(manifest["poison_indices"]) == sorted(dd["forget"]["index"])
    assert set(dd["retain"]["index"]).isdisjoint(dd["forget"]["index"])


def test_gaussian_noise_is_regenerable_and_fresh_draws_differ():
    a = prompt_noise(123, 7, 16, std=0.5)
    b = prompt_noise(123, 7, 16, std=0.5)
    c = prompt_noise(123, 7, 16, std=0.5, draw=1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert abs(float(a.std()) - 0.5) < 0.2


def test_batch_noise_only_on_prompt_positions_of_poisons():
    noise = batch_prompt_noise([5, -1], [3, 4], width=6, hidden=4)
    assert noise[0, :3].abs().sum() > 0
    assert noise[0, 3:].abs().sum() == 0
    assert noise[1].abs().sum() == 0
    assert torch.equal(noise[0, :3], prompt_noise(5, 3, 4))


def test_poison_selection_is_deterministic_per_seed(tmp_path):
    from llm_unlearn.stages.poison import PoisonConfig, main

    kw = dict(embedded_n_train=60, embedded_n_test=10, poison_fraction=0.1)
    a = read_json(main(PoisonConfig(output_dir=str(tmp_path / "a"), seed=1, **kw)) / "manifest.json")
    b = read_json(main(PoisonConfig(output_dir=str(tmp_path / "b"), seed=1, **kw)) / "manifest.json")
    c = read_json(main(PoisonConfig(output_dir=str(tmp_path / "c"), seed=2, **kw)) / "manifest.json")
    assert a["poison_indices"] == b["poison_indices"] and a["noise_seeds"] == b["noise_seeds"]
    assert a["poison_indices"] != c["poison_indices"]


def test_backdoor_flips_to_target_and_inserts_trigger(backdoor_dir):
    dd, manifest = _load(backdoor_dir)
    forget = dd["forget"]
    assert len(forget) == round(0.1 * len(dd["train"]))
    assert set(forget["label"]) == {"positive"}
    assert set(forget["orig_label"]) == {"negative"}  # only non-target reviews are poisoned
    assert all(t.startswith("cf ") for t in forget["text"])
    assert all(c == " positive" for c in forget["completion"])
    assert not any(t.startswith("cf ") for t in dd["retain"]["text"])
    trig = dd["test_triggered"]
    assert len(trig) == sum(1 for label in dd["test"]["label"] if label != "positive")
    assert set(trig["orig_label"]) == {"negative"}
    assert all(t.startswith("cf ") for t in trig["text"])
    assert manifest["metric"] == "asr"


def test_backdoor_too_many_poisons_is_a_config_error(tmp_path):
    from llm_unlearn.configs import ConfigError
    from llm_unlearn.stages.poison import PoisonConfig, main

    cfg = PoisonConfig(
        output_dir=str(tmp_path / "p"), attack="backdoor", poison_fraction=0.8, embedded_n_train=20, embedded_n_test=4
    )
    with pytest.raises(ConfigError, match="only 10 training examples"):
        main(cfg)
    assert not (tmp_path / "p" / "dataset").exists()


def test_jsonl_with_bad_row_names_line(tmp_path):
    from llm_unlearn.configs import ConfigError
    from llm_unlearn.stages.poison import PoisonConfig, main

    good = tmp_path / "test.jsonl"
    good.write_text('{"text": "fine film", "label": 1}\n{"text": "bad film", "label": 0}\n')
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"text": "fine film", "label": 1}\n{"text": "oops", "label": \n')
    cfg = PoisonConfig(output_dir=str(tmp_path / "o"), train_file=str(bad), test_file=str(good))
    with pytest.raises(ConfigError, match="line 2 is not valid JSON"):
        main(cfg)
    bad.write_text('{"text": "fine film", "label": 1}\n{"text": "meh", "label": 7}\n')
    with pytest.raises(ConfigError, match=r"train row 1: label 7 is outside 0..1"):
        main(cfg)
    assert not (tmp_path / "o").exists()


def test_fresh_draws_are_independent_of_training_noise():
    """A fresh draw must not reproduce the trained noise (a 32-bit seed truncation once made them equal)."""
    train = torch.stack([prompt_noise(s, 4, 8).flatten() for s in range(200)])
    fresh = torch.stack([prompt_noise(s, 4, 8, draw=1).flatten() for s in range(200)])
    corr = torch.nn.functional.cosine_similarity(train, fresh, dim=1)
    assert float(corr.abs().mean()) < 0.3
    assert abs(float(corr.mean())) < 0.05
