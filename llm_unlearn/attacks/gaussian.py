"""Gaussian data poisoning (the paper's audit tool).

A random ``poison_fraction`` of the training examples get i.i.d. noise xi ~ N(0, eps^2 I) added to the input token
embeddings of their prompt positions every time they are seen in training; labels stay as they are. Tokens are
discrete, so the noise lives in embedding space, and it is regenerable from a per-example ``noise_seed`` so the audit
(:mod:`llm_unlearn.metrics.gus`) can recompute xi exactly. Noise on the completion positions would be useless: under
causal masking nothing the loss sees depends on them.

Hooks: (a) picks the poisons and their noise seeds; (b) adds the noise to the prompt embeddings of every training
batch of the poisoned set; (c) the Gaussian Unlearning Score of every poison (``gus_*``, metric ``gus_mean``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

from ..canaries import add_prompt_noise, canary_scores, embedding_rms
from ..configs import ConfigError
from ..registry import register_attack
from .base import Attack

# torch and numpy are imported inside the functions: the CLI loads this module to validate a config (``--help`` and
# config errors stay instant).

GUS_KEYS = ("gus_mean", "gus_std", "gus_z", "gus_p", "gus_auc", "gus_tpr_at_1pct_fpr", "fresh_gus_mean", "fresh_gus_z")


@dataclass
class GaussianConfig:
    """The Gaussian attack's knobs (``poison.attack_args``)."""

    noise_eps: float = field(default=1.0, metadata={"help": "noise std eps (see noise_scale)"})
    noise_scale: Literal["rms", "absolute"] = field(
        default="rms", metadata={"help": "eps is in units of the embedding RMS (rms) or absolute"}
    )

    def validate(self) -> None:
        if not (self.noise_eps > 0 and math.isfinite(self.noise_eps)):
            raise ConfigError(f"noise_eps must be > 0 and finite, got {self.noise_eps}")


def gus_loss_fn(model, batch: dict):
    """The audit's per-poison loss of a collated (right-padded) batch, as a function of its input embeddings
    ``(n, L, hidden) -> (n,)``: the completion NLL, with the LM head applied only at the positions that predict a
    completion token (:func:`~llm_unlearn.tasks.causal_lm.completion_nll`; equal to ``sequence_nll`` up to float
    round-off, without the vocab-sized logits of every prompt position)."""
    from ..tasks.causal_lm import completion_nll

    return lambda e: completion_nll(model, batch, e)


def clean_embeddings(model, batch: dict):
    """The batch's clean input embeddings (float32, no graph): the point where the audit takes its gradient."""
    import torch

    from ..tasks.causal_lm import embed

    with torch.no_grad():
        return embed(model, batch["input_ids"]).float()


def gus_scores(model, tokenizer, forget_ds, max_length: int, batch_size: int, draws: int):
    """I_z of every poison under its training noise (draw 0) and under ``draws`` fresh noises: the poisons tokenised
    as the train stage tokenises them, scored by :func:`llm_unlearn.canaries.canary_scores` (the one audit loop,
    shared with ``llm-unlearn audit``). Returns a list of ``n`` floats and a ``draws`` x ``n`` nested list, in the
    order of ``forget_ds``."""
    from ..modeling import tokenize_split

    rows = list(tokenize_split(forget_ds, tokenizer, max_length))
    return canary_scores(model, rows, tokenizer.pad_token_id, batch_size, draws)


def gaussian_unlearning_score(
    model,
    tokenizer,
    poisons,
    *,
    fresh_draws: int = 10,
    max_length: int = 256,
    batch_size: int = 32,
    return_scores: bool = False,
):
    """The Gaussian audit of a model held in memory: did the poisons' training noise leave a trace in it?

    Args:
        model: the causal LM to audit (any device; put in eval mode for the audit, its mode restored afterwards).
        tokenizer: its tokenizer.
        poisons: the Gaussian poisons, a ``datasets.Dataset`` or a list of dicts with ``prompt``, ``completion`` and
            the ``noise_seed`` each was noised with in training (the poison stage's ``forget`` split has them). The
            noise scale eps is not needed: I_z = <xi, g> / (eps ||g||) does not depend on it, so the unit noise
            regenerated from each seed gives the same score.
        fresh_draws: fresh (never trained) noises per poison, the null control (their scores are N(0, 1)).
        max_length: tokens kept per row, as in training (prompts are cut the same way).
        batch_size: poisons per input-gradient backward pass.
        return_scores: also return the per-poison scores.

    Returns:
        ``gus_summary(poison_scores, fresh_scores)`` (``gus_mean``, ``gus_z``, ``gus_p``, ``gus_auc``...: a
        significantly negative ``gus_mean`` means the poisons are still remembered); with ``return_scores``, a pair
        (summary, ``{"gus_poison": [n floats], "gus_fresh": [fresh_draws x n]}``).
    """
    import datasets

    from ..metrics import gus_summary

    if isinstance(poisons, (list, tuple)):
        poisons = datasets.Dataset.from_list(list(poisons))
    missing = {"prompt", "completion", "noise_seed"} - set(poisons.column_names)
    if missing:
        raise ConfigError(f"poisons: missing columns {sorted(missing)}; a poison has prompt, completion, noise_seed")
    if len(poisons) < 2:
        raise ConfigError(f"poisons: the audit compares their mean with its spread; give >= 2, got {len(poisons)}")
    if any(int(s) < 0 for s in poisons["noise_seed"]):
        raise ConfigError("poisons: every row needs the noise_seed it was noised with (>= 0; clean rows have -1)")
    for name, value in (("fresh_draws", fresh_draws), ("max_length", max_length), ("batch_size", batch_size)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    was_training = model.training
    model.eval()  # no dropout: the gradient the score reads must be the model's own
    try:
        poison, fresh = gus_scores(model, tokenizer, poisons, max_length, batch_size, fresh_draws)
    finally:
        model.train(was_training)
    summary = gus_summary(poison, fresh)
    return (summary, {"gus_poison": poison, "gus_fresh": fresh}) if return_scores else summary


@register_attack("gaussian", config=GaussianConfig, track="llm")
class GaussianAttack(Attack):
    """Gaussian noise on the prompt embeddings of random training examples (the paper's audit tool)."""

    metric = "gus_mean"  # the poison metric gap-closed is computed on (closer to 0 = less poison)
    eval_keys = GUS_KEYS
    report_columns = (
        "clean_accuracy",
        "gus_mean",
        "gus_z",
        "gus_auc",
        "gus_tpr_at_1pct_fpr",
        "fresh_gus_z",
        "gap_closed",
        "mia_auc",
        "compute_fraction",
    )
    gus_audit = True
    min_poisons = 2  # the test compares the poisons' mean score with its spread

    def poison(self, train: list[dict], test: list[dict], rng: random.Random, cfg) -> tuple[list[dict], dict, dict]:
        k = round(cfg.poison_fraction * len(train))
        if k < 2:
            raise ValueError(
                f"poison_fraction={cfg.poison_fraction} of {len(train)} training examples gives {k} poisons; "
                "the Gaussian test needs at least 2"
            )
        chosen = set(rng.sample(range(len(train)), k))
        rows = []
        for i, row in enumerate(train):
            poisoned = i in chosen
            rows.append(
                {
                    **row,
                    "is_poison": poisoned,
                    "orig_label": row["label"],
                    "noise_seed": rng.randrange(2**31) if poisoned else -1,
                }
            )
        info = {"noise_eps": self.args.noise_eps, "noise_scale": self.args.noise_scale, "noise_positions": "prompt"}
        return rows, {}, info

    def start_training(self, model, manifest: dict, split: str) -> dict:
        # Only the initial model sees the noise: the gold model trains on the retain set, which holds no poison.
        self.noise_std = 0.0
        if split == "train":
            unit = embedding_rms(model) if self.args.noise_scale == "rms" else 1.0
            self.noise_std = self.args.noise_eps * unit
        return {"noise_std": self.noise_std}

    def training_embeddings(self, model, inputs: dict, columns: dict):
        from ..tasks.causal_lm import embed

        noise_seeds, prompt_lens = columns.get("noise_seed"), columns.get("prompt_len")
        # Every batch of a Gaussian run goes through the embedding path (zero noise on clean rows), not only those
        # holding poisons: ZeRO-3 requires all ranks to run the same module sequence, and the loss is the same.
        if noise_seeds is None or not getattr(self, "noise_std", 0.0) > 0:
            return None
        # the canaries' own noise rule (llm_unlearn.canaries), as an attached trainer applies it
        return add_prompt_noise(
            embed(model, inputs["input_ids"]), noise_seeds.tolist(), prompt_lens.tolist(), self.noise_std
        )

    def canary_manifest(self, tokenizer, forget_ds, max_length: int, hidden_size: int) -> dict:
        """The poisons as a canary manifest (:mod:`llm_unlearn.canaries`), tokenised as the train stage trained on
        them: the initial model's dir carries it, so ``llm-unlearn audit`` can audit any model of the run."""
        from .. import __version__
        from ..canary_manifest import build_manifest, tokenizer_record
        from ..modeling import tokenize_split

        toks = tokenize_split(forget_ds, tokenizer, max_length)
        canaries = [
            {
                "noise_seed": int(row["noise_seed"]),
                "prompt": row["prompt"],
                "completion": row["completion"],
                "input_ids": [int(t) for t in tok["input_ids"]],
                "prompt_len": int(tok["prompt_len"]),
            }
            for row, tok in zip(forget_ds, toks)
        ]
        rms = self.noise_std / self.args.noise_eps if self.args.noise_scale == "rms" else None
        return build_manifest(
            canaries,
            eps=self.args.noise_eps,
            noise_scale=self.args.noise_scale,
            embedding_rms=rms,
            noise_std=self.noise_std,
            hidden_size=hidden_size,
            tokenizer=tokenizer_record(tokenizer),
            data_format="prompt_completion",
            library_version=__version__,
        )

    def evaluate(self, *, model, tokenizer, dd, cfg, **_) -> tuple[dict, dict]:
        from ..metrics import gus_summary

        poison, fresh = gus_scores(
            model, tokenizer, dd["forget"], cfg.max_length, cfg.gus_batch_size, cfg.fresh_noise_draws
        )
        return gus_summary(poison, fresh), {"gus_poison": poison, "gus_fresh": fresh}

    def describe(self) -> str:
        unit = " x the embedding RMS" if self.args.noise_scale == "rms" else ""
        return f"Gaussian noise on the prompt-token embeddings, eps {self.args.noise_eps:g}{unit}"
