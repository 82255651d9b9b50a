"""The image grid end to end on a tiny config through `llm-unlearn run` (the `image` track entry point), a CIFAR-style
dataset (``img``/``label`` columns) built locally, and every image recipe parsing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llm_unlearn.configs import ConfigError, build_config

RECIPES = Path(__file__).parents[1] / "recipes"
IMAGE_RECIPES = sorted(RECIPES.glob("tiny/image_*.yaml")) + sorted((RECIPES / "resnet18-cifar10").glob("*.yaml"))

TINY = {
    "track": "image",
    "seeds": [0],
    "data": {"max_train_samples": 150, "max_test_samples": 40},
    "model": {"arch": "cnn", "width": 4, "hidden": 16},
    "poison": {"attack": "gaussian", "poison_fraction": 0.1},
    "train": {"epochs": 2, "batch_size": 32},
    "unlearn": {"per_device_train_batch_size": 16},
    "methods": ["gd", "scrub"],
    "grid": {"gd": {"learning_rate": [0.01, 0.1]}},
    "budgets": [0.1],
    "eval": {"fresh_noise_draws": 3},
}


def test_image_grid_end_to_end(tmp_path):
    from llm_unlearn import run_experiment
    from llm_unlearn.files import read_json

    out = tmp_path / "run"
    report = run_experiment(dict(TINY), output_dir=str(out))
    assert Path(report).is_file()
    d = out / "seed_0"
    assert read_json(d / "poison" / "manifest.json")["metric"] == "gus_mean"
    for name in ("initial", "retrain"):
        info = read_json(d / name / "training_info.json")
        assert info["compute_tokens"] > 0 and not info["diverged"]
    ids = ["gd_b0.1_learning_rate0.01", "gd_b0.1_learning_rate0.1", "scrub_b0.1"]
    for mid in ids:
        info = read_json(d / "unlearn" / mid / "unlearn_info.json")
        for key in ("method", "method_args", "budget", "compute_tokens", "compute_fraction", "steps", "diverged"):
            assert key in info
        assert (d / "diag" / mid / "diagnostics.json").is_file()
    for mid in ["initial", "retrain", *ids]:
        ev = read_json(d / "eval" / mid / "eval_results.json")
        for key in ("clean_accuracy", "mia_auc", "gus_mean", "gus_z", "gus_p", "gus_auc", "gus_tpr_at_1pct_fpr"):
            assert isinstance(ev[key], float), key
        assert ev["asr"] is None and ev["poison_success"] is None
        assert len(read_json(d / "eval" / mid / "per_sample.json")["gus_fresh"]) == 3
    results = read_json(out / "results.json")
    methods = {r["method"] for r in results["rows"]}
    assert {"initial", "retrain", "gd", "scrub"} <= methods
    # a second run resumes: every stage is complete, nothing is retrained
    mtime = (d / "initial" / "model.safetensors").stat().st_mtime
    run_experiment(dict(TINY), output_dir=str(out))
    assert (d / "initial" / "model.safetensors").stat().st_mtime == mtime


def test_cli_reaches_the_image_track(tmp_path):
    from llm_unlearn.stages.run import _argv_track

    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(TINY))
    assert _argv_track(["--config", str(path)]) == "image"


@pytest.mark.parametrize(
    "patch, match",
    [
        ({"poison": {"attack": "gradient_canceling"}}, "model.arch: linear"),
        ({"poison": {"attack": "nope"}}, r"unknown attack 'nope' for the image track; choose from \['badnets'"),
        ({"poison": {"noise_eps": 0.3}}, "poison.noise_eps moved: write poison.attack_args.noise_eps"),
        ({"poison": {"attack_args": {"noise_epsilon": 0.3}}}, "did you mean 'noise_eps'"),
        ({"model": {"arch": "vit"}}, "model.arch"),
        ({"methods": ["gd", "unknown"]}, "unknown method 'unknown'"),
        ({"unlearn": {"method": "ga"}}, "unlearn.method is set by run"),
        ({"trian": {}}, "unknown key 'trian'"),
    ],
)
def test_bad_image_configs_are_named(patch, match):
    from image_track.track import ImageExperimentConfig

    with pytest.raises(ConfigError, match=match):
        build_config(ImageExperimentConfig, {**TINY, **patch})


@pytest.mark.parametrize("path", IMAGE_RECIPES, ids=[p.name for p in IMAGE_RECIPES])
def test_image_recipes_parse(path):
    from image_track.track import ImageExperimentConfig

    data = yaml.safe_load(path.read_text())
    assert data["track"] == "image"
    assert path.read_text().startswith("# Hardware:")
    build_config(ImageExperimentConfig, data)


def test_there_are_image_recipes():
    names = {p.name for p in IMAGE_RECIPES}
    for attack in ("gaussian", "witches_brew", "gradient_canceling", "badnets"):
        assert f"image_{attack}.yaml" in names


def test_cifar_schema_dataset_from_disk(tmp_path):
    """A locally generated dataset with uoft-cs/cifar10's schema (PIL images in ``img``, ClassLabel ``label``)."""
    import datasets
    import numpy as np
    from PIL import Image

    from image_track.data import DataConfig, load_clean
    from image_track.models import ModelConfig
    from image_track.poisoning import ImagePoisonConfig, PoisonSection
    from llm_unlearn.stages.poison import main as poison
    from image_track.task import ImageTrainConfig
    from llm_unlearn.stages.train import main as train
    from llm_unlearn.tasks.classification import ClassifierTrainConfig

    rng = np.random.default_rng(0)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})

    def split(n):
        rows = {"img": [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]}
        rows["label"] = [i % 10 for i in range(n)]
        return datasets.Dataset.from_dict(rows, features=features)

    datasets.DatasetDict({"train": split(60), "test": split(20)}).save_to_disk(str(tmp_path / "cifar"))
    cfg = DataConfig(dataset_name=str(tmp_path / "cifar"))
    xtr, ytr, xte, yte, k = load_clean(cfg, seed=0)
    assert xtr.shape == (60, 3, 32, 32) and xte.shape == (20, 3, 32, 32) and k == 10
    assert 0 <= float(xtr.min()) and float(xtr.max()) <= 1
    ds = poison(
        ImagePoisonConfig(
            output_dir=str(tmp_path / "p"), data=cfg, poison=PoisonSection(attack="badnets", poison_fraction=0.1)
        )
    )
    assert any(p.name.endswith(".safetensors") for p in Path(ds).iterdir())
    out = train(
        ImageTrainConfig(
            dataset_dir=str(ds),
            output_dir=str(tmp_path / "m"),
            model=ModelConfig(arch="resnet18", width=2),
            train=ClassifierTrainConfig(epochs=1, batch_size=16, augment="crop_flip"),
        )
    )
    assert (Path(out) / "model.safetensors").is_file()
    with pytest.raises(ConfigError, match="split 'validation'"):
        load_clean(DataConfig(dataset_name=str(tmp_path / "cifar"), test_split="validation"), seed=0)


def test_a_fresh_worker_running_an_image_stage_knows_the_image_attacks():
    """A spawned worker that gets an image eval job first imports only what unpickling the config needs (the image
    task), yet rebuilds the attack from the manifest: the task must register the image attacks."""
    import subprocess
    import sys

    code = "import image_track.task\nfrom llm_unlearn.registry import attacks\nprint(sorted(attacks('image')))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "gaussian" in out.stdout and "badnets" in out.stdout
