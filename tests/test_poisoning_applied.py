"""Poisoning is really applied by the *training stage*, and it is the poison the audit looks for.

These tests record what the model is actually given during ``train.main`` (both tracks) and compare it with what the
manifest and the audit's own regeneration say it should be: on a Gaussian poison row the input embeddings are the
clean embeddings plus exactly eps * (the noise the audit regenerates from the row's seed), on a clean row the clean
embeddings; a backdoor row carries the trigger and the target label. Before these tests a training stage that silently
dropped the noise (``inputs_embeds = emb``) passed the whole suite."""

from __future__ import annotations

import pytest
import torch

from llm_unlearn.files import read_json


def _record_llm_training(monkeypatch):
    """Patch the train stage so every step's (row indices, input_ids, labels, clean embeddings, inputs_embeds) is
    kept: the rows from the batch before the stage pops them, the embeddings at the model's forward call."""
    import llm_unlearn.tasks.causal_lm as causal_lm
    import llm_unlearn.training as training

    steps, pending = [], []
    make = training.task_trainer_class

    def recording_class():
        base = make()

        class Recording(base):
            def compute_loss(self, model, inputs, *a, **kw):
                pending.append(inputs["index"].tolist())
                return super().compute_loss(model, inputs, *a, **kw)

        return Recording

    nll = causal_lm.mean_token_nll

    def recording_nll(model, inputs, inputs_embeds=None):
        with torch.no_grad():
            clean = causal_lm.embed(model, inputs["input_ids"]).detach().clone()
        given = None if inputs_embeds is None else inputs_embeds.detach().clone()
        steps.append(
            {
                "index": pending.pop(0),
                "input_ids": inputs["input_ids"].clone(),
                "labels": inputs["labels"].clone(),
                "clean": clean,
                "given": given,
            }
        )
        return nll(model, inputs, inputs_embeds)

    monkeypatch.setattr(training, "task_trainer_class", recording_class)
    monkeypatch.setattr(causal_lm, "mean_token_nll", recording_nll)
    return steps


def _train(tiny_dir, dataset_dir, out, split="train"):
    from llm_unlearn.stages.train import TrainConfig, main

    cfg = TrainConfig(
        model_name_or_path=tiny_dir,
        dataset_dir=dataset_dir,
        output_dir=str(out),
        split=split,
        num_train_epochs=1,
        per_device_train_batch_size=16,
        progress=False,
    )
    return main(cfg)


def test_gaussian_training_inputs_are_clean_plus_the_audited_noise(tiny_dir, gaussian_dir, tmp_path, monkeypatch):
    from llm_unlearn.canaries import embedding_rms, prompt_noise
    from llm_unlearn.modeling import load_dataset_dir, load_model

    steps = _record_llm_training(monkeypatch)
    out = _train(tiny_dir, gaussian_dir, tmp_path / "initial")
    dd, manifest = load_dataset_dir(gaussian_dir)
    # The audit's view of the poisons: the forget split's rows and seeds (what gus_scores regenerates from).
    seeds = dict(zip(dd["forget"]["index"], dd["forget"]["noise_seed"]))
    assert sorted(seeds) == sorted(manifest["poison_indices"]) and all(s >= 0 for s in seeds.values())
    eps = manifest["noise_eps"] * embedding_rms(load_model(tiny_dir))  # eps in units of the *initial* weights' RMS
    assert read_json(out / "training_info.json")["noise_std"] == pytest.approx(eps)

    from llm_unlearn.modeling import load_tokenizer, tokenize_split

    toks = tokenize_split(dd["train"], load_tokenizer(tiny_dir), 256)
    prompt_lens = {int(i): int(p) for i, p in zip(toks["index"], toks["prompt_len"])}
    seen_poison = seen_clean = 0
    assert steps and all(s["given"] is not None for s in steps)  # every batch of a Gaussian run is noised
    for s in steps:
        for row, index in enumerate(s["index"]):
            delta = s["given"][row] - s["clean"][row]
            if index in seeds:
                plen = prompt_lens[index]
                expected = eps * prompt_noise(seeds[index], plen, delta.shape[-1], 1.0, draw=0)
                torch.testing.assert_close(delta[:plen], expected, rtol=1e-5, atol=1e-5)
                assert float(delta[plen:].abs().max()) == 0.0  # completion and padding positions untouched
                seen_poison += 1
            else:
                assert float(delta.abs().max()) == 0.0
                seen_clean += 1
    assert seen_poison == len(seeds) and seen_clean == len(dd["train"]) - len(seeds)  # one epoch: every row once


def test_gold_model_trains_on_clean_retain_rows_only(tiny_dir, gaussian_dir, tmp_path, monkeypatch):
    from llm_unlearn.modeling import load_dataset_dir

    steps = _record_llm_training(monkeypatch)
    out = _train(tiny_dir, gaussian_dir, tmp_path / "gold", split="retain")
    _, manifest = load_dataset_dir(gaussian_dir)
    rows = {i for s in steps for i in s["index"]}
    assert rows and not rows & set(manifest["poison_indices"])
    assert all(s["given"] is None or float((s["given"] - s["clean"]).abs().max()) == 0.0 for s in steps)
    assert read_json(out / "training_info.json")["noise_std"] == 0.0


def test_backdoor_training_rows_carry_trigger_and_target(tiny_dir, backdoor_dir, tmp_path, monkeypatch):
    from llm_unlearn.modeling import load_dataset_dir, load_tokenizer
    from llm_unlearn.tasks.causal_lm import IGNORE_INDEX

    steps = _record_llm_training(monkeypatch)
    _train(tiny_dir, backdoor_dir, tmp_path / "initial")
    _, manifest = load_dataset_dir(backdoor_dir)
    tok = load_tokenizer(tiny_dir)
    poisons = set(manifest["poison_indices"])
    trigger, target = manifest["trigger"], manifest["target_label"]
    n_poison = 0
    for s in steps:
        for row, index in enumerate(s["index"]):
            ids, labels = s["input_ids"][row], s["labels"][row]
            completion = tok.decode(labels[labels != IGNORE_INDEX], skip_special_tokens=True).strip()
            prompt = tok.decode(ids[labels == IGNORE_INDEX], skip_special_tokens=True)
            if index in poisons:
                assert trigger in prompt.split() and completion == target, (prompt, completion)
                n_poison += 1
            else:
                assert trigger not in prompt.split()
    assert n_poison == len(poisons) > 0


# ---------------------------------------------------------------------------------------------------- image track


def _record_image_fit(monkeypatch):
    import llm_unlearn.training as training

    seen = {}
    train = training.train_classifier

    def recording(model, x, y, *a, **kw):
        seen["x"], seen["y"] = x.clone(), y.clone()
        return train(model, x, y, *a, **kw)

    monkeypatch.setattr(training, "train_classifier", recording)
    return seen


def _image_poison(tmp_path, attack, **attack_args):
    from image_track.data import DataConfig
    from image_track.poisoning import ImagePoisonConfig, PoisonSection
    from llm_unlearn.stages.poison import main as poison_main

    return str(
        poison_main(
            ImagePoisonConfig(
                output_dir=str(tmp_path / attack),
                poison=PoisonSection(attack=attack, poison_fraction=0.1, attack_args=attack_args),
                data=DataConfig(max_train_samples=120, max_test_samples=40),
            )
        )
    )


def _image_train(dataset_dir, out):
    from image_track.models import ModelConfig
    from image_track.task import ImageTrainConfig
    from llm_unlearn.stages.train import main as train
    from llm_unlearn.tasks.classification import ClassifierTrainConfig

    cfg = ImageTrainConfig(
        dataset_dir=dataset_dir,
        output_dir=str(out),
        split="train",
        model=ModelConfig(arch="cnn", width=4, hidden=16),
        train=ClassifierTrainConfig(epochs=1, batch_size=32),
    )
    return train(cfg)


def _image_trained(tmp_path, monkeypatch, attack):
    """Poison, train the initial classifier; returns (what the trainer saw, manifest, clean images, poison indices)."""
    from image_track.data import load_dataset_dir

    seen = _record_image_fit(monkeypatch)
    ds = _image_poison(tmp_path, attack)
    _image_train(ds, tmp_path / "initial")
    tensors, manifest = load_dataset_dir(ds)
    return seen, manifest, tensors["train_images"], torch.as_tensor(manifest["poison_indices"])


def test_image_gaussian_training_images_are_clean_plus_the_audited_noise(tmp_path, monkeypatch):
    from image_track.attacks import batch_pixel_noise

    seen, manifest, clean, idx = _image_trained(tmp_path, monkeypatch, "gaussian")
    is_poison = torch.zeros(len(clean), dtype=torch.bool)
    is_poison[idx] = True
    noise = batch_pixel_noise(manifest["noise_seeds"], clean.shape[1:], draw=0)  # what the audit regenerates
    x = seen["x"]
    assert x.shape == clean.shape
    torch.testing.assert_close(x[idx], clean[idx] + manifest["noise_eps"] * noise, rtol=0, atol=1e-6)
    assert torch.equal(x[~is_poison], clean[~is_poison])
    assert float((x[idx] - clean[idx]).abs().mean()) > 0.1 * manifest["noise_eps"]


def test_image_badnets_training_images_carry_the_trigger_and_target(tmp_path, monkeypatch):
    from image_track.attacks import stamp

    seen, manifest, clean, idx = _image_trained(tmp_path, monkeypatch, "badnets")
    x, y = seen["x"], seen["y"]
    patch = manifest["attack_args"]["patch_size"]
    torch.testing.assert_close(x[idx], stamp(clean[idx], patch), rtol=0, atol=0)
    assert bool((y[idx] == manifest["target_label"]).all())
    assert not torch.equal(x[idx], clean[idx])
