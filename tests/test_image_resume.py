"""Reliability, image track: a training stage killed with SIGKILL mid-epoch resumes from its last checkpoint to
exactly the model an uninterrupted run trains. The checkpoints are the shared trainer's (as on the LLM track: every
``save_epochs`` epochs, the last two kept, removed when the stage completes), with the augmentation generator's state
saved beside them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Every piece of state a resume must restore: momentum buffers, the cosine schedule, and the generator that draws both
# the batch order and the crop/flip augmentation.
TRAIN = dict(
    epochs=5, batch_size=32, learning_rate=0.05, lr_schedule="cosine", augment="crop_flip", momentum=0.9, save_epochs=1
)


def _child_env() -> dict:
    import torch

    # Same thread count as this process: CPU float reductions may depend on it.
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> str:
    from image_track.data import DataConfig
    from image_track.poisoning import ImagePoisonConfig, PoisonSection
    from llm_unlearn.stages.poison import main as poison

    out = tmp_path_factory.mktemp("image_resume") / "poison"
    cfg = ImagePoisonConfig(
        output_dir=str(out),
        poison=PoisonSection(attack="gaussian", poison_fraction=0.1),
        data=DataConfig(max_train_samples=160, max_test_samples=20),
    )
    return str(poison(cfg))


def _config(dataset_dir: str, output_dir: Path) -> dict:
    return {
        "dataset_dir": dataset_dir,
        "output_dir": str(output_dir),
        "model": {"arch": "cnn", "width": 4, "hidden": 16},
        "train": dict(TRAIN),
    }


def _build(cfg: dict):
    from image_track.models import ModelConfig
    from image_track.task import ImageTrainConfig
    from llm_unlearn.tasks.classification import ClassifierTrainConfig

    return ImageTrainConfig(
        **{**cfg, "model": ModelConfig(**cfg["model"]), "train": ClassifierTrainConfig(**cfg["train"])}
    )


# The child counts optimizer steps and kills itself before the given one (1-based): no cleanup, no atexit.
KILL_AT_STEP = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    from image_track.models import ModelConfig
    from image_track.task import ImageTrainConfig
    from llm_unlearn.stages.train import main
    from llm_unlearn.tasks.classification import ClassifierTrainConfig

    step, calls = torch.optim.SGD.step, [0]

    def killing_step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
        return step(self, *args, **kwargs)

    torch.optim.SGD.step = killing_step
    cfg = json.loads(sys.argv[1])
    sections = {"model": ModelConfig(**cfg["model"]), "train": ClassifierTrainConfig(**cfg["train"])}
    main(ImageTrainConfig(**{**cfg, **sections}))
    """
)


def test_image_training_resumes_after_sigkill_to_the_same_model(dataset_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    from llm_unlearn.stages.train import main
    from llm_unlearn.files import read_json

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    main(_build(_config(dataset_dir, straight)))
    ref = read_json(straight / "training_info.json")
    per_epoch = ref["steps"] // TRAIN["epochs"]
    assert ref["steps"] == per_epoch * TRAIN["epochs"] and per_epoch >= 3, ref
    assert ref["resumed_from_step"] is None

    # Killed in the middle of the fourth epoch: checkpoints after epochs 1-3 were saved, the last two kept.
    kill_at = 3 * per_epoch + 2
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_STEP, json.dumps(_config(dataset_dir, resumed)), str(kill_at)],
        env=_child_env(),
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]
    ckpts = resumed / "trainer"
    assert sorted(p.name for p in ckpts.iterdir()) == [f"checkpoint-{2 * per_epoch}", f"checkpoint-{3 * per_epoch}"]
    assert not (resumed / ".complete").exists() and not (resumed / "model.safetensors").exists()
    last = ckpts / f"checkpoint-{3 * per_epoch}"
    assert {"model.safetensors", "llm_unlearn_state-rank0.json"} <= {p.name for p in last.iterdir()}
    assert "augment_rng" in read_json(last / "llm_unlearn_state-rank0.json")["extra"]

    main(_build(_config(dataset_dir, resumed)))
    info = read_json(resumed / "training_info.json")
    assert info["resumed_from_step"] == 3 * per_epoch
    assert info["steps"] == ref["steps"] and info["compute_tokens"] == ref["compute_tokens"]
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for d in (straight, resumed):
        assert (d / ".complete").is_file()
        assert not (d / "trainer").exists(), "checkpoints are removed when the stage completes"
        assert not [p for p in d.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]


def test_a_killed_training_rerun_with_another_recipe_starts_over(dataset_dir, tmp_path):
    """Checkpoints of another recipe are never resumed: the stage harness restarts a dir started with another
    config (its checkpoints go with it)."""
    from llm_unlearn.stages.train import main
    from llm_unlearn.files import read_json

    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_STEP, json.dumps(_config(dataset_dir, out)), "8"],
        env=_child_env(),
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]
    assert any((out / "trainer").glob("checkpoint-*"))
    other = _config(dataset_dir, out)
    other["train"] = {**other["train"], "learning_rate": 0.01}
    main(_build(other))
    assert read_json(out / "training_info.json")["resumed_from_step"] is None


def _tiny_fit(tmp_path: Path, stop_after: int | None = None, **train):
    """A linear model on random images through the shared trainer, checkpointing every epoch; ``stop_after``
    interrupts it after that epoch."""
    import torch

    from image_track.models import ModelConfig, build_model
    from llm_unlearn.tasks.classification import ClassifierTrainConfig
    from llm_unlearn.training import train_classifier

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 4, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    model = build_model(ModelConfig(arch="linear"), [1, 4, 4], 3, [0.5], [0.25], seed=0)
    cfg = ClassifierTrainConfig(**{"epochs": 4, "batch_size": 16, "save_epochs": 1, **train})

    def stop(epoch, _):
        if epoch == stop_after:
            raise KeyboardInterrupt

    try:
        info = train_classifier(model, x, y, cfg, 0, tmp_path, on_epoch_end=stop, checkpoints=True)
    except KeyboardInterrupt:
        return None, model
    return info, model


def test_a_half_written_checkpoint_is_ignored(tmp_path):
    import torch

    ref, ref_model = _tiny_fit(tmp_path / "ref")
    _tiny_fit(tmp_path, stop_after=2)
    ckpt = tmp_path / "trainer"
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint-3", "checkpoint-6"]  # 3 steps an epoch
    # A save killed before our state file (written last, after the Trainer's own files): it does not count.
    (ckpt / "checkpoint-9").mkdir()
    (ckpt / "checkpoint-9" / "model.safetensors").write_bytes(b"half")
    info, model = _tiny_fit(tmp_path)
    assert info["resumed_from_step"] == 6
    assert info["steps"] == ref["steps"] and info["compute_tokens"] == ref["compute_tokens"]
    for k, v in ref_model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_save_epochs_zero_writes_no_checkpoints(tmp_path):
    info, _ = _tiny_fit(tmp_path, stop_after=1, save_epochs=0)
    assert info is None and not list(tmp_path.rglob("checkpoint-*"))


def test_save_epochs_must_not_be_negative():
    from image_track.task import ImageTrainConfig
    from llm_unlearn.tasks.classification import ClassifierTrainConfig
    from llm_unlearn.configs import ConfigError
    from llm_unlearn.flags import parse_config

    ClassifierTrainConfig(save_epochs=0).validate()
    with pytest.raises(ConfigError, match="train.save_epochs"):
        ClassifierTrainConfig(save_epochs=-1).validate()
    with pytest.raises(ConfigError, match="save_epochs"):
        parse_config(ImageTrainConfig, ["--train.save_epochs", "-2"])
