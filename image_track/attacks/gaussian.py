"""Gaussian poisoning of images: x + xi, xi ~ N(0, eps^2 I), labels unchanged; xi is regenerable from the poison's
``noise_seed``, so the audit (the Gaussian Unlearning Score on pixel gradients) needs only the seeds."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llm_unlearn.attacks.gaussian import GUS_KEYS, GaussianAttack
from llm_unlearn.canaries import prompt_noise
from llm_unlearn.configs import check_positive
from llm_unlearn.lazy import F, torch
from llm_unlearn.registry import register_attack

from .common import Clean, ImageAttack, Poisoned


@dataclass
class ImageGaussianConfig:
    """The image Gaussian attack's knobs (``poison.attack_args``)."""

    noise_eps: float = field(default=0.5, metadata={"help": "noise std in pixel units (pixels in [0, 1])"})

    def validate(self) -> None:
        check_positive(self, ("noise_eps",))


def pixel_noise(noise_seed: int, shape, draw: int = 0) -> torch.Tensor:
    """Unit-variance noise of one poison: draw 0 is the training noise (times eps), draws >= 1 are fresh noises; the
    LLM track's independent stream per (noise_seed, draw) (``prompt_noise``), in the image's shape."""
    return prompt_noise(noise_seed, shape[0], math.prod(shape[1:]), 1.0, draw).view(tuple(shape))


def batch_pixel_noise(noise_seeds, shape, draw: int = 0) -> torch.Tensor:
    return torch.stack([pixel_noise(s, shape, draw) for s in noise_seeds])


def gus_loss_fn(model, labels: torch.Tensor):
    """The audit's per-poison loss as a function of the images ``(n, C, H, W) -> (n,)``: the per-example
    cross-entropy of ``labels`` (the model in eval mode, so each loss depends on its own image only)."""
    return lambda z: F.cross_entropy(model(pixel_values=z).logits.float(), labels, reduction="none")


def gus_scores(
    model, clean_x: torch.Tensor, labels: torch.Tensor, noise_seeds: list[int], batch_size: int, draws: int
):
    """I_z of every poison under its training noise (draw 0) and ``draws`` fresh noises, from the input gradients of
    the per-example cross-entropy at the *clean* images (one backward pass per batch). Unit noise: I_z does not
    depend on eps. Autograd is asked for the pixel gradient only: the convolutions' backward computes no weight
    gradient (checked by profiling: one ``convolution_backward`` per conv, as costly as its forward)."""
    from llm_unlearn.metrics import input_gradients, scores_from_gradients
    from llm_unlearn.tasks.classification import device

    dev = device()
    model.to(dev).eval()
    shape = clean_x.shape[1:]
    poison, fresh = [], []
    for i in range(0, len(labels), batch_size):
        x, y = clean_x[i : i + batch_size].to(dev), labels[i : i + batch_size].to(dev)
        seeds = noise_seeds[i : i + batch_size]
        grads = input_gradients(gus_loss_fn(model, y), x).cpu()
        poison += scores_from_gradients(grads, batch_pixel_noise(seeds, shape, 0), 1.0).tolist()
        noise = torch.stack([batch_pixel_noise(seeds, shape, d) for d in range(1, draws + 1)])
        fresh.append(scores_from_gradients(grads, noise, 1.0))
    return poison, torch.cat(fresh, dim=1).tolist()


@register_attack("gaussian", config=ImageGaussianConfig, track="image")
class ImageGaussianAttack(ImageAttack):
    """Gaussian pixel noise on random training images, labels unchanged (the paper's audit tool)."""

    metric = "gus_mean"
    eval_keys = GUS_KEYS
    report_columns = GaussianAttack.report_columns  # the same audit as the LLM track's, the same table
    gus_audit = True
    min_poisons = 2

    def poison(self, cfg, clean: Clean, rng, train_surrogate) -> Poisoned:
        n = len(clean.train_y)
        k = self.count_poisons(cfg, n)
        idx = torch.as_tensor(sorted(rng.sample(range(n), k)))
        seeds = [rng.randrange(2**31) for _ in range(k)]
        shape = clean.train_x.shape[1:]
        # No clipping to [0, 1]: the audit's I_z assumes exactly x + xi with Gaussian xi.
        images = clean.train_x[idx] + self.args.noise_eps * batch_pixel_noise(seeds, shape)
        return Poisoned(
            idx,
            images,
            clean.train_y[idx].clone(),
            seeds,
            info={"noise_eps": self.args.noise_eps, "noise_scale": "absolute (pixels in [0, 1])"},
        )

    def evaluate(self, *, model, tensors: dict, manifest: dict, cfg, **_) -> tuple[dict, dict]:
        from llm_unlearn.metrics import gus_summary

        idx = torch.as_tensor(manifest["poison_indices"])
        poison, fresh = gus_scores(
            model,
            tensors["train_images"][idx],
            tensors["train_labels"][idx],
            manifest["noise_seeds"],
            cfg.gus_batch_size,
            cfg.fresh_noise_draws,
        )
        return gus_summary(poison, fresh), {"gus_poison": poison, "gus_fresh": fresh}

    def describe(self) -> str:
        return f"Gaussian pixel noise, eps {self.args.noise_eps:g} on pixels in [0, 1]"
