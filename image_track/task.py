"""The image classification task for the shared stages (registered as the ``image_classification`` entry point of
``llm_unlearn.tasks``): what ``llm_unlearn.stages.evaluate`` and ``llm_unlearn.stages.diagnose`` ask of an image
model and its data. Its batch-level quantities (loss, cost, log-probs, logits, blocks) are the generic
``llm_unlearn.tasks.classification.ClassificationTask`` the methods use.

Evaluation: clean accuracy, the attack's metrics from its ``evaluate`` hook (``image_track/attacks/``: ASR, poison
success, the Gaussian Unlearning Score on pixel gradients), loss MIA; ``eval_results.json`` has the LLM track's keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from llm_unlearn.configs import ConfigError


@dataclass
class ImageEvalConfig:
    """Evaluate an image classifier: utility, attack success, Gaussian Unlearning Score, loss MIA."""

    task: ClassVar[str] = "image_classification"  # the shared evaluate stage hands this config to ImageTask

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

    from .data import splits
    from .training import per_example_loss, predict

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


class ImageTask:
    """The stage-level seam of image classifiers: model I/O and checks, and evaluation."""

    name = "image_classification"

    def load_model(self, model_dir: str, cfg=None):
        from .models import load_model

        return load_model(model_dir)

    def check_models(self, dirs: dict[str, str | None]) -> None:
        """Model dirs that must exist and share one architecture (their parameters are compared or swapped)."""
        from .models import check_model_dir, check_same_arch

        for key, d in dirs.items():
            if d is not None:
                check_model_dir(d, key)
        check_same_arch(dirs)

    def check_eval(self, cfg: ImageEvalConfig) -> None:
        from .data import read_manifest

        self.check_models({"model_dir": cfg.model_dir})
        read_manifest(cfg.dataset_dir)

    def evaluate(self, cfg: ImageEvalConfig, out: Path) -> dict:
        import time

        from .data import load_dataset_dir

        start = time.perf_counter()
        tensors, manifest = load_dataset_dir(cfg.dataset_dir)
        metrics, per_sample = compute_metrics(cfg, self.load_model(cfg.model_dir), tensors, manifest)
        metrics["eval_seconds"] = time.perf_counter() - start
        return {"per_sample.json": per_sample, "eval_results.json": metrics}


TASK = ImageTask()
