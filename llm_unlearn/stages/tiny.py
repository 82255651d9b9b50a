"""``llm-unlearn tiny``: build the embedded tokenizer + random-init tiny Llama offline and save them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..configs import ConfigError, parse_config
from ..testing import TinyModelConfig


@dataclass
class TinyConfig:
    """Build the embedded byte-level BPE tokenizer and tiny LlamaForCausalLM (no downloads)."""

    output_dir: str | None = field(default=None, metadata={"help": "where the model and tokenizer go"})
    seed: int = field(default=0, metadata={"help": "initialisation seed"})
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig, metadata={"help": "model shape"})


def main(cfg: TinyConfig) -> Path:
    from ..configs import save_config
    from ..testing import save_tiny
    from ..utils import mark_complete

    if cfg.output_dir is None:
        raise ConfigError("output_dir is required")
    out = save_tiny(cfg.output_dir, cfg.tiny, seed=cfg.seed)
    save_config(cfg, out, name="tiny_config.yaml")
    mark_complete(out)
    return out


def make_parser():
    from ..configs import make_parser as _mp

    return _mp(TinyConfig, prog="llm-unlearn tiny")


def cli(argv=None) -> None:
    print(main(parse_config(TinyConfig, argv, prog="llm-unlearn tiny")))
