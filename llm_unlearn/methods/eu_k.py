"""EU-k, exact unlearning of the last k blocks (Goel et al. 2022): re-initialise the last k blocks with the model's own
initialisation, freeze the rest and train the fresh part on the retain set. For a causal LM the blocks are the last
k decoder layers plus the final norm and the (untied) LM head. Full-parameter only (``supports_peft=False``): adapters
on top of random weights would train a low-rank update of noise, which is not the method."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..configs import ConfigError
from .base import task_of
from .cf_k import last_k_layer_ids, train_only
from .gd import GDTrainer


@dataclass
class EUKConfig:
    """Re-initialise the last k decoder layers (+ final norm and LM head), then train them on the retain set."""

    k: int = field(default=1, metadata={"help": "number of last decoder layers to re-initialise (1 <= k <= layers)"})

    def validate(self) -> None:
        if self.k < 1:
            raise ConfigError(f"method_args.k must be >= 1, got {self.k}")


@torch.no_grad()
def reinitialize_(model, modules: list[torch.nn.Module], seed: int) -> None:
    """Re-draw every parameter of ``modules`` with the model's ``_init_weights`` (or the module's
    ``reset_parameters``), under its own seed so the draw does not depend on what ran before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for top in modules:
            for m in top.modules():
                own = list(m.parameters(recurse=False))
                if not own:
                    continue
                # transformers skips tensors flagged as loaded from a checkpoint: clear the flag or nothing happens.
                for p in own:
                    p._is_hf_initialized = False
                if hasattr(model, "_init_weights"):
                    model._init_weights(m)
                elif hasattr(m, "reset_parameters"):
                    m.reset_parameters()


def prepare_eu_k(model, method_cfg: EUKConfig, unlearn_cfg):
    modules = task_of(model).top_modules(model, last_k_layer_ids(model, method_cfg.k))
    reinitialize_(model, modules, unlearn_cfg.seed)
    return train_only(model, modules)


class EUKTrainer(GDTrainer):
    """Retain NLL (GD's loss) on the re-initialised top; ``prepare_eu_k`` does the re-initialisation and freezing."""
