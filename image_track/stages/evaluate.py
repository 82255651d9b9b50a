"""Image stage 4: evaluate one classifier: clean accuracy, the attack's metric, the Gaussian Unlearning Score on
pixel gradients (gaussian), loss MIA. Writes ``eval_results.json`` (the LLM track's keys), ``per_sample.json`` and
``config.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from llm_unlearn.configs import ConfigError
from llm_unlearn.harness import run_stage, stage_commands

GUS_KEYS = ("gus_mean", "gus_std", "gus_z", "gus_p", "gus_auc", "gus_tpr_at_1pct_fpr", "fresh_gus_mean", "fresh_gus_z")


@dataclass
class ImageEvalConfig:
    """Evaluate an image classifier: utility, attack success, Gaussian Unlearning Score, loss MIA."""

    model_dir: str | None = field(default=None, metadata={"help": "a trained or unlearned model dir"})
    dataset_dir: str | None = field(default=None, metadata={"help": "output_dir of the image poison stage"})
    output_dir: str | None = field(default=None, metadata={"help": "where eval_results.json goes"})
    batch_size: int = field(default=512, metadata={"help": "inference batch size"})
    gus_batch_size: int = field(default=256, metadata={"help": "poisons per input-gradient backward pass"})
    fresh_noise_draws: int = field(default=10, metadata={"help": "fresh (never trained) noises per poison"})

    def validate(self) -> None:
        for name in ("batch_size", "gus_batch_size", "fresh_noise_draws"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


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

    from ..attacks import batch_pixel_noise
    from ..training import device

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


def compute_metrics(cfg: ImageEvalConfig, model, tensors: dict, manifest: dict) -> tuple[dict, dict]:
    from llm_unlearn.metrics import gus_summary, loss_mia

    from ..data import splits
    from ..training import per_example_loss, predict

    data = splits(tensors, manifest)
    test = data["test"]
    preds = predict(model, test.images, cfg.batch_size)
    metrics = {"clean_accuracy": float((preds == test.labels).float().mean())}
    per_sample: dict = {"test_predictions": preds.tolist()}
    metrics["asr"] = None
    if "test_triggered_images" in tensors:
        tp = predict(model, tensors["test_triggered_images"], cfg.batch_size)
        metrics["asr"] = float((tp == manifest["target_label"]).float().mean())
        per_sample["triggered_predictions"] = tp.tolist()
    metrics["poison_success"] = None
    if "target_images" in tensors:
        tp = predict(model, tensors["target_images"], cfg.batch_size)
        metrics["poison_success"] = float((tp == tensors["target_adv_labels"]).float().mean())
        per_sample["target_predictions"] = tp.tolist()
    if manifest["attack"] == "gaussian":
        idx = torch.as_tensor(manifest["poison_indices"])
        poison, fresh = gus_scores(
            model,
            tensors["train_images"][idx],
            tensors["train_labels"][idx],
            manifest["noise_seeds"],
            cfg.gus_batch_size,
            cfg.fresh_noise_draws,
        )
        metrics.update(gus_summary(poison, fresh))
        per_sample.update(gus_poison=poison, gus_fresh=fresh)
    else:
        metrics.update(dict.fromkeys(GUS_KEYS))
    forget = data["forget"]
    forget_loss = per_example_loss(model, forget.images, forget.labels, cfg.batch_size)
    test_loss = per_example_loss(model, test.images, test.labels, cfg.batch_size)
    metrics.update(loss_mia(forget_loss.tolist(), test_loss.tolist()))
    metrics["test_loss"] = float(test_loss.mean())
    metrics["forget_loss"] = float(forget_loss.mean())
    per_sample.update(forget_loss=forget_loss.tolist(), test_loss=test_loss.tolist())
    return metrics, per_sample


def main(cfg: ImageEvalConfig, overwrite: bool = False) -> Path:
    """Run the stage through the harness (:mod:`llm_unlearn.harness`); returns ``output_dir``."""
    return run_stage(
        cfg,
        _evaluate,
        name="image eval",
        required=("model_dir", "dataset_dir", "output_dir"),
        check=_check,
        overwrite=overwrite,
    )


def _check(cfg: ImageEvalConfig) -> None:
    from ..data import read_manifest
    from ..models import check_model_dir

    check_model_dir(cfg.model_dir)
    read_manifest(cfg.dataset_dir)


def _evaluate(cfg: ImageEvalConfig, out: Path) -> dict:
    import time

    from ..data import load_dataset_dir
    from ..models import load_model

    start = time.perf_counter()
    tensors, manifest = load_dataset_dir(cfg.dataset_dir)
    metrics, per_sample = compute_metrics(cfg, load_model(cfg.model_dir), tensors, manifest)
    metrics["eval_seconds"] = time.perf_counter() - start
    return {"per_sample.json": per_sample, "eval_results.json": metrics}


make_parser, cli = stage_commands(ImageEvalConfig, main, "image eval")
