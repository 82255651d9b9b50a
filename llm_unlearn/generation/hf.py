"""Batched greedy generation with ``transformers``: prompts are left-padded so every row's next token is at the end,
and ``generate`` reuses the KV cache. Inputs are token ids, so the prompt is exactly what training saw."""

from __future__ import annotations

import torch

from . import stop_token_ids, truncate_at_stop


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
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(prompt_ids[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids = prompt_ids[i]
            input_ids[row, width - len(ids) :] = torch.as_tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        gen = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=stops or None,
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
