"""RMU, representation misdirection for unlearning (Li et al. 2024, WMDP): push the layer-``layer_id`` activations
of forget tokens towards a fixed random direction scaled up, c u, and keep those of retain tokens where the
frozen model had them: loss = MSE(h(forget), c u) + alpha MSE(h(retain), h_frozen(retain)).

What trains. The authors' code (github centerforaisafety/wmdp, ``rmu/unlearn.py``) steers layer 7 of the 32 of
Zephyr-7B and updates only the MLP down projection of layers 5, 6, 7 (``--layer_id 7 --layer_ids 5,6,7 --param_ids
6``: parameter 6 of a Mistral decoder layer is ``mlp.down_proj.weight``). The defaults here scale that to the model's
depth n: ``layer_id`` = round(7/32 n) clipped to [0, n-1], ``trainable_layers`` = [layer_id - 2, layer_id] clipped at
0, and ``trainable_module_regex`` = the MLP down projection of common causal LMs (Llama/Mistral/Qwen/Gemma
``mlp.down_proj``, GPT-2 ``mlp.c_proj``, GPT-NeoX/Falcon ``mlp.dense_4h_to_h``, GPT-J ``mlp.fc_out``, Phi
``mlp.fc2``). The regex is searched (``re.search``) in each module's name relative to its layer; full-parameter runs
train the parameters of the matching modules of the trainable layers, LoRA runs put adapters on the matching linear
modules of those layers. A regex that matches nothing is an error, never a run that trains nothing. Other tasks (a
classifier's blocks have no MLP projection) train whole blocks by default; a regex given explicitly applies to them
too. open-unlearning's ``configs/trainer/RMU.yaml`` instead trains every parameter (regex ``.*``) with c = 2, alpha 1:
set ``trainable_module_regex: ".*"`` for that.

alpha 100 and c 20 are the defaults of the authors' argument parser (one value per forget topic, ``"100,100"`` and
``"20,20"``); c should be a few times the layer's activation norm, ~sqrt(width) at the model's own scale.

As in the reference code, u is a uniform-[0, 1) vector normalised to unit length (seeded by the run's seed) and the
activation is the raw residual-stream output of the decoder layer, read with a forward hook: ``output_hidden_states``
would return the final-norm output for the last layer, whose norm RMSNorm pins at ~sqrt(width), so c would lose its
meaning there. MSE is over every non-padding position, prompt and completion alike (RMU uses whole texts)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

import torch

from ..configs import ConfigError, check_regex
from .base import UnlearnTrainer
from ..tasks import task_of
from .cf_k import lora_on_layers, resolve_layer_ids, train_only
from ..registry import register_method

# WMDP's setting on Zephyr-7B: steer layer 7 of 32.
AUTHORS_LAYER, AUTHORS_DEPTH = 7, 32
# How many layers below the steered one also train (WMDP: 5, 6 under the steered 7).
AUTHORS_LAYERS_BELOW = 2
# The MLP down projection (the MLP's output into the residual stream) of common causal-LM architectures.
MLP_DOWN_PROJ_REGEX = r"(^|\.)mlp\.(down_proj|c_proj|dense_4h_to_h|fc_out|fc2)$"


@dataclass
class RMUConfig:
    """Steer forget activations at one layer to a random direction; anchor retain activations to the frozen model."""

    layer_id: int | None = field(
        default=None,
        metadata={
            "help": "block whose output is steered; negative counts from the end; null = round(7/32 x layers), the "
            "WMDP authors' layer 7 of 32 scaled to the model's depth"
        },
    )
    trainable_layers: list[int] | None = field(
        default=None,
        metadata={
            "help": "blocks that train, all <= layer_id; null = [layer_id - 2 .. layer_id] clipped at 0 (WMDP: 5,6,7)"
        },
    )
    trainable_module_regex: str | None = field(
        default=None,
        metadata={
            "help": "regex searched in module names relative to a trainable block: only matching modules train (or "
            "get LoRA adapters); null = the MLP down projection for causal LMs (WMDP: mlp.down_proj), whole blocks "
            "for other tasks; '.*' = whole blocks"
        },
    )
    steering_coeff: float = field(
        default=20.0,
        metadata={"help": "c, norm of the target c u: a few times the layer's activation norm (WMDP default: 20)"},
    )
    alpha: float = field(default=100.0, metadata={"help": "weight of the retain MSE (WMDP default: 100)"})

    def validate(self) -> None:
        if not (self.steering_coeff > 0 and math.isfinite(self.steering_coeff)):
            raise ConfigError(f"method_args.steering_coeff must be > 0, got {self.steering_coeff}")
        if not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise ConfigError(f"method_args.alpha must be >= 0, got {self.alpha}")
        if self.trainable_layers is not None and not self.trainable_layers:
            raise ConfigError("method_args.trainable_layers must be a non-empty list (or null for the default)")
        if self.trainable_module_regex is not None:
            check_regex("method_args.trainable_module_regex", self.trainable_module_regex)


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (a - b)^2 over the hidden dim and the positions where ``mask`` is 1: (n, L, d), (n, L, d), (n, L)."""
    per_pos = (a.float() - b.float()).square().mean(-1)
    m = mask.to(per_pos.dtype)
    return (per_pos * m).sum() / m.sum().clamp_min(1)


def rmu_forget_loss(h_forget: torch.Tensor, control: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE(h(forget), c u), with ``control`` = c u of shape (d,)."""
    return masked_mse(h_forget, control.expand_as(h_forget), mask)


def rmu_retain_loss(h_retain: torch.Tensor, h_frozen: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    return alpha * masked_mse(h_retain, h_frozen, mask)


def control_vector(hidden_size: int, coeff: float, seed: int) -> torch.Tensor:
    u = torch.rand(hidden_size, generator=torch.Generator().manual_seed(seed))
    return coeff * u / u.norm()


def layer_output(model, layer: torch.nn.Module, batch: dict, task=None) -> torch.Tensor:
    """The output hidden states (n, L, d) of ``layer`` during a forward pass of ``model`` on ``batch`` (for other
    tasks, whatever shape the block returns: ``task.hidden_view`` turns it into (n, positions, width))."""
    store = {}

    def hook(module, args, out):
        store["h"] = out[0] if isinstance(out, tuple) else out

    handle = layer.register_forward_hook(hook)
    try:
        (task or task_of(model)).forward(model, batch)
    finally:
        handle.remove()
    return store["h"]


def default_layer_id(n_layers: int) -> int:
    """WMDP's layer 7 of 32 at the model's depth: round(7/32 n) (halves up), clipped to [0, n-1]."""
    return min(max(math.floor(AUTHORS_LAYER / AUTHORS_DEPTH * n_layers + 0.5), 0), n_layers - 1)


def rmu_layers(n_layers: int, layer_id: int | None, trainable_layers: list[int] | None) -> tuple[int, list[int]]:
    """(steered layer, trainable layers) for a model of ``n_layers`` blocks, defaults resolved, or a ConfigError."""
    if layer_id is None:
        layer = default_layer_id(n_layers)
    else:
        (layer,) = resolve_layer_ids([layer_id], n_layers, "layer_id")
    if trainable_layers is None:
        train = list(range(max(layer - AUTHORS_LAYERS_BELOW, 0), layer + 1))
    else:
        train = resolve_layer_ids(trainable_layers, n_layers, "trainable_layers")
    if max(train) > layer:  # layers above the steered one never see a gradient
        raise ConfigError(f"method_args.trainable_layers {train} must all be <= layer_id ({layer})")
    return layer, train


def _layer_ids(model, method_cfg: RMUConfig) -> tuple[int, list[int]]:
    return rmu_layers(len(task_of(model).blocks(model)), method_cfg.layer_id, method_cfg.trainable_layers)


def module_regex(model, method_cfg: RMUConfig) -> str | None:
    """The regex that picks the trainable modules of a block, None for whole blocks (non-LM tasks by default)."""
    if method_cfg.trainable_module_regex is not None:
        return method_cfg.trainable_module_regex
    return MLP_DOWN_PROJ_REGEX if task_of(model).name == "causal_lm" else None


def matching_modules(blocks, layer_ids: list[int], regex: str) -> dict[str, torch.nn.Module]:
    """``{"<layer>.<name>": module}`` of the modules with parameters whose name relative to their block matches
    ``regex`` (``re.search``), over ``layer_ids``; a ConfigError naming the regex and some module names if none
    does."""
    pattern = re.compile(regex)
    found = {
        f"{i}.{name}": m
        for i in layer_ids
        for name, m in blocks[i].named_modules()
        if name and pattern.search(name) and any(True for _ in m.parameters(recurse=False))
    }
    if not found:
        names = [name for name, m in blocks[layer_ids[0]].named_modules() if name and list(m.parameters(False))]
        raise ConfigError(
            f"method_args.trainable_module_regex {regex!r} matches no module with parameters in layers {layer_ids}; "
            f"the modules of layer {layer_ids[0]} include {names[:8]}"
        )
    return found


def prepare_rmu(model, method_cfg: RMUConfig, ctx):
    """``ctx``: ``methods.inputs.PrepareContext`` (with LoRA, the adapter goes on the trained modules only)."""
    _, train = _layer_ids(model, method_cfg)
    blocks = task_of(model).blocks(model)
    regex = module_regex(model, method_cfg)
    if getattr(ctx, "use_peft", False):
        return lora_on_layers(model, train, _lora_targets(blocks, train, regex, ctx.peft_config))
    if regex is None:
        return train_only(model, [blocks[i] for i in train])
    return train_only(model, list(matching_modules(blocks, train, regex).values()))


def _lora_targets(blocks, layer_ids: list[int], regex: str | None, lora):
    """The LoRA config ``lora`` with ``target_modules`` narrowed to the names (relative to the block, as peft matches
    as suffixes within ``layers_to_transform``) of the linear modules the regex selects, intersected with the run's own
    target list when it gives one."""
    selected = matching_modules(blocks, layer_ids, regex if regex is not None else "")
    linear = {
        key.split(".", 1)[1]
        for key, m in selected.items()
        if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"
    }
    wanted = lora.target_modules if lora.target_modules is not None else "all-linear"
    if not isinstance(wanted, str):  # an explicit list: keep the selected modules it names (by last name or full)
        linear = {n for n in linear if n in wanted or n.rsplit(".", 1)[-1] in wanted}
    elif wanted != "all-linear":
        raise ConfigError("lora target_modules must be 'all-linear' or a list of module names for rmu")
    if not linear:
        raise ConfigError(
            f"method_args.trainable_module_regex {regex!r} selects no linear module of layers {layer_ids} among "
            f"lora_target_modules {wanted!r} for LoRA: {sorted(selected)[:8]}"
        )
    return dataclasses.replace(lora, target_modules=sorted(linear))


@register_method(
    "rmu",
    config=RMUConfig,
    summary="steer forget activations to a random direction, anchor retain",
    needs_reference=True,
    prepare_model=prepare_rmu,
)
class RMUTrainer(UnlearnTrainer):
    control_vec = None  # c u, drawn on the first step (needs the width); not `control`: Trainer owns that

    def unlearn_loss(self, model, forget, retain):
        cfg = self.method_cfg
        unwrapped = self.accelerator.unwrap_model(model)
        layer_id, _ = _layer_ids(unwrapped, cfg)
        task = self.task
        layer = task.blocks(unwrapped)[layer_id]
        h_f, f_mask = task.hidden_view(layer_output(model, layer, forget, task), forget)
        if self.control_vec is None:
            self.control_vec = control_vector(h_f.shape[-1], cfg.steering_coeff, self.args.seed).to(h_f.device)
        self.charge(forget)
        forget_loss = rmu_forget_loss(h_f, self.control_vec, f_mask)
        self.charge(retain)
        h_r, r_mask = task.hidden_view(layer_output(model, layer, retain, task), retain)
        self.charge(retain, backward=False)
        with self.reference(model) as ref:
            ref_layer = task.blocks(self.accelerator.unwrap_model(ref))[layer_id]
            h_frozen, _ = task.hidden_view(layer_output(ref, ref_layer, retain, task), retain)
        return forget_loss + rmu_retain_loss(h_r, h_frozen, r_mask, cfg.alpha)
