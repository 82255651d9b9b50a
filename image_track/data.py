"""Image data: the embedded digits default, CIFAR-style datasets through ``datasets`` and the poisoned dataset dir
(random crop + flip is the classification task's, ``llm_unlearn.tasks.classification.random_crop_flip``).

Pixels are float32 in [0, 1], shape (C, H, W); the model normalises them itself. A poisoned dataset dir holds
``data.safetensors`` (``train_images`` = the clean training set, ``poison_images``/``poison_labels`` = the poisons as
the victim trains on them, which replace the training rows listed in ``manifest.json`` ``poison_indices``,
``test_images``/``test_labels`` and attack extras such as ``test_triggered_images``) plus the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llm_unlearn.configs import ConfigError
from llm_unlearn.lazy import np, torch
from llm_unlearn.tasks.classification import Split

DATA_NAME = "data.safetensors"


@dataclass
class DataConfig:
    """Where the clean images come from."""

    dataset_name: str = field(
        default="embedded:digits",
        metadata={
            "help": "embedded:digits (sklearn, no download), a Hub dataset id (uoft-cs/cifar10) or a "
            "save_to_disk directory"
        },
    )
    image_column: str = field(default="img", metadata={"help": "column holding the images (PIL or arrays)"})
    label_column: str = field(default="label", metadata={"help": "column holding the integer class"})
    train_split: str = field(default="train", metadata={"help": "split name of the training data"})
    test_split: str = field(default="test", metadata={"help": "split name of the held-out data"})
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "resize (bilinear) to this side length; digits are 8x8 and more pixels make the Gaussian "
            "test more sensitive (null: keep)"
        },
    )
    test_fraction: float = field(default=0.2, metadata={"help": "embedded:digits: held-out share of the 1,797 images"})
    split_seed: int = field(default=0, metadata={"help": "embedded:digits: train/test split (fixed across seeds)"})
    max_train_samples: int | None = field(default=None, metadata={"help": "subsample the training split"})
    max_test_samples: int | None = field(default=None, metadata={"help": "subsample the test split"})

    def validate(self) -> None:
        if self.image_size is not None and self.image_size < 4:
            raise ConfigError(f"image_size must be >= 4 (pixels per side) or null, got {self.image_size}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"data.test_fraction must be in (0, 1), got {self.test_fraction}")
        for name in ("max_train_samples", "max_test_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 10:
                raise ConfigError(f"data.{name} must be >= 10 or null")


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or x.shape[-1] == size and x.shape[-2] == size:
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def _digits(cfg: DataConfig):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    y = torch.from_numpy(d.target.astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.split_seed))
    n_test = round(cfg.test_fraction * len(y))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test], 10


def _to_tensor(images) -> torch.Tensor:
    arrs = []
    for im in images:
        a = np.asarray(im.convert("RGB") if hasattr(im, "convert") else im)
        if a.ndim == 2:
            a = a[..., None]
        arrs.append(a)
    a = np.stack(arrs)  # (n, H, W, C)
    x = torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def _hub(cfg: DataConfig):
    from llm_unlearn.tasks.data import load_split

    tensors, features = [], None
    for split in (cfg.train_split, cfg.test_split):
        ds = load_split(cfg, split)
        for col in (cfg.image_column, cfg.label_column):
            if col not in ds.column_names:
                raise ConfigError(f"data: column {col!r} not in split {split!r} (has {ds.column_names})")
        tensors += [_to_tensor(ds[cfg.image_column]), torch.as_tensor(ds[cfg.label_column], dtype=torch.long)]
        features = features or ds.features
    names = getattr(features.get(cfg.label_column), "names", None)  # a ClassLabel names every class
    k = len(names) if names else int(max(tensors[1].max(), tensors[3].max())) + 1
    return (*tensors, k)


def load_clean(cfg: DataConfig, seed: int):
    """(train_x, train_y, test_x, test_y, num_classes), resized and subsampled (the subsample depends on ``seed``)."""
    xtr, ytr, xte, yte, k = _digits(cfg) if cfg.dataset_name == "embedded:digits" else _hub(cfg)
    g = torch.Generator().manual_seed(seed)
    if cfg.max_train_samples and cfg.max_train_samples < len(ytr):
        keep = torch.randperm(len(ytr), generator=g)[: cfg.max_train_samples].sort().values
        xtr, ytr = xtr[keep], ytr[keep]
    if cfg.max_test_samples and cfg.max_test_samples < len(yte):
        keep = torch.randperm(len(yte), generator=g)[: cfg.max_test_samples].sort().values
        xte, yte = xte[keep], yte[keep]
    return _resize(xtr, cfg.image_size), ytr, _resize(xte, cfg.image_size), yte, k


def channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()


def save_dataset_dir(out: Path, tensors: dict[str, torch.Tensor]) -> None:
    """``data.safetensors``; clean 8-bit images (CIFAR) are stored as uint8 where that is exact, 4x smaller on disk
    (:func:`load_dataset_dir` reads them back)."""
    from llm_unlearn.files import atomic_save_tensors

    stored = {}
    for name, t in tensors.items():
        if name in ("train_images", "test_images") and t.is_floating_point():
            u8 = (t * 255).round().clamp(0, 255).to(torch.uint8)
            if torch.equal(u8.float() / 255.0, t):
                name, t = name + "__u8", u8
        stored[name] = t
    atomic_save_tensors(stored, out / DATA_NAME)


def read_manifest(path: str | Path) -> dict:
    """The manifest of an image poison stage's output (a ConfigError if ``path`` is not one, or it does not parse)."""
    from llm_unlearn.modeling import read_manifest

    return read_manifest(str(path), data=DATA_NAME)


def load_dataset_dir(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The stored tensors (images saved as uint8, ``<name>__u8``, back to floats in [0, 1]) and the manifest."""
    from safetensors.torch import load_file

    manifest = read_manifest(path)
    stored = load_file(str(Path(path) / DATA_NAME))
    tensors = {k.removesuffix("__u8"): v.float() / 255.0 if k.endswith("__u8") else v for k, v in stored.items()}
    return tensors, manifest


def splits(tensors: dict, manifest: dict) -> dict[str, Split]:
    """``train`` (poisons substituted), ``retain``, ``forget`` (the poisons as trained) and ``test``."""
    idx = torch.as_tensor(manifest["poison_indices"], dtype=torch.long)
    x, y = tensors["train_images"].clone(), tensors["train_labels"].clone()
    x[idx], y[idx] = tensors["poison_images"], tensors["poison_labels"]
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[idx] = False
    rows = torch.arange(len(y))
    test = tensors["test_images"], tensors["test_labels"]
    return {
        "train": Split(x, y, rows),
        "retain": Split(x[keep], y[keep], rows[keep]),
        "forget": Split(x[idx], y[idx], idx),
        "test": Split(*test, torch.arange(len(test[1]))),
    }
