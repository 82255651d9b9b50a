"""CF-k, catastrophically forget the last k blocks (Goel et al. 2022): freeze everything but the last k blocks and
fine-tune them on the retain set. For a causal LM a block is a decoder layer; the final norm and the LM head sit on
top of the last layer, so they train too. The layer helpers here are shared with EU-k and RMU;
the decoder layers themselves are found by the causal-LM task (``tasks/causal_lm.py``).

With LoRA the adapters sit only on the linear modules of the last k layers (norm and head stay frozen: an adapter
run saves adapters only). Other tasks name their blocks through the task seam (``task_of(model).blocks``): a
classifier's blocks run from the stem to the head, so k = 1 is the head alone."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch

from ..configs import ConfigError
from ..tasks import task_of
from ..tasks.causal_lm import _find_layers
from .gd import GDTrainer
from ..registry import register_method

logger = logging.getLogger(__name__)


@dataclass
class CFKConfig:
    """Fine-tune only the last k decoder layers (+ final norm and LM head) on the retain set."""

    k: int = field(default=1, metadata={"help": "number of last decoder layers to fine-tune (1 <= k <= layers)"})

    def validate(self) -> None:
        if self.k < 1:
            raise ConfigError(f"method_args.k must be >= 1, got {self.k}")


def resolve_layer_ids(ids: list[int], n_layers: int, key: str) -> list[int]:
    """Python-style indices (negative count from the end) -> sorted distinct layer indices, or a ConfigError."""
    bad = [i for i in ids if not -n_layers <= i < n_layers]
    if bad:
        raise ConfigError(f"method_args.{key}: layer(s) {bad} out of range for a model with {n_layers} layers")
    return sorted({i % n_layers for i in ids})


def last_k_layer_ids(model, k: int) -> list[int]:
    n = len(task_of(model).blocks(model))
    if not 1 <= k <= n:
        raise ConfigError(f"method_args.k must be in [1, {n}] (the model has {n} decoder layers), got {k}")
    return list(range(n - k, n))


def _stay_in_eval(module, args) -> None:
    """Forward pre-hook of a frozen module: back to eval mode before every call."""
    module.eval()


def frozen_subtrees(model, modules: list[torch.nn.Module]) -> list[torch.nn.Module]:
    """The largest submodules of ``model`` that neither are nor contain one of ``modules``. A container
    (``ModuleList``/``ModuleDict``) is never called itself, so its children are returned instead."""
    trainable = {id(m) for m in modules}
    out = []

    def visit(m: torch.nn.Module) -> None:
        if id(m) in trainable:
            return
        if not isinstance(m, (torch.nn.ModuleList, torch.nn.ModuleDict)) and not any(
            id(x) in trainable for x in m.modules()
        ):
            out.append(m)
            return
        for child in m.children():
            visit(child)

    visit(model)
    return out


def train_only(model, modules: list[torch.nn.Module]):
    """Full-parameter: freeze every parameter, then unfreeze those of ``modules``.

    What is frozen also stays in eval mode: requires_grad=False stops the gradient, not the running statistics of a
    BatchNorm in train mode (nor dropout), so a frozen block of a classifier would keep changing. The Trainer calls
    ``model.train()`` at every step, so eval mode is restored by a forward pre-hook on each frozen subtree, right
    before it runs, rather than set once."""
    model.requires_grad_(False)
    for m in modules:
        m.requires_grad_(True)
    for m in frozen_subtrees(model, modules):
        m.eval()
        m.register_forward_pre_hook(_stay_in_eval)
    return model


def lora_on_layers(model, layer_ids: list[int], lora):
    """The run's LoRA config (``lora``, a peft ``LoraConfig``) restricted to ``layer_ids`` through
    ``layers_to_transform``.

    peft refuses ``layers_to_transform`` with a string ``target_modules``, so "all-linear" is first resolved to the
    names of the linear modules inside those layers (what peft's all-linear would pick there)."""
    from peft import get_peft_model

    attr, _, layers = _find_layers(model)
    targets = lora.target_modules
    if targets is None or isinstance(targets, str):
        if targets not in (None, "all-linear"):
            raise ConfigError("lora target_modules must be 'all-linear' or a list of module names for this method")
        targets = sorted(
            {
                name.rsplit(".", 1)[-1]
                for i in layer_ids
                for name, m in layers[i].named_modules()
                if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"
            }
        )
    else:
        targets = sorted(targets)
    lora = dataclasses.replace(lora, target_modules=targets, layers_to_transform=list(layer_ids), layers_pattern=attr)
    return get_peft_model(model, lora)


def prepare_cf_k(model, method_cfg: CFKConfig, ctx):
    """``ctx``: ``methods.inputs.PrepareContext`` (with LoRA, the adapter goes on the last k layers only)."""
    ids = last_k_layer_ids(model, method_cfg.k)
    if getattr(ctx, "use_peft", False):
        return lora_on_layers(model, ids, ctx.peft_config)
    return train_only(model, task_of(model).top_modules(model, ids))


@register_method(
    "cf_k",
    config=CFKConfig,
    summary="fine-tune only the last k layers on retain",
    prepare_model=prepare_cf_k,
)
class CFKTrainer(GDTrainer):
    """The loss is plain retain NLL (GD's); what makes CF-k is which parameters ``prepare_cf_k`` leaves trainable."""
