"""``llm-unlearn audit``: is anything left of the canaries in this model? Any causal LM in HF format (a local dir, or
a Hub id for users who are online; safetensors only, no remote code unless asked), a PEFT adapter on top, weights
saved in float32, bfloat16 or float16 (the audit computes in float32, its scores in float64).

Writes ``audit.json`` (verdict, GUS statistics, per-canary scores), ``audit.md`` and ``audit_hist.png`` through
the stage harness (checks before any write, a lock, ``config.yaml`` and ``.complete`` last). Exit code 0 whatever
the verdict; with ``--fail_on_residual``, 1 when the verdict is ``residual`` (for CI gates); 2 for bad input.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..configs import ConfigError
from ..harness import parse_stage, run_stage, stage_parser

logger = logging.getLogger(__name__)
PROG = "llm-unlearn audit"


@dataclass
class AuditConfig:
    """Audit a model for what is left of the Gaussian canaries of a manifest (and, optionally, of a backdoor)."""

    model_dir: str | None = field(default=None, metadata={"help": "the model to audit: a HF dir or Hub id"})
    adapter_dir: str | None = field(default=None, metadata={"help": "a PEFT adapter on top of model_dir"})
    manifest: str | None = field(
        default=None, metadata={"help": "canaries.json (GaussianCanaries.save, or a run's poison stage)"}
    )
    reference_dir: str | None = field(
        default=None, metadata={"help": "the gold model (retrained without the canaries), to compare against"}
    )
    reference_adapter_dir: str | None = field(default=None, metadata={"help": "a PEFT adapter on reference_dir"})
    output_dir: str | None = field(default=None, metadata={"help": "where audit.json, audit.md, the plot go"})
    fail_on_residual: bool = field(default=False, metadata={"help": "exit 1 when the verdict is residual (CI)"})
    alpha: float = field(default=0.01, metadata={"help": "significance level of the residual test"})
    fresh_draws: int = field(default=10, metadata={"help": "fresh (never trained) noises per canary: the control"})
    batch_size: int = field(default=32, metadata={"help": "canaries per input-gradient backward pass"})
    trigger: str | None = field(default=None, metadata={"help": "backdoor check: the trigger phrase"})
    target_label: str | None = field(default=None, metadata={"help": "backdoor check: the label it forces"})
    test_file: str | None = field(
        default=None, metadata={"help": "backdoor check: JSONL test rows (prompt + completion, or text + label)"}
    )
    trigger_position: Literal["start", "end", "random"] = field(
        default="start", metadata={"help": "where the trigger goes in a test input"}
    )
    prompt_format: str = field(
        default="Review: {text}\nSentiment:", metadata={"help": "prompt of text + label test rows; has {text}"}
    )
    max_new_tokens: int = field(default=3, metadata={"help": "tokens generated per test prompt"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the Hub"})

    def validate(self) -> None:
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {self.alpha}")
        for name in ("fresh_draws", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        backdoor = [self.trigger, self.target_label, self.test_file]
        if any(v is not None for v in backdoor) and not all(v is not None for v in backdoor):
            raise ConfigError("the backdoor check needs --trigger, --target_label and --test_file together")
        if "{text}" not in self.prompt_format:
            raise ConfigError(f"prompt_format must contain {{text}}, got {self.prompt_format!r}")
        if self.reference_adapter_dir and not self.reference_dir:
            raise ConfigError("reference_adapter_dir needs reference_dir (the base model it sits on)")


def _check_model(path: str | None, key: str, adapter: str | None, adapter_key: str) -> None:
    from ..modeling import check_model_path

    if path is None:
        hint = ""
        if adapter and (Path(adapter) / "adapter_config.json").is_file():
            try:
                base = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("base_model_name_or_path")
            except (json.JSONDecodeError, OSError):
                base = None
            hint = f" (its adapter_config.json names base_model_name_or_path={base!r})" if base else ""
        raise ConfigError(f"{key} is required: the base model the adapter sits on{hint}")
    p = Path(path)
    if p.is_dir() and (p / "adapter_config.json").is_file() and not (p / "config.json").is_file():
        raise ConfigError(
            f"{key}: {path!r} holds a PEFT adapter, not a model: pass its base model as --{key} and this dir as "
            f"--{adapter_key}"
        )
    check_model_path(path, key)
    if adapter:
        a = Path(adapter)
        if not (a / "adapter_config.json").is_file():
            raise ConfigError(f"{adapter_key}: {adapter!r} holds no adapter_config.json (not a PEFT adapter)")
        if not (a / "adapter_model.safetensors").is_file():
            pickled = (a / "adapter_model.bin").is_file()
            raise ConfigError(
                f"{adapter_key}: {adapter!r} holds "
                + ("only pickle weights (adapter_model.bin); refusing to unpickle them" if pickled else "no weights")
                + " (adapter_model.safetensors)"
            )


def read_test_rows(path: str) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"test_file: {path!r} does not exist or is not a file")
    rows = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"test_file: {path}:{i} is not JSON ({e.msg})") from e
        ok = isinstance(row, dict) and ({"prompt", "completion"} <= row.keys() or {"text", "label"} <= row.keys())
        if not ok:
            raise ConfigError(f"test_file: {path}:{i} needs prompt and completion, or text and label")
        rows.append(row)
    if not rows:
        raise ConfigError(f"test_file: {path!r} holds no rows")
    return rows


def _check(cfg: AuditConfig) -> None:
    """Everything that can be wrong with the input, before anything is written: the manifest, the model dirs, the
    tokenizers against the manifest's fingerprint, the test rows."""
    from ..canary_manifest import load_manifest
    from ..modeling import load_tokenizer

    manifest = load_manifest(cfg.manifest)
    _check_model(cfg.model_dir, "model_dir", cfg.adapter_dir, "adapter_dir")
    manifest.check_tokenizer(load_tokenizer(cfg.model_dir, cfg.trust_remote_code))
    if cfg.reference_dir:
        _check_model(cfg.reference_dir, "reference_dir", cfg.reference_adapter_dir, "reference_adapter_dir")
        manifest.check_tokenizer(load_tokenizer(cfg.reference_dir, cfg.trust_remote_code))
    if cfg.test_file:
        rows = read_test_rows(cfg.test_file)
        if not any(str(r.get("completion", r.get("label"))).strip() != cfg.target_label for r in rows):
            raise ConfigError(f"test_file: no row has a label other than target_label {cfg.target_label!r}")


def load_audited(model_dir: str, adapter_dir: str | None = None, trust_remote_code: bool = False):
    """The model in float32 (bf16/fp16 checkpoints are upcast: the input gradient the score reads needs it), an
    adapter merged on top, in eval mode on the accelerator when there is one."""
    import torch

    from ..modeling import load_model

    model = load_model(model_dir, "float32", trust_remote_code)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def _audit(cfg: AuditConfig, out: Path) -> dict:
    from .. import __version__
    from ..auditing import audit, write_audit
    from ..canary_manifest import load_manifest
    from ..modeling import load_tokenizer

    manifest = load_manifest(cfg.manifest)
    tokenizer = load_tokenizer(cfg.model_dir, cfg.trust_remote_code)
    model = load_audited(cfg.model_dir, cfg.adapter_dir, cfg.trust_remote_code)
    reference = None
    if cfg.reference_dir:
        reference = load_audited(cfg.reference_dir, cfg.reference_adapter_dir, cfg.trust_remote_code)
    result = audit(
        model,
        tokenizer,
        manifest,
        reference_model=reference,
        fresh_draws=cfg.fresh_draws,
        batch_size=cfg.batch_size,
        alpha=cfg.alpha,
        trigger=cfg.trigger,
        target_label=cfg.target_label,
        test_rows=read_test_rows(cfg.test_file) if cfg.test_file else None,
        trigger_position=cfg.trigger_position,
        prompt_format=cfg.prompt_format,
        max_new_tokens=cfg.max_new_tokens,
    )
    out.mkdir(parents=True, exist_ok=True)
    record = write_audit(
        result, out, title=f"Audit of {cfg.model_dir}" + (f" + {cfg.adapter_dir}" if cfg.adapter_dir else "")
    )
    record.update(model_dir=cfg.model_dir, adapter_dir=cfg.adapter_dir, manifest=cfg.manifest, version=__version__)
    return {"audit.json": record}


def main(cfg: AuditConfig, overwrite: bool = False) -> dict:
    """Run the audit through the harness; returns the ``audit.json`` record (also when a finished one is kept)."""
    if cfg.model_dir is None:  # before the harness's "required" check: say what the adapter's base is
        _check_model(None, "model_dir", cfg.adapter_dir, "adapter_dir")
    return run_stage(
        cfg,
        _audit,
        name="audit",
        required=("manifest", "output_dir"),
        check=_check,
        overwrite=overwrite,
        result=lambda out: json.loads((out / "audit.json").read_text()),
    )


def make_parser():
    return stage_parser(AuditConfig, PROG)


def cli(argv=None) -> int:
    cfg, overwrite = parse_stage(AuditConfig, argv, PROG)
    record = main(cfg, overwrite=overwrite)
    print(f"{record['verdict']}: {record['reason']} -> {Path(cfg.output_dir) / 'audit.json'}")
    return 1 if cfg.fail_on_residual and record["verdict"] == "residual" else 0
