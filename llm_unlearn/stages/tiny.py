"""``llm-unlearn tiny``: build the embedded tokenizer + random-init tiny Llama offline and save them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..harness import run_stage, stage_commands
from ..embedded import TinyModelConfig


@dataclass
class TinyConfig:
    """Build the embedded byte-level BPE tokenizer and tiny LlamaForCausalLM (no downloads)."""

    output_dir: str | None = field(default=None, metadata={"help": "where the model and tokenizer go"})
    seed: int = field(default=0, metadata={"help": "initialisation seed"})
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig, metadata={"help": "model shape"})


def main(cfg: TinyConfig, overwrite: bool = False) -> Path:
    """Build the model through the stage harness (:mod:`llm_unlearn.harness`); returns ``output_dir``."""
    from ..embedded import save_tiny

    def build(c: TinyConfig, out: Path) -> dict:
        save_tiny(out, c.tiny, seed=c.seed)
        return {}

    return run_stage(cfg, build, name="tiny", overwrite=overwrite)


make_parser, cli = stage_commands(TinyConfig, main, "llm-unlearn tiny")
