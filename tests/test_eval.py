"""The evaluation stage on the tiny LLM: the Gaussian audit's null, generation, and MIA plumbing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_unlearn.files import read_json


def test_gus_null_on_model_that_never_saw_noise(tiny_dir, gaussian_dir):
    """An untrained model never saw the noise: I_z over poisons and fresh draws must look N(0, 1)."""
    from llm_unlearn.modeling import load_dataset_dir, load_model, load_tokenizer
    from llm_unlearn.attacks.gaussian import gus_scores

    dd, _ = load_dataset_dir(gaussian_dir)
    model, tok = load_model(tiny_dir), load_tokenizer(tiny_dir)
    # All training rows as "poisons" with fresh seeds: ~120 x 20 draws of I under the null.
    ds = dd["train"].map(lambda r, i: {"noise_seed": 1000 + i}, with_indices=True)
    poison, fresh = gus_scores(model, tok, ds, 256, 32, draws=20)
    allv = np.concatenate([np.asarray(poison), np.asarray(fresh).ravel()])
    assert abs(allv.mean()) < 0.1
    assert 0.9 < allv.std() < 1.1


def test_gus_detects_noise_the_model_was_trained_on(tiny_dir, gaussian_dir):
    """Push the model's loss down along the poisons' noise directions: the audit must see a negative shift."""
    from llm_unlearn.canaries import batch_prompt_noise
    from llm_unlearn.metrics import gus_summary
    from llm_unlearn.modeling import load_dataset_dir, load_model, load_tokenizer, tokenize_split
    from llm_unlearn.attacks.gaussian import gus_scores
    from llm_unlearn.tasks.causal_lm import CompletionCollator, embed, mean_token_nll

    dd, _ = load_dataset_dir(gaussian_dir)
    model, tok = load_model(tiny_dir), load_tokenizer(tiny_dir)
    batch = CompletionCollator(tok.pad_token_id)(list(tokenize_split(dd["forget"], tok, 256)))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):  # memorise the noised poisons only
        e = embed(model, batch["input_ids"])
        noise = batch_prompt_noise(batch["noise_seed"].tolist(), batch["prompt_len"].tolist(), e.shape[1], e.shape[2])
        loss = mean_token_nll(model, batch, e + noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    poison, fresh = gus_scores(model, tok, dd["forget"], 256, 32, draws=10)
    s = gus_summary(poison, fresh)
    assert s["gus_mean"] < -0.5 and s["gus_z"] < -3
    assert abs(s["fresh_gus_z"]) < 3.5


def test_eval_stage_outputs(trained_dirs, gaussian_dir, tmp_path):
    from llm_unlearn.stages.evaluate import EvalConfig, main

    out = main(
        EvalConfig(
            model_dir=trained_dirs[0], dataset_dir=gaussian_dir, output_dir=str(tmp_path / "e"), fresh_noise_draws=4
        )
    )
    m = read_json(out / "eval_results.json")
    per = read_json(out / "per_sample.json")
    assert len(per["test_predictions"]) == 40
    assert len(per["gus_poison"]) == m["n_poison"] == 12
    assert np.asarray(per["gus_fresh"]).shape == (4, 12)
    assert 0 <= m["clean_accuracy"] <= 1 and 0 <= m["mia_auc"] <= 1
    assert m["asr"] is None


def test_batched_generation_equals_one_at_a_time(tiny_dir, gaussian_dir):
    from llm_unlearn.generation.hf import generate
    from llm_unlearn.modeling import load_dataset_dir, load_model, load_tokenizer
    from llm_unlearn.stages.evaluate import prompts_for

    dd, _ = load_dataset_dir(gaussian_dir)
    model, tok = load_model(tiny_dir), load_tokenizer(tiny_dir)
    prompts = prompts_for(tok, dd["test"].select(range(12)), 256, ["negative", "positive"])
    batched = generate(model, tok, prompts, max_new_tokens=4, batch_size=5)
    single = [generate(model, tok, [p], max_new_tokens=4, batch_size=1)[0] for p in prompts]
    assert batched == single


@pytest.mark.parametrize("split", ["train", "retain"])
def test_training_info(trained_dirs, split):
    info = read_json(f"{trained_dirs[0 if split == 'train' else 1]}/training_info.json")
    assert info["compute_tokens"] > 0 and info["steps"] > 0 and not info["diverged"]
    assert (info["noise_std"] > 0) == (split == "train")  # only the poisoned run adds noise
