"""NGD, noisy gradient descent (the paper's Fig. 6 method): GD on the retain set plus isotropic Gaussian noise, the
noisy-GD (Langevin) update theta <- theta - eta (grad l(B_r) + n), n ~ N(0, sigma^2 I).

What sigma means. ``sigma`` is the standard deviation of n in *gradient units*: every optimizer step moves each
trainable parameter by an extra -eta_t * sigma * z, z ~ N(0, 1), with eta_t the step's learning rate. That is the
noise term of the update above whatever the optimizer is, so the paper's sigma^2 = 1e-7 (Fig. 6, ResNet-18 with SGD)
is ``sigma = 3.16e-4`` here.

Why the noise is not added to the gradient. Under Adam(W) a gradient is divided by the running root mean square of
past gradients: once the noise dominates, the update no longer depends on its scale (sigma = 0.01 and 0.1 move the
weights by exactly the same amount), and with momentum the noise would be smoothed across steps. So the gradient
step is the optimizer's own, and the noise is applied to the parameters right after it, scaled by the learning rate:
for plain SGD the two are identical, for any other optimizer only the second keeps sigma's meaning.

DeepSpeed. Under ZeRO the engine steps inside ``accelerator.backward`` and the optimizer holds fp32 master copies of
the parameters (partitioned across ranks); ZeRO-3 parameters are themselves partitioned. The noise therefore goes
into both the master partition this rank owns and the model's copy of it (full under ZeRO-1/2, the local partition
``ds_tensor`` under ZeRO-3), after the engine's step; otherwise the next step would overwrite it from the master copy.
Every rank draws the same full-size noise per parameter from (seed, step) and keeps its slice, so an NGD run on N
ranks adds exactly the noise a single process adds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import TrainerCallback

from ..configs import ConfigError
from .base import UnlearnTrainer
from ..registry import register_method

# The paper's Fig. 6: sigma^2 = 1e-7.
PAPER_SIGMA = math.sqrt(1e-7)


@dataclass
class NGDConfig:
    """GD on retain plus the noisy-GD term -lr * sigma * z (z ~ N(0, I)) after every optimizer step."""

    sigma: float = field(
        default=PAPER_SIGMA,
        metadata={
            "help": "std of the gradient noise n ~ N(0, sigma^2 I) in theta <- theta - lr (grad + n); each step adds "
            "-lr * sigma * z to every trainable parameter after the optimizer's own update (default: the paper's "
            "Fig. 6 sigma^2 = 1e-7, i.e. sigma = 3.16e-4)"
        },
    )

    def validate(self) -> None:
        if not (self.sigma >= 0 and math.isfinite(self.sigma)):
            raise ConfigError(f"method_args.sigma must be a finite number >= 0, got {self.sigma}")


def step_generator(seed: int, step: int, device) -> torch.Generator:
    """The generator of step ``step``'s noise: from (seed, step) alone, so a run resumed from a checkpoint adds the
    noise an uninterrupted one would (one generator seeded once would restart its stream at the resumed step)."""
    stream = np.random.SeedSequence([int(seed) % 2**63, int(step)]).generate_state(2, np.uint32)
    return torch.Generator(device=device).manual_seed(int(stream[0]) << 32 | int(stream[1]))


def _draw(shape, generator: torch.Generator, device) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float32, device=device)


@torch.no_grad()
def add_parameter_noise(parameters, scale: float, seed: int, step: int) -> int:
    """theta <- theta - scale * z, z ~ N(0, I) drawn per parameter from (seed, step), in parameter order.

    ``scale`` is lr * sigma. Handles plain tensors and DeepSpeed ZeRO-1/2/3 parameters (see the module docstring).
    Returns how many elements this process changed."""
    params = list(parameters)
    if not params or scale == 0:
        return 0
    device = _device_of(params[0])
    generator = step_generator(seed, step, device)
    changed = 0
    for p in params:
        if hasattr(p, "ds_id"):  # ZeRO-3: the full shape is ds_shape; this rank owns a flat slice of it
            z = _draw(p.ds_shape, generator, device).flatten()
            changed += _zero3_sub_(p, z, scale)
        elif hasattr(p, "_hp_mapping"):  # ZeRO-1/2: p is whole on every rank, its fp32 master copy is sliced
            z = _draw(p.shape, generator, device)
            p.data.sub_(z.to(p.dtype), alpha=scale)
            mapping = p._hp_mapping
            if mapping is not None:  # None: this rank holds no fragment of p's master copy
                frag = mapping.lp_fragment_address
                hp = mapping.get_hp_fragment()
                if not _same_memory(hp, p.data):  # an aliased master already moved with p
                    hp.data.sub_(z.flatten().narrow(0, frag.start, frag.numel).view_as(hp).to(hp.dtype), alpha=scale)
            changed += p.numel()
        else:
            z = _draw(p.shape, generator, device)
            p.data.sub_(z.to(p.dtype), alpha=scale)
            changed += p.numel()
    return changed


def _device_of(p) -> torch.device:
    if hasattr(p, "ds_tensor"):
        return p.ds_tensor.device
    return p.device


def _zero3_sub_(p, z_full: torch.Tensor, scale: float) -> int:
    from deepspeed.utils import safe_get_local_fp32_param, safe_set_local_fp32_param

    local = p.ds_tensor  # this rank's flat partition of the model's copy, padded at the end of the last rank's
    size = local.numel()
    start = p._z3_optimizer._get_param_partition_rank(p) * size  # as DeepSpeed's own set_full_hp_param slices
    z = torch.zeros(size, dtype=torch.float32, device=z_full.device)
    valid = max(0, min(size, z_full.numel() - start))  # padding past the parameter's end gets no noise
    if valid:
        z[:valid] = z_full[start : start + valid]
    master = safe_get_local_fp32_param(p)
    aliased = _same_memory(master, local)
    safe_set_local_fp32_param(p, master.float() - scale * z.to(master.device))
    if not aliased:  # an aliased model copy already moved with the master
        local.data.sub_(z.view_as(local).to(local.dtype), alpha=scale)
    whole = p.data
    if (
        getattr(p, "ds_persist", False)
        and whole.numel() == z_full.numel()
        and not _same_memory(whole, local)
        and not _same_memory(whole, master)
    ):
        # A small "persistent" parameter stays whole in ``p.data`` between steps (it is not re-gathered from the
        # partitions before the next forward), so the whole copy must move too or the next step would not see it.
        # With one process the whole copy can be the partition itself, which already moved: not twice.
        whole.sub_(z_full.view_as(whole).to(whole.dtype), alpha=scale)
    return valid


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


class _NoiseCallback(TrainerCallback):
    """After each optimizer step (under DeepSpeed: after the engine's own step), add -lr * sigma * z."""

    def __init__(self, trainer: UnlearnTrainer, sigma: float):
        self.trainer, self.sigma = trainer, sigma
        self.lr = None

    def on_step_begin(self, args, state, control, **kwargs):
        # The learning rate this step uses, read before it runs: under DeepSpeed the engine steps the scheduler
        # inside its own step, so by ``on_optimizer_step`` the optimizer already holds the next step's rate.
        self.lr = _current_lr(self.trainer)

    def on_optimizer_step(self, args, state, control, **kwargs):
        lr = self.lr if self.lr is not None else _current_lr(self.trainer)
        params = (p for p in self.trainer.model.parameters() if p.requires_grad)
        add_parameter_noise(params, lr * self.sigma, args.seed, state.global_step)


def _current_lr(trainer) -> float:
    # HF builds its parameter groups (decay / no decay) with one learning rate.
    return float(trainer.optimizer.param_groups[0]["lr"])


@register_method("ngd", config=NGDConfig, summary="GD on retain + Gaussian gradient noise")
class NGDTrainer(UnlearnTrainer):
    reads_forget = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.is_fsdp_enabled:
            raise ConfigError("method 'ngd' does not support FSDP (sharded DTensor parameters); use DeepSpeed or DDP")
        self.add_callback(_NoiseCallback(self, self.method_cfg.sigma))

    def unlearn_loss(self, model, forget, retain):
        return self.nll(model, retain)
