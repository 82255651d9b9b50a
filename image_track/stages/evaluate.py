"""Image stage 4: evaluate one classifier: clean accuracy, the attack's metrics from its ``evaluate`` hook
(``image_track/attacks/``: ASR, poison success, the Gaussian Unlearning Score on pixel gradients), loss MIA. Writes
``eval_results.json`` (the LLM track's keys), ``per_sample.json`` and ``config.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llm_unlearn.configs import ConfigError
from llm_unlearn.harness import run_stage, stage_commands

from ..attacks.gaussian import GUS_KEYS, gus_loss_fn, gus_scores  # noqa: F401  (imported from here)


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


def compute_metrics(cfg: ImageEvalConfig, model, tensors: dict, manifest: dict) -> tuple[dict, dict]:
    from llm_unlearn.attacks import attack_from_manifest, eval_keys
    from llm_unlearn.metrics import loss_mia

    from ..data import splits
    from ..training import per_example_loss, predict

    data = splits(tensors, manifest)
    test = data["test"]
    preds = predict(model, test.images, cfg.batch_size)
    metrics = {"clean_accuracy": float((preds == test.labels).float().mean())}
    per_sample: dict = {"test_predictions": preds.tolist()}
    # Every image attack's keys (null here), then this attack's metrics (c): results of all attacks share one schema.
    metrics.update(dict.fromkeys(eval_keys("image")))
    attack_metrics, attack_samples = attack_from_manifest(manifest, "image").evaluate(
        model=model, tensors=tensors, manifest=manifest, cfg=cfg
    )
    metrics.update(attack_metrics)
    per_sample.update(attack_samples)
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
