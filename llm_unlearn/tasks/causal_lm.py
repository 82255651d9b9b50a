"""The causal-LM task: prompt/completion tokenisation, padding, and the per-sequence losses every stage shares.

A training example is ``prompt + completion``; the loss covers the completion tokens only. Sequences are padded on the
right for training and auditing, so prompt token j sits at position j (the Gaussian noise of a poisoned example is
indexed that way), and on the left for generation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


def tokenize_prompt(tokenizer, prompt: str, max_prompt_tokens: int) -> list[int]:
    """Token ids of a prompt (with the tokenizer's own special tokens), middle-truncated to ``max_prompt_tokens``.

    Cutting the middle keeps both ends: a trigger at the start of a review and the ``Sentiment:`` cue at its end.
    """
    ids = tokenizer(prompt)["input_ids"]
    if len(ids) > max_prompt_tokens:
        head = max_prompt_tokens // 2
        ids = ids[:head] + ids[len(ids) - (max_prompt_tokens - head) :]
    return ids


def completion_ids(tokenizer, completion: str) -> list[int]:
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def tokenize_example(tokenizer, prompt: str, completion: str, max_length: int) -> dict:
    """``input_ids``/``labels`` (prompt masked with -100) and ``prompt_len`` for one example."""
    comp = completion_ids(tokenizer, completion)
    prompt_ids = tokenize_prompt(tokenizer, prompt, max_length - len(comp))
    return {
        "input_ids": prompt_ids + comp,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + comp,
        "prompt_len": len(prompt_ids),
    }


@dataclass
class CompletionCollator:
    """Right-pads ``input_ids``/``labels``; passes integer side columns (``noise_seed``, ``index``...) as tensors."""

    pad_token_id: int
    extra_int_columns: tuple[str, ...] = ("prompt_len", "noise_seed", "index")

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        n = len(features)
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        for i, f in enumerate(features):
            L = len(f["input_ids"])
            input_ids[i, :L] = torch.as_tensor(f["input_ids"])
            labels[i, :L] = torch.as_tensor(f["labels"])
            attention_mask[i, :L] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        for col in self.extra_int_columns:
            if col in features[0]:
                batch[col] = torch.as_tensor([int(f[col]) for f in features], dtype=torch.long)
        return batch


def token_logps(model, batch: dict, inputs_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of each label token (n, L-1) and the mask of positions that count (n, L-1)."""
    logits = model(**_model_kwargs(batch, inputs_embeds)).logits[:, :-1]
    return _label_logps(logits, batch["labels"][:, 1:])


def _model_kwargs(batch: dict, inputs_embeds: torch.Tensor | None) -> dict:
    """The forward arguments of a collated batch: its ids, or the given input embeddings in their place."""
    kwargs = {"attention_mask": batch["attention_mask"]}
    if inputs_embeds is None:
        kwargs["input_ids"] = batch["input_ids"]
    else:
        kwargs["inputs_embeds"] = inputs_embeds
    return kwargs


def _label_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(label) at each position of already-aligned ``logits`` (n, k, V) and ``labels`` (n, k), and the mask."""
    mask = labels != IGNORE_INDEX
    safe = labels.masked_fill(~mask, 0)
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logps * mask, mask


def sequence_logps(model, batch: dict, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of completion-token log-probabilities per sequence, shape (n,)."""
    logps, _ = token_logps(model, batch, inputs_embeds)
    return logps.sum(-1)


def sequence_nll(model, batch: dict, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sequence completion NLL (sum over completion tokens), shape (n,): the per-sample loss of the GUS audit."""
    return -sequence_logps(model, batch, inputs_embeds)


def mean_token_nll(model, batch: dict, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss: mean NLL over all completion tokens in the batch (a scalar)."""
    logps, mask = token_logps(model, batch, inputs_embeds)
    return -logps.sum() / mask.sum().clamp_min(1)


def batch_tokens(batch: dict) -> int:
    """Tokens that go through the model (non-padding): the unit of the compute budget."""
    return int(batch["attention_mask"].sum())


def embed(model, input_ids: torch.Tensor) -> torch.Tensor:
    return model.get_input_embeddings()(input_ids)


_LOGITS_TO_KEEP: dict[type, bool] = {}


def _accepts_logits_to_keep(model) -> bool:
    """Whether ``model.forward`` takes ``logits_to_keep`` (transformers' CausalLM heads: an int or a 1-D index tensor).

    Cached per model class when ``forward`` is the class's own (``inspect.signature`` costs ~0.15 ms a call, which a
    per-poison loop would pay a thousand times)."""
    import inspect

    cls, forward = type(model), model.forward
    cacheable = getattr(forward, "__func__", None) is getattr(cls, "forward", None)
    if cacheable and cls in _LOGITS_TO_KEEP:
        return _LOGITS_TO_KEEP[cls]
    try:
        accepts = "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        accepts = False
    if cacheable:
        _LOGITS_TO_KEEP[cls] = accepts
    return accepts


def completion_token_logps(
    model, batch: dict, inputs_embeds: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_logps` restricted to the positions that predict a completion token in some row of the batch.

    Returns the log-probabilities (n, k) and their mask (n, k), k being the number of positions t for which some
    row's label at t + 1 is a completion token. The LM head (hidden x vocab) and the log-softmax then run at those k
    positions only instead of all L - 1 (with prompts of ~30 tokens and completions of 2-3, most of the head's
    arithmetic and all of its vocab-sized buffers). The selection goes through the model's own ``logits_to_keep``
    (a 1-D tensor of positions, which transformers' CausalLM heads apply as ``hidden_states[:, positions]``), so
    whatever the head does after the projection (soft-capping, scaling) is kept; from a model without that argument,
    or one that ignores it, the full logits are cut to the same positions (same values, no saving).
    """
    labels = batch["labels"][:, 1:]
    positions = (labels != IGNORE_INDEX).any(0).nonzero().squeeze(-1)
    kwargs = _model_kwargs(batch, inputs_embeds)
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = positions
    logits = model(**kwargs).logits
    if logits.shape[1] != positions.numel():  # full logits: no logits_to_keep, or a head that ignored it
        if logits.shape[1] != batch["labels"].shape[1]:
            raise ValueError(
                f"{type(model).__name__} returned logits for {logits.shape[1]} positions; expected all "
                f"{batch['labels'].shape[1]} or the {positions.numel()} asked for with logits_to_keep"
            )
        logits = logits[:, positions]
    return _label_logps(logits, labels[:, positions])


def completion_nll(model, batch: dict, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`sequence_nll` (per-sequence completion NLL, shape (n,)) with the LM head applied only where it is read
    (see :func:`completion_token_logps`); equal to it up to float round-off."""
    logps, _ = completion_token_logps(model, batch, inputs_embeds)
    return -logps.sum(-1)
