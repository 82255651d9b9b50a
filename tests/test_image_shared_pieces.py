"""What the image track takes from llm_unlearn instead of keeping its own copy: the plain-module checkpoint and the
one same-architecture check (``llm_unlearn.modeling``), surrogate training through ``train_classifier`` without an
output dir, and the stage builders both tracks use (``llm_unlearn.protocol``)."""

from __future__ import annotations

import pytest
import torch

from llm_unlearn.configs import ConfigError


def _saved(tmp_path, name: str, arch: str):
    from image_track.models import ModelConfig, build_model, save_model

    model = build_model(ModelConfig(arch=arch, hidden=8), [1, 4, 4], 3, [0.5], [0.25], seed=0)
    save_model(model, tmp_path / name)
    return model, str(tmp_path / name)


def test_an_image_model_dir_round_trips_and_other_architectures_are_refused(tmp_path):
    from image_track.models import load_model
    from image_track.task import TASK

    model, initial = _saved(tmp_path, "initial", "mlp")
    loaded = load_model(initial)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    TASK.check_models({"model_dir": initial, "retrain_dir": _saved(tmp_path, "gold", "mlp")[1]})
    _, other = _saved(tmp_path, "other", "linear")
    with pytest.raises(ConfigError, match=r"retrain_dir .*other' and model_dir .* are not the same architecture \("):
        TASK.check_models({"model_dir": initial, "retrain_dir": other})
    with pytest.raises(ConfigError, match=r"retrain_dir: .* holds no saved model \(model\.safetensors"):
        TASK.check_models({"model_dir": initial, "retrain_dir": str(tmp_path / "missing")})


def test_a_surrogate_that_diverges_raises_and_leaves_no_scratch_dir(tmp_path, monkeypatch):
    """Without an output dir (how attacks train surrogates) a non-finite loss is an error, not a record."""
    import tempfile

    from image_track.models import ModelConfig, build_model
    from llm_unlearn.tasks.classification import ClassifierTrainConfig
    from llm_unlearn.training import DivergedError, train_classifier

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 1, 4, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
    model = build_model(ModelConfig(arch="linear"), [1, 4, 4], 3, [0.5], [0.25], seed=0)
    with pytest.raises(DivergedError):
        train_classifier(model, x, y, ClassifierTrainConfig(epochs=3, batch_size=8, learning_rate=1e38), seed=0)
    assert not list(tmp_path.glob("surrogate-*"))  # the scratch dir is gone


def test_both_tracks_build_eval_and_diagnose_configs_with_the_shared_builders():
    from image_track.track import STAGES as IMAGE
    from llm_unlearn.planner import diagnose_config, eval_config
    from llm_unlearn.stages.run import STAGES as LLM
    from llm_unlearn.tracks import get_track

    assert IMAGE.evaluate[1] is eval_config and IMAGE.diagnose[1] is diagnose_config
    assert get_track("image").plan == IMAGE.plan and get_track("llm").plan == LLM.plan
    from image_track.track import ImageExperimentConfig

    cfg = ImageExperimentConfig(output_dir="/tmp/x", seeds=[0], methods=["gd"])
    ec = eval_config(cfg, "m", "d", "o")
    dc = diagnose_config(cfg, "i", "r", ec, "out")
    assert (ec.model_dir, ec.dataset_dir, ec.output_dir) == ("m", "d", "o") and ec.batch_size == cfg.eval.batch_size
    assert (dc.task, dc.initial_dir, dc.retrain_dir, dc.model_dir, dc.output_dir) == (
        "image_classification",
        "i",
        "r",
        "m",
        "out",
    )
