"""The canary manifest (``canaries.json``): everything the audit needs and nothing more sensitive than the canary
examples themselves. The canaries' text, noise seeds and token ids as trained on, eps and its unit (the embedding RMS
it referred to), the tokenizer's fingerprint and the library version; never the noise, which is regenerated from the
seeds (:mod:`llm_unlearn.canaries`). Written by ``GaussianCanaries.save`` and by the train stage of a Gaussian run;
read, and checked field by field, by the audit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .configs import ConfigError

MANIFEST_FORMAT = "llm-unlearn-gaussian-canaries"
MANIFEST_VERSION = 1
NOISE_RNG = "numpy.random.default_rng([noise_seed, draw]).standard_normal((prompt_len, hidden), float32); draw 0"


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's vocabulary (token -> id, added tokens included): equal fingerprints mean the
    manifest's token ids mean the same text."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def tokenizer_record(tokenizer) -> dict:
    """The manifest's ``tokenizer`` entry: the fingerprint the audit checks, and what helps a person find it."""
    return {
        "fingerprint": tokenizer_fingerprint(tokenizer),
        "class": type(tokenizer).__name__,
        "name_or_path": str(getattr(tokenizer, "name_or_path", "") or ""),
        "vocab_size": len(tokenizer),
    }


_REQUIRED = ("format", "version", "eps", "noise_scale", "hidden_size", "tokenizer", "canaries")
_CANARY_REQUIRED = ("noise_seed", "input_ids", "prompt_len")


def build_manifest(canaries: list[dict], **fields: Any) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        **fields,
        "noise_positions": "prompt",
        "noise_rng": NOISE_RNG,
        "n_canaries": len(canaries),
        "canaries": canaries,
    }


def write_manifest(manifest: dict, path) -> Path:
    from .files import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return path


@dataclass
class Manifest:
    """A checked manifest: its fields and canaries (see :func:`load_manifest`)."""

    data: dict
    path: str | None = None

    @property
    def canaries(self) -> list[dict]:
        return self.data["canaries"]

    @property
    def fingerprint(self) -> str:
        return self.data["tokenizer"]["fingerprint"]

    def check_tokenizer(self, tokenizer) -> None:
        """One clear error when ``tokenizer`` is not the one the canaries were tokenised with."""
        got = tokenizer_fingerprint(tokenizer)
        if got != self.fingerprint:
            where = f" ({self.path})" if self.path else ""
            raise ConfigError(
                f"manifest{where}: its tokenizer fingerprint {self.fingerprint[:12]} does not match the model's "
                f"tokenizer ({got[:12]}, vocab {len(tokenizer)}): the canaries' token ids would mean other text; "
                "audit the model the canaries were trained into, with its own tokenizer"
            )


def check_manifest(data, where: str = "manifest") -> Manifest:
    """A manifest dict checked field by field; one ``ConfigError`` naming the first problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != MANIFEST_FORMAT:
        raise ConfigError(
            f"{where}: not a canary manifest (format {data.get('format')!r}, expected {MANIFEST_FORMAT!r})"
        )
    version = data.get("version")
    if not isinstance(version, int) or version > MANIFEST_VERSION or version < 1:
        raise ConfigError(
            f"{where}: manifest version {version!r} cannot be read by this llm-unlearn (reads versions 1.."
            f"{MANIFEST_VERSION}); upgrade llm-unlearn"
        )
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ConfigError(f"{where}: missing fields {missing}")
    tok = data["tokenizer"]
    if not isinstance(tok, dict) or not isinstance(tok.get("fingerprint"), str):
        raise ConfigError(f"{where}: tokenizer.fingerprint is missing")
    if not isinstance(data["hidden_size"], int) or data["hidden_size"] < 1:
        raise ConfigError(f"{where}: hidden_size must be a positive int, got {data['hidden_size']!r}")
    canaries = data["canaries"]
    if not isinstance(canaries, list) or not canaries:
        raise ConfigError(f"{where}: no canaries (an empty manifest has nothing to audit)")
    seen = set()
    for i, c in enumerate(canaries):
        if not isinstance(c, dict):
            raise ConfigError(f"{where}: canaries[{i}] must be an object")
        miss = [k for k in _CANARY_REQUIRED if k not in c]
        if miss:
            raise ConfigError(f"{where}: canaries[{i}] is missing {miss}")
        ids, plen, seed = c["input_ids"], c["prompt_len"], c["noise_seed"]
        if not (isinstance(ids, list) and ids and all(isinstance(t, int) and t >= 0 for t in ids)):
            raise ConfigError(f"{where}: canaries[{i}].input_ids must be a non-empty list of token ids")
        if not (isinstance(plen, int) and 1 <= plen <= len(ids)):
            raise ConfigError(f"{where}: canaries[{i}].prompt_len must be in [1, {len(ids)}], got {plen!r}")
        if not (isinstance(seed, int) and seed >= 0) or seed in seen:
            raise ConfigError(f"{where}: canaries[{i}].noise_seed must be a distinct int >= 0, got {seed!r}")
        seen.add(seed)
    return Manifest(data)


def load_manifest(path) -> Manifest:
    """Read and check a manifest file (one ``ConfigError`` naming the file and the problem)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"manifest: {str(p)!r} does not exist or is not a file")
    try:
        data = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"manifest: {str(p)!r} is not valid JSON ({e})") from e
    m = check_manifest(data, f"manifest {str(p)!r}")
    m.path = str(p)
    return m
