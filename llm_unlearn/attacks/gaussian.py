"""Gaussian data poisoning (the paper's audit tool).

A random ``poison_fraction`` of the training examples get i.i.d. noise xi ~ N(0, eps^2 I) added to the input token
embeddings of their prompt positions every time they are seen in training; labels stay as they are. Tokens are
discrete, so the noise lives in embedding space, and it is regenerable from a per-example ``noise_seed`` so the audit
(:mod:`llm_unlearn.metrics.gus`) can recompute xi exactly. Noise on the completion positions would be useless: under
causal masking nothing the loss sees depends on them.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def prompt_noise(noise_seed: int, length: int, hidden: int, std: float = 1.0, draw: int = 0) -> torch.Tensor:
    """The (length, hidden) noise of one example: draw 0 is what training used, draws >= 1 are fresh noises.

    numpy's ``SeedSequence`` keyed by (noise_seed, draw) gives statistically independent streams per draw. (Offsetting
    a torch seed by a multiple of 2**32 does not: torch's CPU generator keeps only the low 32 bits, so the "fresh"
    noise would silently equal the training noise.)
    """
    rng = np.random.default_rng([int(noise_seed), int(draw)])
    return torch.from_numpy(rng.standard_normal((length, hidden), dtype=np.float32)) * std


def batch_prompt_noise(noise_seeds, prompt_lens, width: int, hidden: int, std: float = 1.0, draw: int = 0):
    """Noise for a right-padded batch, zero where ``noise_seed < 0`` (clean rows) and beyond each prompt."""
    out = torch.zeros(len(noise_seeds), width, hidden)
    for i, (seed, plen) in enumerate(zip(noise_seeds, prompt_lens)):
        if int(seed) >= 0:
            out[i, : int(plen)] = prompt_noise(int(seed), int(plen), hidden, std, draw)
    return out


def embedding_rms(model) -> float:
    """Root-mean-square of the input embedding matrix: the unit of ``noise_scale: rms``."""
    w = model.get_input_embeddings().weight.detach().float()
    return float(w.pow(2).mean().sqrt())


class GaussianAttack:
    name = "gaussian"
    metric = "gus_mean"  # the poison metric gap-closed is computed on (closer to 0 = less poison)

    def __init__(self, cfg):
        self.cfg = cfg

    def apply(self, train: list[dict], test: list[dict], rng: random.Random) -> tuple[list[dict], dict, dict]:
        k = round(self.cfg.poison_fraction * len(train))
        if k < 2:
            raise ValueError(
                f"poison_fraction={self.cfg.poison_fraction} of {len(train)} training examples gives {k} poisons; "
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
        info = {"noise_eps": self.cfg.noise_eps, "noise_scale": self.cfg.noise_scale, "noise_positions": "prompt"}
        return rows, {}, info
