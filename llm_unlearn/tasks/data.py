"""Loading the clean classification data: the embedded synthetic reviews, a Hub dataset, or local files.

Rows come out as ``{"text": str, "label": str}`` with ``label`` one of ``label_names``; every row is validated so a
bad dataset fails before any training starts, with the split and row number in the message.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..configs import ConfigError

EMBEDDED_REVIEWS = "embedded:reviews"
LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_split(cfg, split: str):
    """A ``datasets.Dataset`` for one split of ``cfg.dataset_name``: a Hub dataset (``dataset_config_name``, if the
    config has one) or a ``save_to_disk`` dir (both tracks' data sources)."""
    import datasets

    name = cfg.dataset_name
    path = Path(name)
    if path.is_dir() and (path / "dataset_dict.json").exists():
        dd = datasets.load_from_disk(str(path))
        if split not in dd:
            raise ConfigError(f"dataset_name {name!r} has no split {split!r}; it has {sorted(dd)}")
        return dd[split]
    if path.suffix in LOCAL_SUFFIXES or os.sep in name and path.exists():
        raise ConfigError(
            f"dataset_name {name!r}: a local dataset must be a datasets.save_to_disk directory; for files use "
            "train_file/test_file"
        )
    try:
        return datasets.load_dataset(name, getattr(cfg, "dataset_config_name", None), split=split)
    except Exception as e:  # the Hub client raises many types (offline, missing split, auth): report them as one
        raise ConfigError(f"could not load split {split!r} of dataset_name {name!r}: {e}") from e


def check_file(path_str: str, key: str, cfg=None) -> Path:
    """Cheap pre-flight checks of a local data file (exists, known suffix, not empty; JSONL rows parsed and their
    columns and labels checked against ``cfg``), so a bad file fails before any stage starts."""
    path = Path(path_str)
    if path.is_dir():
        raise ConfigError(f"{key}: {path_str!r} is a directory; give a .jsonl/.json/.csv/.parquet file")
    if not path.is_file():
        raise ConfigError(f"{key}: file {path_str!r} does not exist")
    if path.suffix not in LOCAL_SUFFIXES:
        raise ConfigError(f"{key}: {path_str!r} has suffix {path.suffix!r}; allowed: {sorted(LOCAL_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise ConfigError(f"{key}: file {path_str!r} is empty")
    if path.suffix == ".jsonl":
        _check_jsonl(path, key, cfg)
    return path


def _load_file(path_str: str, key: str, cfg=None):
    import datasets

    path = check_file(path_str, key, cfg)
    try:
        return datasets.load_dataset(LOCAL_SUFFIXES[path.suffix], data_files=str(path), split="train")
    except Exception as e:
        raise ConfigError(f"{key}: could not read {path_str!r}: {e}") from e


def _check_jsonl(path: Path, key: str, cfg=None) -> None:
    import json

    n = 0
    with path.open(encoding="utf-8", errors="strict") as f:
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{key}: {str(path)!r} line {lineno} is not valid JSON ({e.msg})") from e
                if not isinstance(obj, dict):
                    raise ConfigError(f"{key}: {str(path)!r} line {lineno} must be a JSON object, got {obj!r}")
                if cfg is not None:
                    # Both the file line (for an editor) and the row index (what later stages and manifests count).
                    where = f"{key}: {str(path)!r} line {lineno}, {key.removesuffix('_file')} row {n}"
                    for col in (cfg.text_column, cfg.label_column):
                        if col not in obj:
                            raise ConfigError(f"{where} has no {col!r} field; it has {sorted(obj)}")
                    _label_name(obj[cfg.label_column], cfg, where)
                    _check_text(obj[cfg.text_column], cfg, where)
                n += 1
        except UnicodeDecodeError as e:
            raise ConfigError(f"{key}: {str(path)!r} is not UTF-8 text ({e.reason})") from e
    if n == 0:
        raise ConfigError(f"{key}: file {str(path)!r} holds no rows")


def _label_name(label, cfg, where: str) -> str:
    """The label name of a row's label (an index into ``label_names`` or one of them); anything else is an error."""
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise ConfigError(f"{where}: label {label!r} must be an int index or one of {cfg.label_names}")
    if isinstance(label, int):
        if not 0 <= label < len(cfg.label_names):
            raise ConfigError(
                f"{where}: label {label} is outside 0..{len(cfg.label_names) - 1} (label_names={cfg.label_names})"
            )
        return cfg.label_names[label]
    if label not in cfg.label_names:
        raise ConfigError(f"{where}: label {label!r} is not in label_names={cfg.label_names}")
    return label


def _check_text(text, cfg, where: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: {cfg.text_column!r} must be a non-empty string, got {text!r}")


def _rows(ds, cfg, split: str) -> list[dict]:
    for col in (cfg.text_column, cfg.label_column):
        if col not in ds.column_names:
            raise ConfigError(f"{split} split has no column {col!r}; its columns are {ds.column_names}")
    rows = []
    for i, (text, label) in enumerate(zip(ds[cfg.text_column], ds[cfg.label_column])):
        label = _label_name(label, cfg, f"{split} row {i}")
        _check_text(text, cfg, f"{split} row {i}")
        rows.append({"text": text, "label": label})
    if not rows:
        raise ConfigError(f"{split} split is empty")
    return rows


def load_clean_splits(cfg, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, test) rows for the poison stage; ``max_*_samples`` subsample deterministically by ``seed``."""
    import random

    if cfg.dataset_name == EMBEDDED_REVIEWS and not (cfg.train_file or cfg.test_file):
        from .reviews import embedded_reviews

        splits = embedded_reviews(
            cfg.embedded_n_train,
            cfg.embedded_n_test,
            seed=cfg.embedded_corpus_seed,
            min_sentences=cfg.embedded_min_sentences,
            max_sentences=cfg.embedded_max_sentences,
        )
        train, test = splits["train"], splits["test"]
    else:
        load = {"train": (cfg.train_file, cfg.train_split), "test": (cfg.test_file, cfg.test_split)}
        train_ds, test_ds = (
            _load_file(file, f"{name}_file", cfg) if file else load_split(cfg, split)
            for name, (file, split) in load.items()
        )
        train, test = _rows(train_ds, cfg, "train"), _rows(test_ds, cfg, "test")
    rng = random.Random(seed)
    if cfg.max_train_samples and cfg.max_train_samples < len(train):
        train = rng.sample(train, cfg.max_train_samples)
    if cfg.max_test_samples and cfg.max_test_samples < len(test):
        test = rng.sample(test, cfg.max_test_samples)
    return train, test
