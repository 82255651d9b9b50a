"""EU-k, exact unlearning of the last k blocks (Goel et al. 2022): re-initialise the last k blocks with the model's own
initialisation, freeze the rest and train the fresh part on the retain set. For a causal LM the blocks are the last
k decoder layers plus the final norm and the (untied) LM head. Full-parameter only (``supports_peft=False``): adapters
on top of random weights would train a low-rank update of noise, which is not the method."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..configs import ConfigError
from ..tasks import task_of
from .cf_k import last_k_layer_ids, train_only
from .gd import GDTrainer
from ..registry import register_method


@dataclass
class EUKConfig:
    """Re-initialise the last k decoder layers (+ final norm and LM head), then train them on the retain set."""

    k: int = field(default=1, metadata={"help": "number of last decoder layers to re-initialise (1 <= k <= layers)"})

    def validate(self) -> None:
        if self.k < 1:
            raise ConfigError(f"method_args.k must be >= 1, got {self.k}")


def _init_owner(model, module: torch.nn.Module):
    """The innermost ``PreTrainedModel`` of ``model`` that holds ``module`` (``module`` itself if it is one): the one
    whose ``_initialize_weights`` transformers' ``initialize_weights`` dispatches to there (a composite model's
    sub-models bring their own init)."""
    from transformers import PreTrainedModel

    path = next((name for name, m in model.named_modules() if m is module), None)
    if path is None:
        raise ValueError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")
    owner, m = model, model
    for part in path.split(".") if path else []:
        m = getattr(m, part)
        if isinstance(m, PreTrainedModel):
            owner = m
    return owner


def _hf_reinitialize_(model, top: torch.nn.Module) -> None:
    """Re-run transformers' own initialisation (``PreTrainedModel.initialize_weights``) on the subtree ``top``.

    It mirrors that method's ``smart_apply``: children first, then the parent, on *every* module (containers without
    parameters of their own included), so a parent's ``_init_weights`` runs last and wins. That order is what GPT-2's
    scaled init relies on: ``_init_weights(Conv1D)`` draws c_proj with std ``initializer_range``, then
    ``_init_weights(GPT2Attention | GPT2MLP)``, a module with no parameters of its own, redraws its c_proj with std
    ``initializer_range / sqrt(2 n_layer)`` (1/sqrt(N) per residual layer, GPT-2 paper). Walking modules parent first,
    or skipping parameter-less ones, leaves c_proj 4x too large at 8 layers."""
    from transformers import PreTrainedModel
    from transformers import initialization as hf_init

    # A checkpoint's tensors and modules are flagged ``_is_hf_initialized`` on load, and every transformers init
    # primitive (and ``_initialize_weights`` itself) skips a flagged tensor or module: clear the flags or nothing is
    # redrawn. ``_initialize_weights`` sets the module flag again once done, as at construction.
    for m in top.modules():
        m._is_hf_initialized = False
        for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]:
            t._is_hf_initialized = False

    custom = model.is_custom_code()

    def visit(m: torch.nn.Module, init_fn) -> None:
        for child in m.children():
            visit(child, child._initialize_weights if isinstance(child, PreTrainedModel) else init_fn)
        init_fn(m, custom)

    # The guard makes plain torch.nn.init calls (e.g. a module's own reset_parameters) obey the flags too, as in
    # ``initialize_weights``.
    with hf_init.guard_torch_init_functions():
        visit(top, _init_owner(model, top)._initialize_weights)


def _reset_parameters_(top: torch.nn.Module) -> None:
    """A plain ``torch.nn`` model (the image track's classifiers): every module's own ``reset_parameters``, children
    before parents like transformers' traversal (each module redraws only its own tensors, so the order only matters
    for the draw sequence). A module with parameters of its own and no ``reset_parameters`` is an error: skipping it
    would leave trained weights in place while the run claims to have re-initialised them."""
    for m in reversed(list(top.modules())):  # reversed pre-order: every child before its parent
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
        elif any(True for _ in m.parameters(recurse=False)):
            raise ConfigError(
                f"EU-k cannot re-initialise {type(m).__name__}: it has parameters but no reset_parameters()"
            )


@torch.no_grad()
def reinitialize_(model, modules: list[torch.nn.Module], seed: int) -> None:
    """Re-draw every parameter of ``modules`` (subtrees of ``model``) as the model's own construction draws them, under
    its own seed so the draw does not depend on what ran before.

    A transformers model: its ``post_init`` initialisation (``initialize_weights``) restricted to those subtrees; any
    other model: each module's ``reset_parameters``."""
    from transformers import PreTrainedModel

    unwrapped = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for top in modules:
            if isinstance(unwrapped, PreTrainedModel):
                _hf_reinitialize_(unwrapped, top)
            else:
                _reset_parameters_(top)


def prepare_eu_k(model, method_cfg: EUKConfig, ctx):
    """``ctx``: ``methods.inputs.PrepareContext`` (its seed draws the fresh weights)."""
    modules = task_of(model).top_modules(model, last_k_layer_ids(model, method_cfg.k))
    reinitialize_(model, modules, ctx.seed)
    return train_only(model, modules)


@register_method(
    "eu_k",
    config=EUKConfig,
    summary="re-initialise the last k layers, train them on retain",
    prepare_model=prepare_eu_k,
    supports_peft=False,
)
class EUKTrainer(GDTrainer):
    """Retain NLL (GD's loss) on the re-initialised top; ``prepare_eu_k`` does the re-initialisation and freezing."""
