"""RMU, representation misdirection for unlearning (Li et al. 2024, WMDP): push the layer-``layer_id`` activations of
forget tokens towards a fixed random direction scaled up, c u, and keep those of retain tokens where the frozen model
had them: loss = MSE(h(forget), c u) + alpha MSE(h(retain), h_frozen(retain)). Only ``trainable_layers`` train.

As in the reference code, u is a uniform-[0, 1) vector normalised to unit length (seeded by the run's seed) and the
activation is the raw residual-stream output of the decoder layer, read with a forward hook: ``output_hidden_states``
would return the final-norm output for the last layer, whose norm RMSNorm pins at ~sqrt(width), so c would lose its
meaning there. MSE is over every non-padding position, prompt and completion alike (RMU uses whole texts)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..configs import ConfigError
from .base import UnlearnTrainer, task_of
from .cf_k import lora_on_layers, resolve_layer_ids, train_only


@dataclass
class RMUConfig:
    """Steer forget activations at one layer to a random direction; anchor retain activations to the frozen model."""

    layer_id: int = field(
        default=-1,
        metadata={"help": "decoder layer whose output is steered; negative counts from the end (paper, 7B: 7)"},
    )
    trainable_layers: list[int] | None = field(
        default=None, metadata={"help": "layers that train, all <= layer_id (default [layer_id]; paper: 5,6,7)"}
    )
    steering_coeff: float = field(
        default=20.0,
        metadata={"help": "c, norm of the target c u: a few times the layer's activation norm (~sqrt(width) here)"},
    )
    alpha: float = field(default=100.0, metadata={"help": "weight of the retain MSE (reference code default: 100)"})

    def validate(self) -> None:
        if not self.steering_coeff > 0:
            raise ConfigError(f"method_args.steering_coeff must be > 0, got {self.steering_coeff}")
        if self.alpha < 0:
            raise ConfigError(f"method_args.alpha must be >= 0, got {self.alpha}")
        if self.trainable_layers is not None and not self.trainable_layers:
            raise ConfigError("method_args.trainable_layers must be a non-empty list (or null for [layer_id])")


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


def _layer_ids(model, method_cfg: RMUConfig) -> tuple[int, list[int]]:
    n = len(task_of(model).blocks(model))
    (layer,) = resolve_layer_ids([method_cfg.layer_id], n, "layer_id")
    train = method_cfg.trainable_layers if method_cfg.trainable_layers is not None else [layer]
    train = resolve_layer_ids(train, n, "trainable_layers")
    if max(train) > layer:  # layers above the steered one never see a gradient
        raise ConfigError(f"method_args.trainable_layers {train} must all be <= layer_id ({layer})")
    return layer, train


def prepare_rmu(model, method_cfg: RMUConfig, unlearn_cfg):
    _, train = _layer_ids(model, method_cfg)
    if getattr(unlearn_cfg, "use_peft", False):
        return lora_on_layers(model, train, unlearn_cfg)
    blocks = task_of(model).blocks(model)
    return train_only(model, [blocks[i] for i in train])


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
