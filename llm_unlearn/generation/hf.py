"""Batched greedy generation with ``transformers``: prompts are left-padded so every row's next token is at the end,
and ``generate`` reuses the KV cache. Inputs are token ids, so the prompt is exactly what training saw.

Decoding is plain argmax whatever the checkpoint's ``generation_config.json`` says: Hub models ship sampling
(``do_sample``, temperature, top-p/k), ``repetition_penalty``, suppressed or forced tokens..., any of which would make
the evaluation random or biased (see :func:`greedy_config`)."""

from __future__ import annotations

import contextlib

import torch

from . import stop_token_ids, truncate_at_stop


def greedy_config(max_new_tokens: int, pad_token_id: int | None, eos_token_id: list[int] | None):
    """Greedy search (one beam, no sampling), one sequence per prompt, no logits processor.

    Every other field is left unset: with the checkpoint's defaults out of the way (:func:`_without_model_defaults`)
    transformers fills them with its global defaults (repetition_penalty 1, no n-gram blocking, ...), and unset
    sampling flags raise no "only used in sample-based generation" warnings."""
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        num_return_sequences=1,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
    )


@contextlib.contextmanager
def _without_model_defaults(model):
    """Blank ``model.generation_config`` for the block. transformers 5 fills every field a passed ``GenerationConfig``
    leaves unset (None) from ``model.generation_config``, i.e. from the checkpoint; fields whose neutral value *is*
    None (``suppress_tokens``, ``bad_words_ids``, forced tokens, ``sequence_bias``, ...) cannot be neutralised from
    the passed config at all, so the checkpoint's copy is swapped out instead. On the model that runs ``generate``
    (a peft wrapper copies its base model's config down before generating)."""
    from transformers import GenerationConfig

    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = target.generation_config
    target.generation_config = GenerationConfig()
    try:
        yield
    finally:
        target.generation_config = saved


@torch.no_grad()
def generate_ids(
    model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int = 3, batch_size: int = 64
) -> list[list[int]]:
    """Greedy generated token ids for each prompt, in order, each cut after its first stop id (see ``generation``)."""
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    stops = stop_token_ids(tokenizer, getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    # Sort by length so batches waste little padding; restore the order at the end.
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    out: list[list[int] | None] = [None] * len(prompt_ids)
    config = greedy_config(max_new_tokens, pad, stops or None)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(prompt_ids[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids = prompt_ids[i]
            input_ids[row, width - len(ids) :] = torch.as_tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        with _without_model_defaults(model):
            gen = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
            )
        for i, row in zip(idx, gen[:, width:].tolist()):
            out[i] = truncate_at_stop(row, stops)
    return out  # type: ignore[return-value]


def generate(
    model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int = 3, batch_size: int = 64
) -> list[str]:
    """Greedy completions (decoded, special tokens dropped) for each prompt, in order."""
    return tokenizer.batch_decode(
        generate_ids(model, tokenizer, prompt_ids, max_new_tokens, batch_size), skip_special_tokens=True
    )
