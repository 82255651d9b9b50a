"""The LLM Gradient Canceling attack: the shared math against the paper's equation, the crafted poisons (bounded,
clean labels, lower canceling objective), the training hook, bad attack_args, and a small end-to-end run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_unlearn.attacks.canceling import (
    canceling_chunk_loss,
    canceling_objective,
    canceling_residual,
    corrupt_parameters,
    flat_grad,
)
from llm_unlearn.configs import ConfigError

# --- the shared math -------------------------------------------------------------------------------------------------


def _linear_problem(seed=0, n_c=12, n_p=4, d=5, c=3):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c, d, generator=g, requires_grad=True)
    xc, yc = torch.randn(n_c, d, generator=g), torch.randint(0, c, (n_c,), generator=g)
    xp = torch.randn(n_p, d, generator=g, requires_grad=True)
    yp = torch.randint(0, c, (n_p,), generator=g)
    return w, xc, yc, xp, yp


def test_objective_is_the_papers_equation():
    w, xc, yc, xp, yp = _linear_problem()
    n_c, n_p = len(yc), len(yp)
    n = n_c + n_p
    g_clean = flat_grad(F.cross_entropy(xc @ w.T, yc, reduction="sum"), [w])
    g_poison = flat_grad(F.cross_entropy(xp @ w.T, yp, reduction="sum"), [w])
    # ||grad of the mean clean loss x n_c/n + (n_p/n) grad of the mean poison loss||^2, from the per-set means
    mean_c = flat_grad(F.cross_entropy(xc @ w.T, yc), [w])
    mean_p = flat_grad(F.cross_entropy(xp @ w.T, yp), [w])
    paper = ((n_c / n) * mean_c + (n_p / n) * mean_p).square().sum()
    torch.testing.assert_close(canceling_objective(g_clean, g_poison, n), paper)
    # ... which is the squared norm of the gradient of the mean loss over the union
    union = flat_grad(F.cross_entropy(torch.cat([xc, xp]) @ w.T, torch.cat([yc, yp])), [w])
    torch.testing.assert_close(canceling_objective(g_clean, g_poison, n), union.square().sum())
    offset = torch.full_like(g_clean, 0.1)
    torch.testing.assert_close(canceling_residual(g_clean, g_poison, n, offset), union + 0.1)


def test_chunked_gradient_equals_the_objectives_gradient():
    w, xc, yc, xp, yp = _linear_problem(seed=1)
    n = len(yc) + len(yp)
    g_clean = flat_grad(F.cross_entropy(xc @ w.T, yc, reduction="sum"), [w]).detach()

    def g_p(rows, create_graph):
        return flat_grad(F.cross_entropy(xp[rows] @ w.T, yp[rows], reduction="sum"), [w], create_graph=create_graph)

    obj = canceling_objective(g_clean, g_p(slice(None), True), n)
    (want,) = torch.autograd.grad(obj, xp)
    r = canceling_residual(g_clean, g_p(slice(None), False).detach(), n)
    got = torch.zeros_like(xp)
    for chunk in (slice(0, 1), slice(1, 4)):  # chunks of unequal size
        got = got + torch.autograd.grad(canceling_chunk_loss(r, g_p(chunk, True), n), xp)[0]
    torch.testing.assert_close(got, want)


def test_corruption_stays_in_the_ball_and_raises_the_loss():
    w, xc, yc, _, _ = _linear_problem(seed=2)
    clean = [w.detach().clone()]
    radius = 0.3 * float(clean[0].norm())
    before = float(F.cross_entropy(xc @ clean[0].T, yc))
    corrupt_parameters([w], clean, lambda: F.cross_entropy(xc @ w.T, yc), radius, 20)
    assert float((w.detach() - clean[0]).norm()) <= radius * (1 + 1e-5)
    assert float(F.cross_entropy(xc @ w.detach().T, yc)) > before


def test_head_nll_is_the_models_completion_loss(tiny_dir, gaussian_dir):
    """head_features + head_nll recompute the completion NLL from the LM head's input; its gradient in the label
    rows is the model's own gradient in those rows of the LM head."""
    from llm_unlearn.attacks.gc_craft import head_features, head_nll
    from llm_unlearn.modeling import load_dataset_dir, load_model, load_tokenizer, tokenize_split
    from llm_unlearn.tasks.causal_lm import CompletionCollator, completion_ids, completion_nll

    model, tok = load_model(tiny_dir), load_tokenizer(tiny_dir)
    dd, _ = load_dataset_dir(gaussian_dir)
    rows = list(tokenize_split(dd["train"].select(range(6)), tok, 256))
    batch = CompletionCollator(tok.pad_token_id)(rows)
    label_ids = torch.as_tensor(sorted({completion_ids(tok, f" {w}")[0] for w in ("negative", "positive")}))
    weight = model.get_output_embeddings().weight
    want = completion_nll(model, batch).sum()
    (want_g,) = torch.autograd.grad(want, weight)
    h, t, m = head_features(model, batch)
    rows_var = weight.detach()[label_ids].clone().requires_grad_(True)
    got = head_nll(h[m], t[m], weight.detach().float(), label_ids, rows_var)
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(got, rows_var)[0], want_g[label_ids], rtol=1e-4, atol=1e-6)


def test_projection_bounds_every_token_and_clears_non_prompt_positions():
    from llm_unlearn.attacks.gc_craft import project_perturbations

    delta = torch.randn(3, 5, 8) * 10
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float)
    project_perturbations(delta, mask, 2.0)
    norms = delta.norm(dim=-1)
    assert float(norms.max()) <= 2.0 + 1e-5
    assert float(norms[mask == 0].abs().max()) == 0.0


def test_bad_attack_args_are_config_errors():
    from llm_unlearn.attacks import build_attack

    with pytest.raises(ConfigError, match="eps must be > 0"):
        build_attack("gradient_canceling", {"eps": 0.0})
    with pytest.raises(ConfigError, match="gc_steps must be >= 1"):
        build_attack("gradient_canceling", {"gc_steps": 0})
    with pytest.raises(ConfigError, match="corruption_radius"):
        build_attack("gradient_canceling", {"corruption_radiuss": 0.5})  # did-you-mean
    with pytest.raises(ConfigError, match="surrogate_seed_offset must be >= 0"):
        build_attack("gradient_canceling", {"surrogate_seed_offset": -1})
    with pytest.raises(ConfigError, match="craft_rounds must be >= 1"):
        build_attack("gradient_canceling", {"craft_rounds": 0})
    with pytest.raises(ConfigError, match=r"target_accuracy must be in \(0, 1\)"):
        build_attack("gradient_canceling", {"target_accuracy": 1.5})


# --- crafting and the training hook on the test's tiny model ------------------------------------------------------


def _poison_and_craft(out, tiny_dir, attack_args: dict, poison_fraction: float, check_dataset=None):
    """The poison stage with ``attack_args`` on 120 embedded reviews, then the attack's crafting against a 2-epoch
    surrogate of the test's tiny model: (attack, crafting info, dataset, manifest, initial dir, train config);
    ``check_dataset(dd, manifest)`` runs on the poisoned set before the crafting."""
    from llm_unlearn.attacks import attack_from_manifest
    from llm_unlearn.modeling import load_dataset_dir, load_tokenizer
    from llm_unlearn.stages.poison import PoisonConfig
    from llm_unlearn.stages.poison import main as poison
    from llm_unlearn.stages.train import TrainConfig

    pc = PoisonConfig(
        output_dir=str(out / "poison"),
        attack="gradient_canceling",
        attack_args=attack_args,
        embedded_n_train=120,
        embedded_n_test=40,
        poison_fraction=poison_fraction,
    )
    pc.validate()
    poison(pc)
    dd, manifest = load_dataset_dir(pc.output_dir)
    if check_dataset is not None:
        check_dataset(dd, manifest)
    attack = attack_from_manifest(manifest, "llm")
    tc = TrainConfig(
        model_name_or_path=tiny_dir,
        dataset_dir=pc.output_dir,
        output_dir=str(out / "initial"),
        num_train_epochs=2,
        per_device_train_batch_size=16,
        progress=False,
    )
    (out / "initial").mkdir()
    info = attack.craft_poisons(tokenizer=load_tokenizer(tiny_dir), dataset=dd, cfg=tc, out=out / "initial")
    return attack, info["gradient_canceling"], dd, manifest, out / "initial", tc


@pytest.fixture(scope="module")
def crafted(tmp_path_factory, tiny_dir):
    args = {"eps": 0.5, "gc_steps": 15, "gc_lr": 0.1, "corruption_steps": 20, "craft_batch_size": 8}
    return _poison_and_craft(tmp_path_factory.mktemp("gc"), tiny_dir, args, 0.1)


def test_crafted_poisons_cancel_within_the_bound_with_clean_labels(crafted, tiny_dir):
    import math

    from safetensors.torch import load_file

    from llm_unlearn.canaries import embedding_rms
    from llm_unlearn.modeling import load_model, load_tokenizer, tokenize_split

    attack, info, dd, manifest, out, _ = crafted
    assert info["n_poison"] == manifest["n_poison"] == 12
    assert info["gradient_norm_after"] < info["gradient_norm_before"], info  # the poisons reduce the objective
    assert info["target_train_accuracy"] <= info["surrogate_train_accuracy"], info
    # Clean labels, clean text: a poison row is the clean review with its own label.
    forget = dd["forget"]
    assert forget["label"] == forget["orig_label"]
    assert all(c == f" {label}" for c, label in zip(forget["completion"], forget["label"]))
    # One perturbation per poison, over its prompt tokens, each token within eps x the initial embedding RMS.
    assert sorted(attack.perturbations) == sorted(manifest["poison_indices"])
    toks = {r["index"]: r for r in tokenize_split(forget, load_tokenizer(tiny_dir), 256)}
    hidden = next(iter(attack.perturbations.values())).shape[1]
    bound = 0.5 * embedding_rms(load_model(tiny_dir)) * math.sqrt(hidden)
    for i, d in attack.perturbations.items():
        assert d.shape[0] == toks[i]["prompt_len"]
        assert float(d.norm(dim=-1).max()) <= bound * (1 + 1e-5)
    assert float(torch.stack([d.abs().sum() for d in attack.perturbations.values()]).sum()) > 0
    stored = load_file(str(out / "gc_perturbations.safetensors"))  # what the initial dir keeps
    assert all(torch.equal(stored[f"delta_{i}"], d) for i, d in attack.perturbations.items())


def test_training_hook_adds_exactly_the_stored_perturbation_to_poison_rows_only(crafted, tiny_dir):
    from llm_unlearn.modeling import load_model, load_tokenizer, tokenize_split
    from llm_unlearn.tasks.causal_lm import CompletionCollator, embed

    attack, _, dd, manifest, _, _ = crafted
    model, tok = load_model(tiny_dir), load_tokenizer(tiny_dir)
    poisons = set(manifest["poison_indices"])
    pick = [i for i in range(len(dd["train"])) if i in poisons][:2] + [i for i in range(8) if i not in poisons][:3]
    rows = list(tokenize_split(dd["train"].select(pick), tok, 256))
    batch = CompletionCollator(tok.pad_token_id)(rows)
    columns = {k: batch.pop(k) for k in ("noise_seed", "prompt_len", "index")}
    attack.start_training(model, manifest, "train")
    with torch.no_grad():
        got = attack.training_embeddings(model, batch, columns)
        clean = embed(model, batch["input_ids"])
    for j, r in enumerate(rows):
        diff = got[j] - clean[j]
        if r["index"] in poisons:
            plen = r["prompt_len"]
            torch.testing.assert_close(diff[:plen], attack.perturbations[r["index"]])
            assert float(diff[plen:].abs().max()) == 0.0
        else:
            assert float(diff.abs().max()) == 0.0
    attack.start_training(model, manifest, "retain")  # the gold run: nothing is added
    assert attack.training_embeddings(model, batch, columns) is None


def test_later_rounds_retrain_the_surrogate_on_the_current_poisons_and_target_accuracy_sets_the_radius(
    crafted, tiny_dir, monkeypatch
):
    import dataclasses

    from llm_unlearn.attacks import build_attack
    from llm_unlearn.attacks import gc_craft
    from llm_unlearn.modeling import load_tokenizer

    _, _, dd, _, out, tc = crafted
    seen = []
    train = gc_craft.train_surrogate

    def spy(cfg, tokenizer, train_ds, where, seed, attack=None):
        # what each round's surrogate trains on: the clean set, then the poisons with the last round's perturbations
        seen.append((seed, None if attack is None else {i: d.clone() for i, d in attack.perturbations.items()}))
        return train(cfg, tokenizer, train_ds, where, seed, attack=attack)

    monkeypatch.setattr(gc_craft, "train_surrogate", spy)
    args = {"eps": 0.5, "gc_steps": 3, "gc_lr": 0.1, "corruption_steps": 10, "craft_batch_size": 8}
    tc = dataclasses.replace(tc, num_train_epochs=1)  # two surrogate trainings: keep them short
    # Test size learns little (accuracy near its floor), so the accuracy asked for is one every radius reaches: the
    # bisection must then shrink the radius far below the configured bound.
    target = 0.99
    attack = build_attack(
        "gradient_canceling",
        {**args, "craft_rounds": 2, "surrogate_seed_offset": 0, "corruption_radius": 2.0, "target_accuracy": target},
    )
    info = attack.craft_poisons(tokenizer=load_tokenizer(tiny_dir), dataset=dd, cfg=tc, out=out)["gradient_canceling"]
    assert [s for s, _ in seen] == [tc.seed, tc.seed]  # offset 0: the victim's own seed, hence its data order
    assert seen[0][1] is None and sorted(seen[1][1]) == sorted(attack.perturbations)
    assert len(info["rounds"]) == 2 and info["target_train_accuracy"] == info["rounds"][1]["target_train_accuracy"]
    for r in info["rounds"]:
        assert r["target_train_accuracy"] <= target
        assert 0 < r["corruption_radius"] <= 2.0 / 2**8  # 8 halvings of the bound
        assert r["gradient_norm_after"] < r["gradient_norm_before"]
    # the second round started from the first's perturbations and moved them
    assert any(not torch.equal(seen[1][1][i], d) for i, d in attack.perturbations.items())


# --- a small end-to-end run ---------------------------------------------------------------------------------------

E2E = {
    "seeds": [0],
    "tiny": {
        "hidden_size": 64,
        "num_attention_heads": 1,
        "num_hidden_layers": 1,
        "intermediate_size": 128,
        "vocab_size": 400,
        "corpus_reviews": 300,
    },
    # Test size, where nothing is learned (see test_science.py): the run's plumbing, not the attack's strength (the
    # recipe's per-seed figures are in docs_drafts/gradient_canceling.md).
    "poison": {
        "attack": "gradient_canceling",
        "poison_fraction": 0.2,
        "attack_args": {"eps": 2.0, "corruption_steps": 10, "gc_steps": 3, "craft_batch_size": 8},
        "embedded_n_train": 80,
        "embedded_n_test": 30,
    },
    "train": {"num_train_epochs": 1, "per_device_train_batch_size": 16, "progress": False},
    "unlearn": {"per_device_train_batch_size": 8, "progress": False},
    "eval": {"max_new_tokens": 2},
    "methods": ["gd"],
    "budgets": [0.2],
    "diagnostics": False,
}


def test_run_end_to_end(tmp_path):
    import json

    from safetensors.torch import load_file

    from llm_unlearn import run_experiment

    run_experiment(E2E, output_dir=str(tmp_path))
    seed = tmp_path / "seed_0"
    manifest = json.loads((seed / "poison" / "manifest.json").read_text())
    assert manifest["metric"] == "clean_accuracy" and manifest["n_poison"] == 16
    info = json.loads((seed / "initial" / "training_info.json").read_text())["gradient_canceling"]
    assert info["n_poison"] == 16 and info["gradient_norm_after"] < info["gradient_norm_before"]
    stored = load_file(str(seed / "initial" / "gc_perturbations.safetensors"))  # several chunks of 8 poisons
    assert sorted(stored) == sorted(f"delta_{i}" for i in manifest["poison_indices"])
    assert not (seed / "retrain" / "gc_perturbations.safetensors").exists()  # the gold run never sees a poison
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"initial", "retrain", "gd"}
    assert all(isinstance(r["metrics"]["clean_accuracy"], float) for r in rows)
    report = (tmp_path / "report.md").read_text()
    assert "gradient_canceling" in report and "clean-label prompt-embedding perturbations" in report


def test_flipped_poisons_carry_the_target_label_and_the_target_leans_to_it(tmp_path, tiny_dir):
    """poison_labels: flipped (the image track's rule, Lu et al.'s attacker-chosen labels): poisons are reviews of
    the other labels relabelled target_label, the surrogate trains on the untouched rows, and the corruption raises
    the loss of the clean rows of the other labels only, so the target predicts target_label more than the
    surrogate does."""

    def check_dataset(dd, manifest):
        forget = dd["forget"]
        assert len(forget) == 24 and set(forget["label"]) == {"positive"}
        assert set(forget["orig_label"]) == {"negative"} and set(forget["completion"]) == {" positive"}
        assert manifest["target_label"] == "positive" and manifest["labels"] == "flipped"

    args = {"poison_labels": "flipped", "target_label": "positive", "gc_steps": 3, "corruption_steps": 20}
    info = _poison_and_craft(tmp_path, tiny_dir, args, 0.2, check_dataset)[1]
    assert info["target_label_share"] > info["surrogate_label_share"]


def test_flipped_label_settings_are_checked():
    from llm_unlearn.attacks import build_attack

    with pytest.raises(ConfigError, match="target_label is only used with poison_labels: flipped"):
        build_attack("gradient_canceling", {"target_label": "positive"})
    with pytest.raises(ConfigError, match=r"poison_labels.*'clean', 'flipped'|flipped.*clean"):
        build_attack("gradient_canceling", {"poison_labels": "dirty"})
