"""Image diagnostics: parameter-shift norms and the cosine of the unlearning update with the retrain direction
(``llm_unlearn.metrics.shift.shift_diagnostics``), written to ``diagnostics.json`` as the LLM track does."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llm_unlearn.configs import ConfigError
from llm_unlearn.utils import finish_stage, is_complete


@dataclass
class ImageDiagnoseConfig:
    """Parameter-shift diagnostics of an unlearned image model against the initial and the gold model."""

    initial_dir: str | None = field(default=None, metadata={"help": "the initial (poisoned) model"})
    retrain_dir: str | None = field(default=None, metadata={"help": "the gold model"})
    model_dir: str | None = field(default=None, metadata={"help": "the unlearned model"})
    output_dir: str | None = field(default=None, metadata={"help": "where diagnostics.json goes"})


def main(cfg: ImageDiagnoseConfig) -> dict:
    from llm_unlearn.metrics.shift import shift_diagnostics
    from llm_unlearn.utils import read_json

    from ..models import load_model

    for key in ("initial_dir", "retrain_dir", "model_dir", "output_dir"):
        if getattr(cfg, key) is None:
            raise ConfigError(f"{key} is required")
    out = Path(cfg.output_dir)
    if is_complete(out):
        return read_json(out / "diagnostics.json")

    def params(d):
        return {n: p.detach() for n, p in load_model(d).named_parameters()}

    res = shift_diagnostics(params(cfg.initial_dir), params(cfg.retrain_dir), params(cfg.model_dir))
    finish_stage(out, cfg, {"diagnostics.json": res})
    return res
