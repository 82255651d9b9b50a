"""Stage 1: poison a training set.

Writes ``output_dir/dataset`` (a ``datasets.DatasetDict`` with splits ``train`` = the poisoned training set,
``retain``, ``forget`` = the poisons, ``test``, and the attack's extra splits such as the backdoor's
``test_triggered``), ``manifest.json`` (attack, metric, ``attack_args``, the poison indices and their noise seeds)
and the resolved ``config.yaml``. The attack's own work is its ``poison`` hook (``llm_unlearn/attacks/``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..configs import ConfigError
from ..harness import parse_stage, run_stage, stage_parser


@dataclass
class PoisonConfig:
    """Poison a training set with one attack; write the poisoned dataset, the retain/forget splits and a manifest."""

    # The attack knobs that were flat keys here before they moved into attack_args (a config naming one is refused
    # with the new spelling).
    MOVED_KEYS = {
        k: f"attack_args.{k}" for k in ("noise_eps", "noise_scale", "trigger", "trigger_position", "target_label")
    }

    output_dir: str | None = field(default=None, metadata={"help": "where the dataset and manifest go"})
    seed: int = field(default=0, metadata={"help": "selects the poisons, their noise seeds and subsamples"})
    attack: str = field(
        default="gaussian",
        metadata={"help": "the attack: gaussian | backdoor | gradient_canceling (or one a plugin registers)"},
    )
    attack_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "the attack's own knobs, e.g. {noise_eps: 1.0, noise_scale: rms} (gaussian), {trigger: cf, "
            "trigger_position: start, target_label: positive} (backdoor); see llm_unlearn/attacks/"
        },
    )
    poison_fraction: float = field(default=0.05, metadata={"help": "poisons as a fraction of the training set"})
    # Data
    dataset_name: str = field(
        default="embedded:reviews",
        metadata={"help": "embedded:reviews, a Hub dataset id (stanfordnlp/imdb) or a save_to_disk directory"},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset config"})
    train_file: str | None = field(default=None, metadata={"help": "local .jsonl/.json/.csv/.parquet train file"})
    test_file: str | None = field(default=None, metadata={"help": "local .jsonl/.json/.csv/.parquet test file"})
    train_split: str = field(default="train", metadata={"help": "split name of the training data"})
    test_split: str = field(default="test", metadata={"help": "split name of the held-out data"})
    text_column: str = field(default="text", metadata={"help": "column holding the review"})
    label_column: str = field(default="label", metadata={"help": "column holding the label (index or name)"})
    label_names: list[str] = field(
        default_factory=lambda: ["negative", "positive"], metadata={"help": "label index -> completion word"}
    )
    prompt_template: str = field(
        default="Review: {text}\nSentiment:", metadata={"help": "prompt format; must contain {text}"}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "subsample the training split"})
    max_test_samples: int | None = field(default=None, metadata={"help": "subsample the test split"})
    embedded_n_train: int = field(default=3000, metadata={"help": "embedded:reviews training reviews"})
    embedded_n_test: int = field(default=600, metadata={"help": "embedded:reviews test reviews"})
    embedded_min_sentences: int = field(default=2, metadata={"help": "embedded:reviews sentences per review (min)"})
    embedded_max_sentences: int = field(default=3, metadata={"help": "embedded:reviews sentences per review (max)"})
    embedded_corpus_seed: int = field(
        default=0, metadata={"help": "embedded:reviews corpus seed (fixed across seeds)"}
    )

    def build_attack(self):
        """The attack with its ``attack_args`` built and validated (``llm_unlearn.attacks.build_attack``)."""
        from ..attacks import build_attack

        return build_attack(self.attack, self.attack_args, "llm")

    def validate(self) -> None:
        from ..tasks.data import EMBEDDED_REVIEWS, check_file

        attack = self.build_attack()
        if not 0.0 < self.poison_fraction < 1.0:
            raise ConfigError(f"poison_fraction must be in (0, 1), got {self.poison_fraction}")
        if len(self.label_names) < 2 or len(set(self.label_names)) != len(self.label_names):
            raise ConfigError(f"label_names must hold at least two distinct labels, got {self.label_names}")
        if any(not n.strip() or n != n.strip() for n in self.label_names):
            raise ConfigError(f"label_names must be words without surrounding spaces, got {self.label_names}")
        attack.check(self)
        try:
            self.prompt_template.format(text="x")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"prompt_template must be a format string whose only field is {{text}}: {e!r}") from e
        if "{text}" not in self.prompt_template:
            raise ConfigError("prompt_template must contain '{text}'")
        for name in ("max_train_samples", "max_test_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 or null")
        if self.embedded_n_train < 10 or self.embedded_n_test < 2:
            raise ConfigError("embedded_n_train must be >= 10 and embedded_n_test >= 2")
        if not 1 <= self.embedded_min_sentences <= self.embedded_max_sentences:
            raise ConfigError(
                "embedded_min_sentences must be >= 1 and <= embedded_max_sentences, got "
                f"{self.embedded_min_sentences} and {self.embedded_max_sentences}"
            )
        # Data files are checked here (existence, emptiness, every JSONL row) so a bad file fails before any stage.
        if self.dataset_name == EMBEDDED_REVIEWS and bool(self.train_file) != bool(self.test_file):
            raise ConfigError("train_file and test_file: set both (or neither, for the embedded dataset)")
        for key in ("train_file", "test_file"):
            if getattr(self, key):
                check_file(getattr(self, key), key, self)
        if self.dataset_name == EMBEDDED_REVIEWS and not self.train_file:
            n = min(self.embedded_n_train, self.max_train_samples or self.embedded_n_train)
            need = attack.min_poisons
            if round(self.poison_fraction * n) < need:
                raise ConfigError(
                    f"poison_fraction={self.poison_fraction} of {n} training examples gives "
                    f"{round(self.poison_fraction * n)} poisons; the {self.attack} attack needs at least {need}"
                )


def _with_prompts(rows: list[dict], cfg: PoisonConfig) -> list[dict]:
    return [{**r, "prompt": cfg.prompt_template.format(text=r["text"]), "completion": f" {r['label']}"} for r in rows]


def main(cfg: PoisonConfig, overwrite: bool = False) -> Path:
    """Run the stage through the harness (:mod:`llm_unlearn.harness`); returns ``output_dir``. A finished output of
    the same config is kept; one of another config is refused unless ``overwrite``.

    The one poison stage of every task: a config of another task (``task``, e.g. the image track's
    ``image_classification``) is poisoned by that task's ``poison``; the causal LM's is the code below."""
    from ..tasks import stage_task

    task = stage_task(cfg)
    return run_stage(cfg, _poison if task is None else task.poison, name="poison", overwrite=overwrite)


def _poison(cfg: PoisonConfig, out: Path) -> dict:
    import shutil

    import datasets

    from ..tasks.data import load_clean_splits

    attack = cfg.build_attack()
    train, test = load_clean_splits(cfg, cfg.seed)
    rng = random.Random(cfg.seed)
    try:
        rows, extra, info = attack.poison(train, test, rng, cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    for i, r in enumerate(rows):
        r["index"] = i
    test_rows = [
        {**r, "is_poison": False, "orig_label": r["label"], "noise_seed": -1, "index": i} for i, r in enumerate(test)
    ]
    splits = {
        "train": rows,
        "retain": [r for r in rows if not r["is_poison"]],
        "forget": [r for r in rows if r["is_poison"]],
        "test": test_rows,
    }
    for name, extra_rows in extra.items():
        splits[name] = [{**r, "is_poison": False, "noise_seed": -1, "index": i} for i, r in enumerate(extra_rows)]
    dd = datasets.DatasetDict({k: datasets.Dataset.from_list(_with_prompts(v, cfg)) for k, v in splits.items()})
    # save_to_disk writes many files: write to a temp dir and rename so a kill never leaves a half dataset.
    tmp = out / ".dataset.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    dd.save_to_disk(str(tmp))
    if (out / "dataset").exists():
        shutil.rmtree(out / "dataset")
    tmp.rename(out / "dataset")
    forget = splits["forget"]
    manifest = poison_manifest(
        attack,
        cfg.poison_fraction,
        len(rows),
        [r["index"] for r in forget],
        [r["noise_seed"] for r in forget],
        {"label_names": cfg.label_names},
        {k: len(v) for k, v in splits.items()},
        info,
    )
    return {"manifest.json": manifest}


def poison_manifest(attack, fraction: float, n_train: int, indices, noise_seeds, data: dict, splits: dict, info: dict):
    """``manifest.json`` of every task's poison stage: the attack (its metric, and its config as resolved, defaults
    filled: training and evaluation rebuild the attack from it), which training rows are poisons and their noise
    seeds, what the task records of its data (``data``), the split sizes and the attack's own facts (``info``)."""
    from ..configs import to_dict

    return {
        "attack": attack.name,
        "metric": attack.metric,
        "attack_args": to_dict(attack.args),
        "poison_fraction": fraction,
        "n_train": n_train,
        "n_poison": len(indices),
        "poison_indices": list(indices),
        "noise_seeds": list(noise_seeds),
        **data,
        "splits": splits,
        **info,
    }


def make_parser():
    return stage_parser(PoisonConfig, "llm-unlearn poison")


def cli(argv=None) -> None:
    cfg, overwrite = parse_stage(PoisonConfig, argv, "llm-unlearn poison")
    print(main(cfg, overwrite=overwrite))
