"""Shared test helpers (importable from tests: pytest puts this folder on sys.path)."""

from __future__ import annotations

import dataclasses

# The test suite's tiny model: one layer, one head of 64 (vLLM's CPU backend rejects smaller heads), seconds to train.
TINY_SHAPE = {
    "hidden_size": 64,
    "num_attention_heads": 1,
    "num_hidden_layers": 1,
    "intermediate_size": 128,
    "vocab_size": 400,
    "corpus_reviews": 300,
}


def tiny_experiment(**changes) -> dict:
    """The suite's smallest whole experiment: one seed, the tiny model, 80 embedded reviews with 10 % Gaussian
    poisons, one training epoch, GD at budget 0.2, no diagnostics. ``changes`` replace top-level keys; a mapping for a
    section that is a mapping here (poison, train, unlearn, eval) updates that section's keys instead."""
    exp = {
        "seeds": [0],
        "tiny": dict(TINY_SHAPE),
        "poison": {"attack": "gaussian", "poison_fraction": 0.1, "embedded_n_train": 80, "embedded_n_test": 30},
        "train": {"num_train_epochs": 1, "per_device_train_batch_size": 16, "progress": False},
        "unlearn": {"per_device_train_batch_size": 8, "progress": False},
        "eval": {"fresh_noise_draws": 3},
        "methods": ["gd"],
        "budgets": [0.2],
        "diagnostics": False,
    }
    for key, value in changes.items():
        exp[key] = {**exp[key], **value} if isinstance(exp.get(key), dict) and isinstance(value, dict) else value
    return exp


def assert_run_refused(tmp_path, capsys, experiment: dict, flags: list[str], message: str) -> None:
    """`llm-unlearn run` on ``experiment`` with ``flags`` exits 2 with one stderr line holding ``message``, before
    writing anything."""
    import yaml

    from llm_unlearn.cli import main

    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(experiment))
    assert main(["run", "--config", str(config), "--output_dir", str(tmp_path / "o"), *flags]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "o").exists()


def make_unlearn_trainer(
    model_dir, dataset_dir, tmp_path, method, use_peft, method_args=None, budget_tokens=1e7, lr=1e-2, **overrides
):
    """A ready-to-train unlearning trainer on the tiny model, built exactly as the unlearn stage builds it, and the
    model it trains (the method's preparation and LoRA applied)."""
    from llm_unlearn.modeling import load_dataset_dir, load_model, load_tokenizer, tokenize_split
    from llm_unlearn.stages.unlearn import UnlearnConfig, build_trainer

    cfg = UnlearnConfig(
        model_dir=model_dir,
        dataset_dir=dataset_dir,
        output_dir=str(tmp_path / method),
        method=method,
        method_args=method_args or {},
        learning_rate=lr,
        per_device_train_batch_size=4,
        use_peft=use_peft,
        progress=False,
        **overrides,
    )
    dd, _ = load_dataset_dir(dataset_dir)
    tok = load_tokenizer(model_dir)
    forget = tokenize_split(dd["forget"], tok, 256)
    retain = tokenize_split(dd["retain"], tok, 256)
    trainer = build_trainer(cfg, load_model(model_dir), tok, forget, retain, budget_tokens)
    return trainer, trainer.model


# A stand-in stage for orchestrator tests: ``Job(stage="helpers", config=FakeStageConfig(...))`` runs ``main``.
@dataclasses.dataclass
class FakeStageConfig:
    output_dir: str
    value: int = 0
    log: str | None = None  # a file each run appends its output_dir to
    sleep: float = 0.0  # seconds of "work" (signal tests stop the run meanwhile)
    pid_dir: str | None = None  # a file <pid_dir>/<pid> per process that ran the stage (signal tests kill them)
    ignore_sigterm: bool = False  # a stage slow to stop: the run must still get rid of it
    fail: str | None = None  # a stage that refuses its config before work: a ConfigError with this message


def main(cfg: FakeStageConfig):
    import os
    import time
    from pathlib import Path

    from llm_unlearn.configs import save_config
    from llm_unlearn.files import mark_complete

    if cfg.fail:
        from llm_unlearn.configs import ConfigError

        raise ConfigError(cfg.fail)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    if cfg.ignore_sigterm:
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if cfg.pid_dir:
        Path(cfg.pid_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.pid_dir) / str(os.getpid())).write_text(cfg.output_dir)
    if cfg.log:
        with open(cfg.log, "a") as f:
            f.write(Path(cfg.output_dir).name + "\n")
    time.sleep(cfg.sleep)
    save_config(cfg, cfg.output_dir)
    mark_complete(cfg.output_dir)


def count_markers(root, name: str = ".complete") -> int:
    """How many files called ``name`` lie under ``root``, while a live run may be deleting directories under it.

    ``Path.rglob`` raises ``FileNotFoundError`` when a directory it is about to list (a training checkpoint being
    rotated) vanishes between the listing of its parent and its own; ``os.walk`` skips such a directory.
    """
    import os

    return sum(name in files for _, _, files in os.walk(root))
