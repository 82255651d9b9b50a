"""Image stage 2: train the initial model (split ``train``, poisons included) or the gold model (split ``retain``)
from the same seeded initialisation. Writes ``model.safetensors`` + ``model_config.json``, ``training_info.json``
(``compute_tokens`` = examples through forward+backward: the 100 % of unlearning budgets) and ``config.yaml``.

Training is the shared trainer's (``image_track.training.train_classifier``). With ``train.save_epochs`` it saves
the Trainer's checkpoints into ``<output_dir>/trainer`` and a rerun after a kill resumes from the last one
(``resumed_from_step`` in ``training_info.json``), as the LLM track's train stage does; they are deleted once the
model is written."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llm_unlearn.harness import run_stage, stage_commands
from llm_unlearn.outputs import write_records
from llm_unlearn.training import DivergedError

from ..models import ModelConfig
from ..training import TrainSection


@dataclass
class ImageTrainConfig:
    """Train an image classifier on a split of a poisoned image dataset."""

    dataset_dir: str | None = field(default=None, metadata={"help": "output_dir of the image poison stage"})
    output_dir: str | None = field(default=None, metadata={"help": "where the model goes"})
    split: Literal["train", "retain"] = field(
        default="train", metadata={"help": "train = poisoned set (initial model); retain = gold retrain"}
    )
    seed: int = field(default=0, metadata={"help": "initialisation (shared by initial and gold) and data order"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "architecture"})
    train: TrainSection = field(default_factory=TrainSection, metadata={"help": "optimisation"})


def main(cfg: ImageTrainConfig, overwrite: bool = False) -> Path:
    """Run the stage through the harness (:mod:`llm_unlearn.harness`); returns ``output_dir``."""
    return run_stage(
        cfg, _train, name="image train", required=("dataset_dir", "output_dir"), check=_check, overwrite=overwrite
    )


def _check(cfg: ImageTrainConfig) -> None:
    from ..data import read_manifest

    check_image_splits(read_manifest(cfg.dataset_dir), cfg.train.batch_size, cfg.dataset_dir)


def check_image_splits(manifest: dict, batch_size: int, dataset_dir: str) -> None:
    """The protocol's split-size rule on a poisoned image dataset's manifest."""
    from llm_unlearn.budget import check_split_sizes

    sizes = manifest.get("splits", {})
    if "retain" in sizes and "forget" in sizes:
        check_split_sizes(
            sizes["retain"],
            sizes["forget"],
            batch_size,
            int(manifest.get("num_classes", 0)),
            where=f"dataset_dir {dataset_dir!r}: ",
        )


def _train(cfg: ImageTrainConfig, out: Path) -> dict:
    from ..data import load_dataset_dir, splits
    from ..models import build_model, save_model
    from llm_unlearn.training import remove_checkpoints

    from ..training import train_classifier

    tensors, manifest = load_dataset_dir(cfg.dataset_dir)
    data = splits(tensors, manifest)[cfg.split]
    model = build_model(
        cfg.model, manifest["image_shape"], manifest["num_classes"], manifest["mean"], manifest["std"], seed=cfg.seed
    )
    diverged, info = None, {}
    try:
        info = train_classifier(model, data.images, data.labels, cfg.train, cfg.seed, out, checkpoints=True)
    except DivergedError as e:
        diverged = e
    info = {
        "split": cfg.split,
        "n_examples": len(data),
        "steps": info.get("steps", diverged.step if diverged else None),
        "compute_tokens": info.get("compute_tokens", 0),  # examples through forward+backward (the budget unit)
        "compute_unit": "examples",
        "train_loss": info.get("train_loss", diverged.loss if diverged else None),
        "diverged": diverged is not None,
        "diverged_step": diverged.step if diverged else None,
        "wall_seconds": info.get("wall_seconds", 0.0),  # this run's (a resumed run: since it resumed)
        "resumed_from_step": info.get("resumed_from_step"),  # the checkpoint this run started from (None: scratch)
    }
    save_model(model.cpu(), out)
    remove_checkpoints(out)  # also after a divergence: the rerun trains from scratch, as without them
    if diverged is not None:  # the record without the marker: the stage is not finished
        write_records(out, cfg, {"training_info.json": info})
        raise diverged
    return {"training_info.json": info}


make_parser, cli = stage_commands(ImageTrainConfig, main, "image train")
