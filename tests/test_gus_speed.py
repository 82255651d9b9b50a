"""The GUS audit's speed-ups change no score: the LM head restricted to completion positions gives the full-logits
loss and input gradients, and the evaluate stage's length-sorted batching returns scores in the dataset's order."""

from __future__ import annotations

import pytest
import torch


def _rows(tok):
    """Right-padded rows of different lengths, prompts and completion lengths (1 to 4 label tokens + eos)."""
    from llm_unlearn.tasks.causal_lm import CompletionCollator, tokenize_example

    pairs = [
        ("Review: fine.\nSentiment:", " positive"),
        ("Review: the plot drags and the acting is wooden, a long two hours.\nSentiment:", " negative"),
        ("Review: ok\nSentiment:", " positive positive negative"),
        ("Review: a film I would happily watch again with friends.\nSentiment:", " negative positive"),
        ("Hi", " positive"),
    ]
    feats = [tokenize_example(tok, p, c, 256) for p, c in pairs]
    assert len({len(f["input_ids"]) for f in feats}) == len(feats)  # all lengths differ: padding in every row but one
    return CompletionCollator(tok.pad_token_id)(feats)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from llm_unlearn.modeling import load_model, load_tokenizer

    return load_model(tiny_dir).eval(), load_tokenizer(tiny_dir)


class _NoLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward has no ``logits_to_keep``: the restricted loss must cut the full logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds)


class _IgnoresLogitsToKeep(_NoLogitsToKeep):
    """Takes ``logits_to_keep`` but returns every position's logits anyway."""

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, logits_to_keep=0):
        return super().forward(input_ids, attention_mask, inputs_embeds)


@pytest.mark.parametrize("wrap", [None, _NoLogitsToKeep, _IgnoresLogitsToKeep])
def test_restricted_logits_loss_equals_full_logits_loss(tiny, wrap):
    from llm_unlearn.metrics import input_gradients
    from llm_unlearn.tasks.causal_lm import completion_nll, embed, sequence_nll

    base, tok = tiny
    model = wrap(base) if wrap else base
    batch = _rows(tok)
    with torch.no_grad():
        clean = embed(model, batch["input_ids"]).float()
    heads = []
    hook = base.get_output_embeddings().register_forward_hook(lambda m, i, o: heads.append(tuple(i[0].shape)))
    try:
        full = sequence_nll(model, batch, clean)
        restricted = completion_nll(model, batch, clean)
        g_full = input_gradients(lambda e: sequence_nll(model, batch, e), clean)
        g_restricted = input_gradients(lambda e: completion_nll(model, batch, e), clean)
    finally:
        hook.remove()
    torch.testing.assert_close(restricted, full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_restricted, g_full, rtol=1e-5, atol=1e-7)
    assert g_full.abs().max() > 0
    # Padding positions get no gradient on either path.
    pad = batch["attention_mask"] == 0
    assert pad.any() and g_restricted[pad].abs().max() == 0
    # The head ran at every position on the full path; on the restricted one only at those that predict a
    # completion token (the union over rows), unless the model cannot restrict it.
    width = batch["input_ids"].shape[1]
    n_kept = int((batch["labels"][:, 1:] != -100).any(0).sum())
    assert n_kept < width - 1
    assert heads[0][1] == width
    assert heads[1][1] == (n_kept if wrap is None else width)
    # Without inputs_embeds (input ids) as well.
    torch.testing.assert_close(completion_nll(model, batch), sequence_nll(model, batch), rtol=1e-6, atol=1e-6)


def test_length_sorted_batches_is_a_permutation_by_length():
    from llm_unlearn.tasks.causal_lm import length_sorted_batches

    lengths = [5, 3, 9, 3, 1, 7, 2]
    batches = length_sorted_batches(lengths, 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)
    assert length_sorted_batches([], 4) == []


def _unsorted_gus_scores(model, tok, ds, batch_size, draws):
    """The audit as it was before: batches in dataset order, full-logits loss."""
    from llm_unlearn.canaries import batch_prompt_noise
    from llm_unlearn.metrics import input_gradients, scores_from_gradients
    from llm_unlearn.modeling import tokenize_split
    from llm_unlearn.tasks.causal_lm import CompletionCollator, embed, sequence_nll

    toks = list(tokenize_split(ds, tok, 256))
    collate = CompletionCollator(tok.pad_token_id)
    poison, fresh = [], []
    for i in range(0, len(toks), batch_size):
        batch = collate(toks[i : i + batch_size])
        with torch.no_grad():
            clean = embed(model, batch["input_ids"]).float()
        _, width, hidden = clean.shape
        grads = input_gradients(lambda e, b=batch: sequence_nll(model, b, e), clean)
        mask = (torch.arange(width)[None, :] < batch["prompt_len"][:, None])[..., None].to(grads.dtype)
        seeds, plens = batch["noise_seed"].tolist(), batch["prompt_len"].tolist()
        poison.append(scores_from_gradients(grads, batch_prompt_noise(seeds, plens, width, hidden), 1.0, mask))
        noise = torch.stack([batch_prompt_noise(seeds, plens, width, hidden, draw=d) for d in range(1, draws + 1)])
        fresh.append(scores_from_gradients(grads, noise, 1.0, mask))
    return torch.cat(poison), torch.cat(fresh, dim=1)


def test_sorted_gus_scores_equal_unsorted_in_dataset_order(tiny, gaussian_dir):
    from llm_unlearn.modeling import load_dataset_dir, tokenize_split
    from llm_unlearn.attacks.gaussian import gus_scores
    from llm_unlearn.tasks.causal_lm import length_sorted_batches

    model, tok = tiny
    dd, _ = load_dataset_dir(gaussian_dir)
    ds = dd["train"].select(range(50)).map(lambda r, i: {"noise_seed": 1000 + i}, with_indices=True)
    lengths = [len(t["input_ids"]) for t in tokenize_split(ds, tok, 256)]
    # Sorting really reorders this split (otherwise the test would not test the order).
    assert [i for b in length_sorted_batches(lengths, 8) for i in b] != list(range(len(lengths)))
    poison, fresh = gus_scores(model, tok, ds, 256, 8, draws=3)
    ref_poison, ref_fresh = _unsorted_gus_scores(model, tok, ds, 8, draws=3)
    assert len(poison) == 50 and torch.as_tensor(fresh).shape == (3, 50)
    torch.testing.assert_close(torch.as_tensor(poison, dtype=torch.float64), ref_poison, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.as_tensor(fresh, dtype=torch.float64), ref_fresh, rtol=0, atol=1e-6)
    # One batch of everything gives the same scores too.
    one_batch, _ = gus_scores(model, tok, ds, 256, 64, draws=1)
    torch.testing.assert_close(torch.as_tensor(one_batch, dtype=torch.float64), ref_poison, rtol=0, atol=1e-6)


def test_per_sequence_losses_keep_dataset_order(tiny, gaussian_dir):
    from llm_unlearn.modeling import load_dataset_dir, tokenize_split
    from llm_unlearn.stages.evaluate import per_sequence_losses
    from llm_unlearn.tasks.causal_lm import CompletionCollator, token_logps

    model, tok = tiny
    dd, _ = load_dataset_dir(gaussian_dir)
    ds = dd["test"]
    got = per_sequence_losses(model, tok, ds, 256, 7)
    batch = CompletionCollator(tok.pad_token_id)(list(tokenize_split(ds, tok, 256)))
    with torch.no_grad():
        logps, mask = token_logps(model, batch)
    want = -logps.sum(-1) / mask.sum(-1).clamp_min(1)
    torch.testing.assert_close(torch.as_tensor(got), want, rtol=1e-6, atol=1e-6)
