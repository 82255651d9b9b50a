"""Determinism: global seeding, and a sampler whose order depends only on (seed, epoch) so resumed runs are exact."""

from __future__ import annotations

import random


def set_seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_seeded_sampler(n: int, seed: int, batch_size: int, lengths: list[int] | None = None):
    """A training-order sampler whose permutation depends only on (seed, epoch), never on the global RNG state.

    HF's samplers draw from the global torch RNG when an epoch starts; a run resumed from a checkpoint restores that
    RNG at the checkpoint's step, not at the epoch's start, so it would see other batches than the uninterrupted run.
    With ``lengths`` it groups examples of similar length into batches (HF's ``get_length_grouped_indices``).
    The Trainer (through accelerate) calls ``set_epoch`` before each epoch, also after skipping ahead on resume.
    """
    import numpy as np
    import torch

    class EpochSeededSampler(torch.utils.data.Sampler):
        def __init__(self):
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = int(epoch)

        def __len__(self) -> int:
            return n

        def __iter__(self):
            state = np.random.SeedSequence([int(seed) % 2**63, self.epoch]).generate_state(2, dtype=np.uint32)
            g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
            if lengths is None:
                return iter(torch.randperm(n, generator=g).tolist())
            from transformers.trainer_pt_utils import get_length_grouped_indices

            return iter(get_length_grouped_indices(lengths, batch_size, generator=g))

    return EpochSeededSampler()
