"""One run where the science shows (about 1.5 min on 2 CPU cores): the embedded tiny Llama, trained by the real stages,
is poisoned and the audit sees it; the gold model, retrained without the poisons, is not.

The other end-to-end tests run at a size where nothing is learned (their checks of gap_closed = 0 / 1 for the initial
and gold models hold by definition). Here the protocol's two signatures must appear: the Gaussian test separates the
initial model from the gold one (|z_initial - z_gold| > 3, z_initial clearly negative), and the backdoor works on the
initial model and not on the gold one (ASR difference > 0.5). It fails when training stops poisoning, when the audit
regenerates the wrong noise, or when the backdoor rows lose their trigger.

Sizes were chosen by pilot runs (seed 0 fixed; z gaps of 4.1-5.7 over 2 seeds with these settings): 1,500 reviews of
2-4 sentences (longer prompts give each poison more noised coordinates), 15 % Gaussian poisons at eps = 1 embedding
RMS, 6 epochs; the backdoor as in the embedded default (trigger "cf" on 2 % of the reviews).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SEED = 0
DATA = {"embedded_n_train": 1500, "embedded_n_test": 200, "seed": SEED}


def _eval(model_dir: Path, dataset_dir: Path, out: Path) -> dict:
    from llm_unlearn.stages.evaluate import EvalConfig, main

    cfg = EvalConfig(
        model_dir=str(model_dir),
        dataset_dir=str(dataset_dir),
        output_dir=str(out),
        fresh_noise_draws=3,
        max_new_tokens=2,
        attn_implementation="eager",
    )
    return json.loads((Path(main(cfg)) / "eval_results.json").read_text())


def _initial_and_gold(root: Path, tiny: Path, attack: str, **poison) -> dict[str, dict]:
    from llm_unlearn.stages.poison import PoisonConfig
    from llm_unlearn.stages.poison import main as poison_main
    from llm_unlearn.stages.train import TrainConfig
    from llm_unlearn.stages.train import main as train

    ds = Path(poison_main(PoisonConfig(output_dir=str(root / attack), attack=attack, **DATA, **poison)))
    out = {}
    for name, split in (("initial", "train"), ("gold", "retain")):
        cfg = TrainConfig(
            model_name_or_path=str(tiny),
            dataset_dir=str(ds),
            output_dir=str(root / attack / name),
            split=split,
            seed=SEED,
            num_train_epochs=6,
            learning_rate=1e-3,
            per_device_train_batch_size=32,
            attn_implementation="eager",
            progress=False,
        )
        out[name] = _eval(train(cfg), ds, root / attack / f"{name}_eval")
    return out


@pytest.fixture(scope="module")
def science(tmp_path_factory):
    from llm_unlearn.embedded import TinyModelConfig, save_tiny

    root = tmp_path_factory.mktemp("science")
    tiny = save_tiny(root / "tiny", TinyModelConfig(), seed=SEED)  # the embedded default's model
    return {
        "gaussian": _initial_and_gold(
            root,
            tiny,
            "gaussian",
            poison_fraction=0.15,
            attack_args={"noise_eps": 1.0, "noise_scale": "rms"},
            embedded_min_sentences=2,
            embedded_max_sentences=4,
        ),
        "backdoor": _initial_and_gold(
            root, tiny, "backdoor", poison_fraction=0.02, embedded_min_sentences=1, embedded_max_sentences=2
        ),
    }


def test_gaussian_test_separates_initial_from_gold(science):
    initial, gold = science["gaussian"]["initial"], science["gaussian"]["gold"]
    assert initial["clean_accuracy"] > 0.7 and gold["clean_accuracy"] > 0.7  # both learned the task
    assert initial["gus_z"] < -3, initial["gus_z"]
    assert abs(gold["gus_z"]) < 3, gold["gus_z"]
    assert abs(initial["gus_z"] - gold["gus_z"]) > 3
    assert initial["gus_mean"] < gold["gus_mean"]


def test_backdoor_works_on_initial_not_on_gold(science):
    initial, gold = science["backdoor"]["initial"], science["backdoor"]["gold"]
    assert initial["clean_accuracy"] > 0.7 and gold["clean_accuracy"] > 0.7
    assert initial["asr"] - gold["asr"] > 0.5, (initial["asr"], gold["asr"])
