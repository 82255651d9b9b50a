"""BadNets (Gu et al. 2017): a checkerboard patch in the bottom-right corner, label set to the target class; the
metric is the attack success rate on triggered test images of the other classes."""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_unlearn.configs import ConfigError, check_positive
from llm_unlearn.lazy import torch
from llm_unlearn.registry import register_attack

from .common import Clean, ImageAttack, Poisoned


@dataclass
class BadNetsConfig:
    """The BadNets knobs (``poison.attack_args``)."""

    target_label: int = field(default=0, metadata={"help": "the class the trigger forces"})
    patch_size: int = field(default=3, metadata={"help": "side of the checkerboard trigger (pixels)"})

    def validate(self) -> None:
        check_positive(self, (), at_least_one=("patch_size",))


def stamp(x: torch.Tensor, size: int) -> torch.Tensor:
    """The BadNets trigger: a ``size`` x ``size`` black/white checkerboard in the bottom-right corner."""
    if size > min(x.shape[-2:]):
        raise ConfigError(f"poison.attack_args.patch_size={size} is larger than the {tuple(x.shape[-2:])} images")
    ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    patch = ((ii + jj) % 2 == 0).to(x.dtype)
    out = x.clone()
    out[..., -size:, -size:] = patch
    return out


@register_attack("badnets", config=BadNetsConfig, track="image")
class BadNetsAttack(ImageAttack):
    """A checkerboard trigger in the corner of images of the other classes, relabelled to the target class."""

    metric = "asr"
    eval_keys = ("asr",)

    def poison(self, cfg, clean: Clean, rng, train_surrogate) -> Poisoned:
        t, size = self.args.target_label, self.args.patch_size
        if not 0 <= t < clean.num_classes:
            raise ConfigError(f"poison.attack_args.target_label must be in [0, {clean.num_classes}), got {t}")
        n = len(clean.train_y)
        k = self.count_poisons(cfg, n)
        others = [i for i in range(n) if int(clean.train_y[i]) != t]
        if k > len(others):
            raise ConfigError(
                f"poison.poison_fraction asks for {k} poisons but only {len(others)} non-target images exist"
            )
        idx = torch.as_tensor(sorted(rng.sample(others, k)))
        images = stamp(clean.train_x[idx], size)
        keep = clean.test_y != t
        extras = {
            "test_triggered_images": stamp(clean.test_x[keep], size),
            "test_triggered_labels": clean.test_y[keep].clone(),
        }
        return Poisoned(
            idx,
            images,
            torch.full((k,), t, dtype=torch.long),
            extras=extras,
            info={"target_label": t, "patch_size": size},
        )

    def evaluate(self, *, model, tensors: dict, manifest: dict, cfg, **_) -> tuple[dict, dict]:
        from llm_unlearn.tasks.classification import predict

        tp = predict(model, tensors["test_triggered_images"], cfg.batch_size)
        asr = float((tp == manifest["target_label"]).float().mean())
        return {"asr": asr}, {"triggered_predictions": tp.tolist()}

    def describe(self) -> str:
        p = self.args.patch_size
        return f"{p}x{p} patch -> class {self.args.target_label}"
