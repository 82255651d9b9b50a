"""Shared fixtures: a tiny offline model and small poisoned datasets (built once per session, seconds)."""

from __future__ import annotations

import os

import pytest
from helpers import TINY_SHAPE

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach a hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY = TINY_SHAPE


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from llm_unlearn.embedded import TinyModelConfig, save_tiny

    out = tmp_path_factory.mktemp("tiny")
    save_tiny(out, TinyModelConfig(**TINY), seed=0)
    return str(out)


def _poison(tmp_path_factory, **kw):
    from llm_unlearn.stages.poison import PoisonConfig, main

    out = tmp_path_factory.mktemp(kw.get("attack", "gaussian"))
    cfg = PoisonConfig(output_dir=str(out), embedded_n_train=120, embedded_n_test=40, poison_fraction=0.1, **kw)
    cfg.validate()
    return str(main(cfg))


@pytest.fixture(scope="session")
def gaussian_dir(tmp_path_factory):
    return _poison(tmp_path_factory, attack="gaussian")


@pytest.fixture(scope="session")
def backdoor_dir(tmp_path_factory):
    return _poison(tmp_path_factory, attack="backdoor")


@pytest.fixture(scope="session")
def trained_dirs(tmp_path_factory, tiny_dir, gaussian_dir):
    """(initial, retrain) trained for one short epoch on the Gaussian set."""
    from llm_unlearn.stages.train import TrainConfig, main

    out = tmp_path_factory.mktemp("trained")
    dirs = []
    for name, split in (("initial", "train"), ("retrain", "retain")):
        cfg = TrainConfig(
            model_name_or_path=tiny_dir,
            dataset_dir=gaussian_dir,
            output_dir=str(out / name),
            split=split,
            num_train_epochs=1,
            per_device_train_batch_size=16,
            progress=False,
        )
        dirs.append(str(main(cfg)))
    return tuple(dirs)


@pytest.fixture(scope="session")
def image_dirs(tmp_path_factory):
    """(dataset_dir, initial_dir, retrain_dir): a Gaussian-poisoned digits subset and two 2-epoch tiny CNNs."""
    from image_track.data import DataConfig
    from image_track.models import ModelConfig
    from image_track.poisoning import ImagePoisonConfig, PoisonSection
    from llm_unlearn.stages.poison import main as poison
    from image_track.task import ImageTrainConfig
    from llm_unlearn.stages.train import main as train
    from llm_unlearn.tasks.classification import ClassifierTrainConfig

    root = tmp_path_factory.mktemp("image_dirs")
    ds = str(
        poison(
            ImagePoisonConfig(
                output_dir=str(root / "poison"),
                poison=PoisonSection(attack="gaussian", poison_fraction=0.1),
                data=DataConfig(max_train_samples=160, max_test_samples=40),
            )
        )
    )
    dirs = []
    for name, split in (("initial", "train"), ("retrain", "retain")):
        cfg = ImageTrainConfig(
            dataset_dir=ds,
            output_dir=str(root / name),
            split=split,
            model=ModelConfig(arch="cnn", width=4, hidden=16),
            train=ClassifierTrainConfig(epochs=2, batch_size=32),
        )
        dirs.append(str(train(cfg)))
    return ds, *dirs
