"""Image diagnostics: parameter-shift norms and the cosine of the unlearning update with the retrain direction
(``llm_unlearn.metrics.shift.shift_diagnostics``), written to ``diagnostics.json`` as the LLM track does."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llm_unlearn.harness import run_stage


@dataclass
class ImageDiagnoseConfig:
    """Parameter-shift diagnostics of an unlearned image model against the initial and the gold model."""

    initial_dir: str | None = field(default=None, metadata={"help": "the initial (poisoned) model"})
    retrain_dir: str | None = field(default=None, metadata={"help": "the gold model"})
    model_dir: str | None = field(default=None, metadata={"help": "the unlearned model"})
    output_dir: str | None = field(default=None, metadata={"help": "where diagnostics.json goes"})


def main(cfg: ImageDiagnoseConfig, overwrite: bool = False) -> dict:
    """Run the stage through the harness (:mod:`llm_unlearn.harness`); returns the diagnostics."""
    from llm_unlearn.files import read_json

    from ..models import check_same_arch

    return run_stage(
        cfg,
        _diagnose,
        name="image diagnose",
        required=("initial_dir", "retrain_dir", "model_dir", "output_dir"),
        check=lambda c: check_same_arch({k: getattr(c, k) for k in ("initial_dir", "retrain_dir", "model_dir")}),
        result=lambda out: read_json(out / "diagnostics.json"),
        overwrite=overwrite,
    )


def _diagnose(cfg: ImageDiagnoseConfig, out: Path) -> dict:
    from llm_unlearn.metrics.shift import shift_diagnostics

    from ..models import load_model

    def params(d):
        return {n: p.detach() for n, p in load_model(d).named_parameters()}

    res = shift_diagnostics(params(cfg.initial_dir), params(cfg.retrain_dir), params(cfg.model_dir))
    return {"diagnostics.json": res}
