"""The causal-LM task: prompt/completion tokenisation, padding, and the per-sequence losses every stage shares.

A training example is ``prompt + completion``; the loss covers the completion tokens only. Sequences are padded on the
right for training and auditing, so prompt token j sits at position j (the Gaussian noise of a poisoned example is
indexed that way), and on the left for generation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..configs import ConfigError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100

_LAYER_LISTS = ("layers", "h", "blocks")  # Llama/Mistral/Qwen, GPT-2/GPT-J, MPT/Falcon-style
_FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm")


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


def on_device(batch: dict, model) -> dict:
    """The batch's tensors on the model's device (other values as they are)."""
    device = next(model.parameters()).device
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def length_sorted_batches(lengths: list[int], size: int) -> list[list[int]]:
    """Indices ``0..n-1`` grouped into batches of ``size`` by increasing length (stable), so a right-padded batch
    wastes little compute on padding. Callers put per-example results back with the indices."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + size] for i in range(0, len(order), size)]


def _find_layers(model) -> tuple[str, torch.nn.Module, torch.nn.ModuleList]:
    """(attribute name, owner module, ModuleList) of the decoder layers of a (peft-wrapped) causal LM."""
    if hasattr(model, "get_base_model"):  # peft
        model = model.get_base_model()
    owners = [model.get_decoder() if hasattr(model, "get_decoder") else model, getattr(model, "model", None)]
    owners.append(getattr(model, "transformer", None))
    for owner in owners:
        for name in _LAYER_LISTS:
            layers = getattr(owner, name, None)
            if isinstance(layers, torch.nn.ModuleList):
                return name, owner, layers
    raise ConfigError(
        f"cannot find the decoder layers of {type(model).__name__} (looked for .{'/.'.join(_LAYER_LISTS)})"
    )


def decoder_layers(model) -> torch.nn.ModuleList:
    return _find_layers(model)[2]


def top_modules(model, layer_ids: list[int]) -> list[torch.nn.Module]:
    """The chosen decoder layers plus what sits above the last layer: the final norm and an untied LM head.

    A head tied to the input embeddings is left out: training or re-initialising it would change the embeddings, i.e.
    the very bottom of the network, which CF-k/EU-k keep frozen."""
    _, owner, layers = _find_layers(model)
    modules = [layers[i] for i in layer_ids]
    modules += [getattr(owner, n) for n in _FINAL_NORMS if isinstance(getattr(owner, n, None), torch.nn.Module)][:1]
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and (emb is None or head.weight is not emb.weight):
        modules.append(head)
    elif head is not None:
        logger.warning("LM head is tied to the input embeddings: it stays frozen")
    return modules


class CausalLMTask:
    """The task seam for causal LMs: completion-token losses, compute in tokens, decoder layers as blocks.

    Every task provides the same methods (``ClassificationTask`` mirrors them for classifiers):
    ``nll`` (the training loss, a scalar), ``cost`` (compute units of one forward+backward pass of a batch),
    ``sequence_logps`` (log p(y|x) per example, (n,)), ``lengths`` (|y| per example), ``logits`` (the logits KL terms
    compare and the mask of positions that count), ``logits_nll`` (the training loss from those logits),
    ``forward`` (a plain forward pass, for hooks), ``hidden_view`` (a block's output as (n, positions, width) plus a
    position mask), ``blocks`` (the model's ordered blocks: the last k are what CF-k/EU-k touch), ``top_modules``
    (those blocks plus what sits above them), ``model_inputs`` and ``collate``.
    """

    name = "causal_lm"

    def nll(self, model, batch: dict) -> torch.Tensor:
        # inputs_embeds: the embeddings a training-time attack hook (the Gaussian noise) replaced the ids with
        return mean_token_nll(model, batch, batch.get("inputs_embeds"))

    def cost(self, batch: dict) -> float:
        return float(batch_tokens(batch))

    def sequence_logps(self, model, batch: dict) -> torch.Tensor:
        return sequence_logps(model, batch)

    def lengths(self, batch: dict) -> torch.Tensor:
        return (batch["labels"][:, 1:] != IGNORE_INDEX).sum(-1)

    def logits(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token logits at the positions predicting a completion token (n, L-1, V) in float32, and their mask."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        return logits, batch["labels"][:, 1:] != IGNORE_INDEX

    def logits_nll(self, logits: torch.Tensor, batch: dict, mask: torch.Tensor) -> torch.Tensor:
        """Mean NLL over masked positions from logits already shifted by :meth:`logits` (labels unshifted)."""
        targets = batch["labels"][:, 1:].masked_fill(~mask, 0)
        logps = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return -(logps * mask).sum() / mask.sum().clamp_min(1)

    def forward(self, model, batch: dict):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def hidden_view(self, hidden: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return hidden, batch["attention_mask"]

    def blocks(self, model) -> torch.nn.ModuleList:
        return decoder_layers(model)

    def top_modules(self, model, layer_ids: list[int]) -> list[torch.nn.Module]:
        return top_modules(model, layer_ids)

    def model_inputs(self, batch: dict) -> dict:
        return {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "inputs_embeds") if k in batch}

    def collator(self, pad_token_id: int):
        return CompletionCollator(pad_token_id)
