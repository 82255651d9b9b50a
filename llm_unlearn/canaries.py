"""Gaussian canaries for anyone's training run: plant them in a dataset, let a ``transformers.Trainer`` or
``trl.SFTTrainer`` train on them, save a manifest, and audit any model later (``llm-unlearn audit``).

A canary is an ordinary training example that gets its own noise xi ~ N(0, eps^2 I) added to the input embeddings of
its prompt tokens every time it is in a batch (Pawelczyk et al., ICLR 2025, Sec. 4; the first author's OLMo code
does the same inside its training loop). Nothing else about the example changes, so a model's utility is untouched,
and the noise is regenerated from a per-canary seed, so the audit needs no stored noise and no shadow model: under a
model that never trained on xi, the score I = <xi, g> / (eps ||g||) of the input gradient g is exactly N(0, 1).

This module holds the one implementation of the noise (:func:`prompt_noise`, :func:`add_prompt_noise`), used by the
toolkit's own Gaussian attack (``llm_unlearn.attacks.gaussian``) and by :meth:`GaussianCanaries.attach`, and the
audit's scoring loop (:func:`canary_scores`), used by the evaluate stage and by ``llm-unlearn audit``.

The manifest (``canaries.json``, written by :meth:`GaussianCanaries.save` and by the train stage) is
:mod:`llm_unlearn.canary_manifest`.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from .canary_manifest import build_manifest, tokenizer_record, write_manifest
from .configs import ConfigError

SEED_COLUMN = "noise_seed"  # the same column the poison stage's rows carry (-1: not a canary)


# --- the noise ------------------------------------------------------------------------------------------------------


def prompt_noise(noise_seed: int, length: int, hidden: int, std: float = 1.0, draw: int = 0):
    """The (length, hidden) noise of one example: draw 0 is what training used, draws >= 1 are fresh noises.

    numpy's ``SeedSequence`` keyed by (noise_seed, draw) gives statistically independent streams per draw. (Offsetting
    a torch seed by a multiple of 2**32 does not: torch's CPU generator keeps only the low 32 bits, so the "fresh"
    noise would silently equal the training noise.) Row-major filling makes row j the same whatever ``length``."""
    import numpy as np
    import torch

    rng = np.random.default_rng([int(noise_seed), int(draw)])
    noise = torch.from_numpy(rng.standard_normal((length, hidden), dtype=np.float32))
    return noise if std == 1.0 else noise * std  # (x * 1.0 == x: the audit's unit noise skips the copy)


def batch_prompt_noise(
    noise_seeds, prompt_lens, width: int, hidden: int, std: float = 1.0, draw: int = 0, starts=None
):
    """Noise for a padded batch: each canary's noise on its prompt positions ``start .. start + prompt_len``, zero
    where ``noise_seed < 0`` (other rows), beyond each prompt and on padding. ``starts``: where each row's first token
    sits (left padding); default 0 (right padding)."""
    rows = [
        prompt_noise(int(seed), int(plen), hidden, std, draw) if int(seed) >= 0 else None
        for seed, plen in zip(noise_seeds, prompt_lens)
    ]
    return place_prompt_rows(rows, width, hidden, starts)


def place_prompt_rows(rows, width: int, hidden: int, starts=None):
    """A padded (n, width, hidden) batch holding each row's prompt tensor ``rows[i]`` (prompt_len_i, hidden) at its
    prompt positions ``start .. start + prompt_len_i`` and zeros elsewhere (None: a row that gets nothing). The one
    placement rule of every training-time embedding offset: the Gaussian noise and the gradient-canceling
    perturbations (``llm_unlearn.attacks.gradient_canceling``)."""
    import torch

    out = torch.zeros(len(rows), width, hidden)
    for i, row in enumerate(rows):
        if row is not None:
            s = int(starts[i]) if starts is not None else 0
            out[i, s : s + row.shape[0]] = row
    return out


def add_prompt_noise(emb, noise_seeds, prompt_lens, std: float, starts=None):
    """``emb`` (n, L, hidden) plus each canary's training noise (draw 0) at scale ``std`` on its prompt positions:
    what a canary's model input is at every training visit (the toolkit's train stage and attached trainers)."""
    noise = batch_prompt_noise(list(noise_seeds), list(prompt_lens), emb.shape[1], emb.shape[2], std, starts=starts)
    return emb + noise.to(emb.device, emb.dtype)


def embedding_rms(model) -> float:
    """Root-mean-square of the input embedding matrix: the unit of ``noise_scale: rms``. Under ZeRO-3 the matrix is
    partitioned, so it is gathered for the read."""
    import contextlib

    import torch

    weight = model.get_input_embeddings().weight
    gather = contextlib.nullcontext()
    if hasattr(weight, "ds_numel"):  # a ZeRO-3 partitioned parameter: its local tensor is empty
        import deepspeed

        gather = deepspeed.zero.GatheredParameters([weight], modifier_rank=None)
    with gather, torch.no_grad():
        return float(weight.detach().float().pow(2).mean().sqrt())


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# --- the audit's scores ---------------------------------------------------------------------------------------------


def audit_rows(canaries: list[dict]) -> list[dict]:
    """Manifest canaries as the rows :func:`canary_scores` takes: ``input_ids``, ``labels`` (the loss the audit
    differentiates: the completion tokens, or every token of a text canary) and ``prompt_len`` (the noised span)."""
    rows = []
    for c in canaries:
        ids, plen = list(c["input_ids"]), int(c["prompt_len"])
        text_mode = plen >= len(ids)  # a plain-text canary: the whole sequence is prompt and loss
        labels = list(ids) if text_mode else [-100] * plen + ids[plen:]
        rows.append({"input_ids": ids, "labels": labels, "prompt_len": plen, "noise_seed": int(c["noise_seed"])})
    return rows


def canary_scores(model, rows: list[dict], pad_token_id: int, batch_size: int, draws: int):
    """I_z of every canary under its training noise (draw 0) and under ``draws`` fresh noises, one input-gradient
    backward a batch; ``rows`` are tokenised (``input_ids``, ``labels``, ``prompt_len``, ``noise_seed``).

    The noise is regenerated in unit scale: I_z = <xi, g> / (eps ||g||) does not depend on eps, so the audit needs
    only the seeds. Only the prompt positions enter the dot product and the norm: the only coordinates the noise ever
    touched. Rows are batched by length (less padding) and the scores returned in the order of ``rows``: a list of
    ``n`` floats and a ``draws`` x ``n`` nested list. The model's dtype is the caller's choice (the audit CLI loads it
    in float32); the scores are computed in float64.

    Autograd is asked for the input gradient only, so no weight gradient is computed (checked by profiling: the
    backward runs one matmul per forward matmul, the same count as with the parameters frozen). Each canary's noises
    are drawn unpadded and scored with one float64 matrix-vector product, so a batch never holds its padded noise.
    """
    import numpy as np
    import torch

    from .metrics import input_gradients
    from .tasks.causal_lm import CompletionCollator, completion_nll, embed, length_sorted_batches, on_device

    collate = CompletionCollator(pad_token_id)
    n = len(rows)
    poison = np.zeros(n)
    fresh = np.zeros((draws, n))
    for idx in length_sorted_batches([len(t["input_ids"]) for t in rows], batch_size):
        batch = on_device(collate([rows[i] for i in idx]), model)
        with torch.no_grad():
            clean = embed(model, batch["input_ids"]).float()
        hidden = clean.shape[-1]
        # the completion NLL with the LM head applied only at the positions that predict a label token
        grads = input_gradients(lambda e, b=batch: completion_nll(model, b, e), clean).double().cpu().numpy()
        if not np.isfinite(grads).all():
            raise ValueError("the audited model's input gradients contain NaN or infinite values")
        for j, i in enumerate(idx):
            plen, seed = int(rows[i]["prompt_len"]), int(rows[i]["noise_seed"])
            g = grads[j, :plen].ravel()
            norm = float(np.linalg.norm(g))
            if norm == 0.0:
                continue  # no gradient reaches the prompt: the score is 0, as scores_from_gradients defines it
            noises = np.stack([prompt_noise(seed, plen, hidden, draw=d).numpy().ravel() for d in range(draws + 1)])
            scores = noises.astype(np.float64) @ g / norm
            poison[i], fresh[:, i] = scores[0], scores[1:]
    return poison.tolist(), fresh.tolist()


# --- canaries for someone else's trainer ----------------------------------------------------------------------------


class GaussianCanaries:
    """Gaussian canaries for a ``transformers.Trainer`` / ``trl.SFTTrainer`` run, and their manifest.

    Args:
        fraction: the share of the dataset's rows that become canaries (``round(fraction * len(dataset))``, >= 2),
            drawn with ``seed``; or give ``indices`` instead.
        eps: the noise std, in units of the embedding RMS (``noise_scale="rms"``, measured on the model when
            attached) or absolute (``"absolute"``).
        seed: draws the canary rows and each canary's noise seed.
        indices: explicit canary rows (instead of ``fraction``).

    ``plant(dataset)`` adds a ``noise_seed`` column (-1 on other rows); ``attach(trainer)`` makes the trainer add
    each canary's noise to its prompt-token input embeddings at every training visit (nothing to other rows, nothing
    at evaluation); ``save(path)`` writes the manifest the audit reads.

    Prompt tokens are those of the ``prompt`` column as the trainer tokenised it (the common prefix of the tokenised
    prompt and the training sequence, TRL's own rule); for a ``text`` dataset the whole sequence is the prompt.
    Packed or padding-free batches are refused: a canary's positions would not be its own."""

    def __init__(
        self,
        fraction: float | None = None,
        eps: float = 1.0,
        seed: int = 0,
        noise_scale: str = "rms",
        indices: list[int] | None = None,
    ):
        if (fraction is None) == (indices is None):
            raise ConfigError("GaussianCanaries: give either fraction or indices (exactly one)")
        if fraction is not None and not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
            raise ConfigError(f"GaussianCanaries: fraction must be in (0, 1), got {fraction!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (eps > 0 and math.isfinite(eps)):
            raise ConfigError(f"GaussianCanaries: eps must be a finite number > 0, got {eps!r}")
        if noise_scale not in ("rms", "absolute"):
            raise ConfigError(f"GaussianCanaries: noise_scale must be one of ['absolute', 'rms'], got {noise_scale!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"GaussianCanaries: seed must be an int, got {seed!r}")
        self.fraction, self.eps, self.seed, self.noise_scale = fraction, float(eps), seed, noise_scale
        self.indices = None if indices is None else [int(i) for i in indices]
        self.planted: dict[int, dict] = {}  # noise_seed -> {"index", "prompt"/"completion" or "text"}
        self.n_rows = 0
        self.format = None
        self._noise = None  # set by attach

    # -- plant --------------------------------------------------------------------------------------------------------

    def plant(self, dataset):
        """``dataset`` (a ``datasets.Dataset`` or a list of dicts; prompt/completion strings, or ``text``) with a
        ``noise_seed`` column: each canary's noise seed, -1 on the other rows."""
        import datasets

        if isinstance(dataset, (list, tuple)):
            dataset = datasets.Dataset.from_list(list(dataset))
        if not isinstance(dataset, datasets.Dataset):
            raise ConfigError(
                f"GaussianCanaries.plant: expected a datasets.Dataset or a list of dicts, got {type(dataset).__name__}"
                " (streaming datasets are not supported: the canaries are drawn over the whole set)"
            )
        cols = set(dataset.column_names)
        if SEED_COLUMN in cols:
            raise ConfigError(f"GaussianCanaries.plant: the dataset already has a {SEED_COLUMN!r} column (planted?)")
        if {"prompt", "completion"} <= cols:
            fmt, keys = "prompt_completion", ("prompt", "completion")
        elif "text" in cols:
            fmt, keys = "text", ("text",)
        else:
            raise ConfigError(
                "GaussianCanaries.plant: rows need prompt and completion (TRL's prompt-completion format) or text; "
                f"got columns {sorted(cols)}"
            )
        n = len(dataset)
        rng = random.Random(self.seed)
        if self.indices is not None:
            bad = [i for i in self.indices if not 0 <= i < n]
            if bad or len(set(self.indices)) != len(self.indices):
                raise ConfigError(f"GaussianCanaries: indices must be distinct rows in [0, {n}); bad: {bad[:5]}")
            chosen = sorted(self.indices)
        else:
            k = round(self.fraction * n)
            chosen = sorted(rng.sample(range(n), k)) if k <= n else []
        if len(chosen) < 2:
            raise ConfigError(f"GaussianCanaries: {len(chosen)} canaries of {n} rows; the audit needs at least 2")
        seeds = [-1] * n
        used: set[int] = set()
        planted = {}
        for i in chosen:
            s = rng.randrange(2**31)
            while s in used:
                s = rng.randrange(2**31)
            used.add(s)
            seeds[i] = s
            row = dataset[i]
            for key in keys:
                if not isinstance(row[key], str):
                    raise ConfigError(
                        f"GaussianCanaries.plant: row {i}: {key!r} must be a string (conversational rows are not "
                        f"supported), got {type(row[key]).__name__}"
                    )
            planted[s] = {"index": i, **{key: row[key] for key in keys}}
        self.planted, self.n_rows, self.format = planted, n, fmt
        return dataset.add_column(SEED_COLUMN, seeds)

    # -- attach -------------------------------------------------------------------------------------------------------

    def attach(self, trainer) -> GaussianCanaries:
        """Make ``trainer`` noise the canaries at every training visit (call after constructing it, before
        ``train()``). Works for full fine-tuning and LoRA, in one process or several under accelerate: the noise is
        added by a forward hook on the input embedding module, for the rows of the batch being trained on."""
        if not self.planted:
            raise ConfigError("GaussianCanaries.attach: plant() the training dataset first")
        args = trainer.args
        if getattr(args, "packing", False) or getattr(args, "padding_free", False):
            raise ConfigError(
                "GaussianCanaries.attach: packing / padding_free training is not supported (a canary's positions "
                "in a packed row are not its own); set packing=False and padding_free=False"
            )
        ds = trainer.train_dataset
        cols = getattr(ds, "column_names", None)
        if cols is None:
            raise ConfigError("GaussianCanaries.attach: the trainer's train_dataset must be a datasets.Dataset")
        if SEED_COLUMN not in cols:
            raise ConfigError(
                f"GaussianCanaries.attach: the trainer's train_dataset has no {SEED_COLUMN!r} column: give the "
                "trainer the dataset plant() returned"
            )
        if "input_ids" not in cols:
            raise ConfigError(
                "GaussianCanaries.attach: the trainer's train_dataset is not tokenised (no input_ids); trl.SFTTrainer "
                "tokenises it itself, a transformers.Trainer needs it tokenised before"
            )
        tokenizer = getattr(trainer, "processing_class", None) or getattr(trainer, "tokenizer", None)
        if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
            raise ConfigError("GaussianCanaries.attach: the trainer has no tokenizer (processing_class)")
        model = trainer.model
        emb = model.get_input_embeddings()
        unit = embedding_rms(model) if self.noise_scale == "rms" else 1.0
        seeds_col = ds[SEED_COLUMN]
        where = [i for i, s in enumerate(seeds_col) if int(s) >= 0]
        trained = ds.select(where)
        tokens: dict[int, dict] = {}
        for row in trained:
            s = int(row[SEED_COLUMN])
            if s not in self.planted:
                raise ConfigError(f"GaussianCanaries.attach: noise_seed {s} was not planted by these canaries")
            ids = [int(t) for t in row["input_ids"]]
            if self.format == "text":
                plen = len(ids)
            else:
                prompt_ids = tokenizer(self.planted[s]["prompt"])["input_ids"]
                plen = common_prefix_length(prompt_ids, ids)
            if plen < 1:
                raise ConfigError(
                    f"GaussianCanaries.attach: canary row {self.planted[s]['index']} has no prompt tokens"
                )
            tokens[s] = {"input_ids": ids, "prompt_len": plen}
        if set(tokens) != set(self.planted):
            raise ConfigError(
                f"GaussianCanaries.attach: {len(self.planted) - len(tokens)} planted canaries are missing from the "
                "trainer's train_dataset (filtered out?)"
            )
        hidden = int(getattr(emb, "embedding_dim", 0) or model.config.hidden_size)
        self._noise = _CanaryNoise(self.eps * unit, {s: t["prompt_len"] for s, t in tokens.items()})
        self._noise.install(trainer, emb)
        self._tokens = tokens
        self._meta = {
            "embedding_rms": unit if self.noise_scale == "rms" else None,
            "noise_std": self.eps * unit,
            "hidden_size": hidden,
            "tokenizer": tokenizer_record(tokenizer),
            "main_process": getattr(args, "process_index", 0) == 0,
        }
        return self

    # -- save ---------------------------------------------------------------------------------------------------------

    def manifest(self) -> dict:
        """The manifest as a dict (what :meth:`save` writes)."""
        if self._noise is None:
            raise ConfigError("GaussianCanaries.save: attach() the canaries to the trainer first")
        from . import __version__

        canaries = []
        for s, info in sorted(self.planted.items(), key=lambda kv: kv[1]["index"]):
            canaries.append({"noise_seed": s, **info, **self._tokens[s]})
        meta = {k: v for k, v in self._meta.items() if k != "main_process"}
        return build_manifest(
            canaries,
            eps=self.eps,
            noise_scale=self.noise_scale,
            selection={"fraction": self.fraction, "indices": self.indices, "seed": self.seed, "n_rows": self.n_rows},
            data_format=self.format,
            library_version=__version__,
            **meta,
        )

    def save(self, path) -> Path | None:
        """Write the manifest (JSON, atomically); under several processes only the main one writes."""
        manifest = self.manifest()
        if not self._meta["main_process"]:
            return None
        return write_manifest(manifest, path)


class _CanaryNoise:
    """The training-time side of attached canaries: a forward hook on the input embedding module that adds each
    canary's noise to the rows of the batch being trained on, and the trainer wrappers that bring the batch's
    ``noise_seed`` column past the model (the data collator) and arm the hook for one training step."""

    def __init__(self, std: float, prompt_lens: dict[int, int]):
        self.std, self.prompt_lens = std, prompt_lens
        self.active = None  # (noise_seeds, prompt_lens, starts) while a training step runs

    def hook(self, module, args, output):
        if self.active is None:
            return None
        seeds, plens, starts = self.active
        if output.shape[0] != len(seeds):  # not this batch's embedding call (e.g. a generation inside a callback)
            return None
        return add_prompt_noise(output, seeds, plens, self.std, starts=starts)

    def install(self, trainer, emb) -> None:
        import torch

        if getattr(trainer, "_canary_noise", None) is not None:
            raise ConfigError("GaussianCanaries.attach: this trainer already has canaries attached")
        trainer._canary_noise = self
        emb.register_forward_hook(self.hook)
        # keep the seed column through the Trainer's removal of columns the model does not take
        trainer._set_signature_columns_if_needed()
        if SEED_COLUMN not in trainer._signature_columns:
            trainer._signature_columns = [*trainer._signature_columns, SEED_COLUMN]
        collate = trainer.data_collator

        def collator(features):
            seeds = [int(f.pop(SEED_COLUMN, -1)) for f in features]
            batch = collate(features)
            batch[SEED_COLUMN] = torch.tensor(seeds, dtype=torch.long)
            return batch

        trainer.data_collator = collator
        step, predict = trainer.training_step, trainer.prediction_step
        noise = self

        def training_step(model, inputs, *args, **kwargs):
            seeds = inputs.pop(SEED_COLUMN, None)
            if seeds is None:
                return step(model, inputs, *args, **kwargs)
            seeds = seeds.tolist()
            plens = [noise.prompt_lens.get(s, 0) if s >= 0 else 0 for s in seeds]
            mask = inputs.get("attention_mask")
            starts = None
            if mask is not None and mask.ndim == 2 and bool((mask[:, 0] == 0).any()):  # left padding
                starts = mask.int().argmax(dim=1).tolist()
            noise.active = (seeds, plens, starts)
            try:
                return step(model, inputs, *args, **kwargs)
            finally:
                noise.active = None

        def prediction_step(model, inputs, *args, **kwargs):
            inputs.pop(SEED_COLUMN, None)  # evaluation sees the clean examples
            return predict(model, inputs, *args, **kwargs)

        trainer.training_step, trainer.prediction_step = training_step, prediction_step
