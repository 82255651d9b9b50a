"""`llm-unlearn push`: the staged folder (safetensors only, tokenizer, results.json, a model card whose model-index
`huggingface_hub` parses), the upload through a stand-in for the two network calls, and that a token in the
environment never reaches any file a run or a push writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_unlearn.configs import ConfigError
from helpers import tiny_experiment

FAKE_TOKEN = "hf_FAKEtok3nNeverWrittenAnywhere0123456789"
EXPERIMENT = tiny_experiment(methods=["gd", "eu_k"])  # a LoRA adapter and a full model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny `run` made with a (fake) token in the environment, as a logged-in user would run it."""
    from llm_unlearn import run_experiment

    out = tmp_path_factory.mktemp("hub_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", FAKE_TOKEN)
        run_experiment(EXPERIMENT, output_dir=str(out))
    return out


@pytest.fixture
def fake_token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)


def _push(**kw):
    from llm_unlearn.configs import build_config
    from llm_unlearn.stages.push import PushConfig, main

    return main(build_config(PushConfig, kw))


def _row(run_dir, variant):
    rows = json.loads((run_dir / "results.json").read_text())["rows"]
    return next(r for r in rows if r["variant"] == variant)


def test_dry_run_stages_adapter_and_a_card_huggingface_hub_parses(run_dir, tmp_path, fake_token):
    from huggingface_hub import ModelCard

    dest = _push(
        folder=str(run_dir / "seed_0" / "unlearn" / "gd_b0.2"),
        repo_id="org/tiny-gd",
        dry_run=True,
        staging_dir=str(tmp_path / "stage"),
    )
    files = {f.name for f in dest.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "results.json", "README.md"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) or f.startswith(".") for f in files)
    assert "unlearn_info.json" not in files and "config.yaml" not in files
    # The staged adapter carries no local path of the run's initial model.
    assert json.loads((dest / "adapter_config.json").read_text())["base_model_name_or_path"] is None

    card = ModelCard.load(dest / "README.md")
    assert card.data.library_name == "peft" and "gd" in card.data.tags and "gaussian" in card.data.tags
    got = {r.metric_type: r.metric_value for r in card.data.eval_results}
    want = _row(run_dir, "gd_b0.2")["metrics"]
    assert set(got) == {"accuracy", "gus_mean", "gus_z", "gus_p", "gap_closed", "mia_auc"}  # no ASR: gaussian
    assert got["accuracy"] == pytest.approx(want["clean_accuracy"])
    assert got["gus_z"] == pytest.approx(want["gus_z"]) and got["gus_p"] == pytest.approx(want["gus_p"])
    assert got["gap_closed"] == pytest.approx(want["gap_closed"])
    assert "| budget | 0.2 of the retraining compute" in card.text and "| seed | 0" in card.text

    results = json.loads((dest / "results.json").read_text())
    assert {r["variant"] for r in results["rows"]} == {"initial", "retrain", "gd_b0.2"}
    assert results["config"]["methods"] == ["gd", "eu_k"]


def test_push_full_model_through_a_stand_in_for_the_network(run_dir, tmp_path, monkeypatch, fake_token):
    import shutil

    from huggingface_hub import HfApi

    calls = {}

    def create_repo(self, repo_id, **kw):
        calls["create_repo"] = (repo_id, kw)

    def upload_folder(self, *, repo_id, folder_path, **kw):
        calls["upload_folder"] = repo_id
        shutil.copytree(folder_path, tmp_path / "uploaded")  # what would have gone over the wire
        return "https://huggingface.co/org/tiny-euk/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    url = _push(folder=str(run_dir / "seed_0" / "unlearn" / "eu_k_b0.2"), repo_id="org/tiny-euk", private=True)
    assert url.endswith("/commit/0")
    assert calls["create_repo"] == ("org/tiny-euk", {"private": True, "repo_type": "model", "exist_ok": True})
    files = {f.name for f in (tmp_path / "uploaded").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "results.json", "README.md"} <= files
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "uploaded" / "README.md")
    assert card.data.library_name == "transformers"
    assert {r.metric_type for r in card.data.eval_results} >= {"accuracy", "gus_z", "gus_p", "gap_closed"}


def test_fake_token_reaches_no_file_of_a_run_or_a_push(run_dir, tmp_path, fake_token):
    stage = tmp_path / "stage"
    proc = subprocess.run(
        [sys.executable, "-m", "llm_unlearn", "push", "--folder", str(run_dir / "seed_0" / "initial")]
        + ["--repo_id", "org/tiny-initial", "--dry_run", "true", "--staging_dir", str(stage)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_TOKEN": FAKE_TOKEN},
    )
    assert proc.returncode == 0, proc.stderr
    assert "README.md" in proc.stdout and "model.safetensors" in proc.stdout
    assert FAKE_TOKEN not in proc.stdout + proc.stderr
    scanned = 0
    for root in (run_dir, stage):
        for f in Path(root).rglob("*"):
            if f.is_file():
                assert FAKE_TOKEN.encode() not in f.read_bytes(), f
                assert b"hf_FAKE" not in f.read_bytes(), f
                scanned += 1
    assert scanned > 30  # the run's configs, weights, results, report, plots and the staged folder


def test_backdoor_card_reports_asr_not_gus(tmp_path):
    from huggingface_hub import ModelCard

    from llm_unlearn.hub import ModelInfo, render_card

    metrics = {"clean_accuracy": 0.9, "asr": 0.25, "gus_z": None, "gus_p": None, "gap_closed": 0.8}
    row = {"method": "npo", "budget": 0.1, "variant": "npo_b0.1", "seed": 2, "metrics": metrics}
    info = ModelInfo(
        folder=tmp_path,
        run_dir=tmp_path,
        seed=2,
        variant="npo_b0.1",
        kind="adapter",
        experiment={
            "model_name_or_path": "gpt2-medium",
            "seeds": [0, 1, 2],
            "poison": {"dataset_name": "stanfordnlp/imdb"},
        },
        manifest={"attack": "backdoor"},
        row=row,
        rows=[row],
        results={},
    )
    (tmp_path / "README.md").write_text(render_card(info, "org/npo", base_repo_id="org/initial"))
    card = ModelCard.load(tmp_path / "README.md")
    got = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert got == {"accuracy": 0.9, "attack_success_rate": 0.25, "gap_closed": 0.8}
    assert card.data.base_model == "org/initial" and card.data.datasets == ["stanfordnlp/imdb"]
    assert {r.dataset_type for r in card.data.eval_results} == {"stanfordnlp/imdb"}


def test_bad_folders_and_settings_are_config_errors(run_dir, tmp_path, monkeypatch):
    import huggingface_hub

    gd = str(run_dir / "seed_0" / "unlearn" / "gd_b0.2")
    with pytest.raises(ConfigError, match="is a whole run; push one of its models"):
        _push(folder=str(run_dir), repo_id="org/x", dry_run=True, staging_dir=str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="is not a model dir of a `llm-unlearn run`"):
        _push(folder=str(tmp_path), repo_id="org/x", dry_run=True, staging_dir=str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="repo_id: 'org/bad name' is not a valid Hub repo id"):
        _push(folder=gd, repo_id="org/bad name", dry_run=True)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists; choose another or pass --overwrite true"):
        _push(folder=gd, repo_id="org/x", dry_run=True, staging_dir=str(tmp_path / "taken"))
    with pytest.raises(ConfigError, match="does not look like a staging dir"):
        _push(folder=gd, repo_id="org/x", dry_run=True, staging_dir=str(tmp_path / "taken"), overwrite=True)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ConfigError, match="no Hugging Face token: set HF_TOKEN"):
        _push(folder=gd, repo_id="org/x", staging_dir=str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written before the error


def test_cli_push_error_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "llm_unlearn", "push", "--folder", str(tmp_path), "--repo_id", "org/x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is not a model dir of a `llm-unlearn run`" in proc.stderr
