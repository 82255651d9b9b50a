"""``llm-unlearn push``: upload one model of a run (adapter or full model, safetensors), its tokenizer, results and a
model card to the Hugging Face Hub. ``--dry_run true`` writes the exact folder that would be uploaded and stops.

The token is whatever ``huggingface_hub`` finds (``HF_TOKEN`` or ``hf auth login``); it is never printed or written.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..configs import ConfigError
from ..flags import parse_config

logger = logging.getLogger(__name__)


@dataclass
class PushConfig:
    """Push a model of a run to the Hub with a model card (model-index of the measured metrics)."""

    folder: str | None = field(
        default=None,
        metadata={"help": "a model dir of a run: RUN/seed_<s>/unlearn/<variant>, RUN/seed_<s>/initial or .../retrain"},
    )
    repo_id: str | None = field(default=None, metadata={"help": "the Hub repo, ORG/NAME (created if missing)"})
    private: bool = field(default=False, metadata={"help": "create the repo as private"})
    dry_run: bool = field(default=False, metadata={"help": "write the folder that would be uploaded; no network"})
    staging_dir: str | None = field(
        default=None,
        metadata={
            "help": "where the upload folder is written (must not exist unless overwrite); default: "
            "hub_staging/<ORG>__<NAME> for a dry run, a temporary dir (deleted after upload) otherwise"
        },
    )
    base_repo_id: str | None = field(
        default=None,
        metadata={"help": "adapters: the Hub repo of the run's initial model they sit on (card + adapter_config)"},
    )
    commit_message: str = field(default="Upload with llm-unlearn push", metadata={"help": "Hub commit message"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing staging_dir"})

    def validate(self) -> None:
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        for key in ("folder", "repo_id"):
            if not getattr(self, key):
                raise ConfigError(f"{key} is required")
        for key in ("repo_id", "base_repo_id"):
            value = getattr(self, key)
            if value is None:
                continue
            try:
                validate_repo_id(value)
            except HFValidationError as e:
                raise ConfigError(f"{key}: {value!r} is not a valid Hub repo id (ORG/NAME): {e}") from e


def _staging(cfg: PushConfig) -> Path:
    if cfg.staging_dir:
        dest = Path(cfg.staging_dir)
    else:
        dest = Path("hub_staging") / cfg.repo_id.replace("/", "__")
    if dest.exists():
        if not cfg.overwrite:
            raise ConfigError(f"staging_dir: {str(dest)!r} exists; choose another or pass --overwrite true")
        if not dest.is_dir() or (any(dest.iterdir()) and not (dest / "README.md").is_file()):
            raise ConfigError(f"staging_dir: {str(dest)!r} does not look like a staging dir; refusing to replace it")
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest


def check_token() -> None:
    from huggingface_hub import get_token

    if get_token() is None:  # presence only: the token itself is never read into anything we print or write
        raise ConfigError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry_run true)")


def upload(folder: Path, repo_id: str, private: bool, commit_message: str) -> str:
    """Create the repo (if missing) and upload ``folder``; returns the commit URL. The only network step."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    check_token()
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=commit_message
        )
    except OfflineModeIsEnabled as e:
        raise ConfigError("HF_HUB_OFFLINE is set: unset it to push, or use --dry_run true") from e
    return str(getattr(info, "commit_url", info))


def main(cfg: PushConfig) -> Path | str:
    """Stage (and unless ``dry_run``, upload) the folder; returns the staging dir (dry run) or the commit URL."""
    from ..hub import locate, stage

    cfg.validate()
    info = locate(cfg.folder)  # every check before anything is written
    if not cfg.dry_run:
        check_token()
    if cfg.dry_run:
        dest = _staging(cfg)
        files = stage(info, dest, cfg.repo_id, cfg.base_repo_id)
        logger.info("dry run: %d files staged in %s", len(files), dest)
        return dest
    if cfg.staging_dir:
        dest = _staging(cfg)
        stage(info, dest, cfg.repo_id, cfg.base_repo_id)
        return upload(dest, cfg.repo_id, cfg.private, cfg.commit_message)
    with tempfile.TemporaryDirectory(prefix="llm_unlearn_push_") as tmp:
        dest = Path(tmp) / "upload"
        stage(info, dest, cfg.repo_id, cfg.base_repo_id)
        return upload(dest, cfg.repo_id, cfg.private, cfg.commit_message)


def make_parser():
    from ..flags import make_parser as _mp

    return _mp(PushConfig, prog="llm-unlearn push")


def cli(argv=None) -> None:
    cfg = parse_config(PushConfig, argv, prog="llm-unlearn push")
    out = main(cfg)
    if cfg.dry_run:
        print(f"dry run: the upload folder is {out}")
        for f in sorted(Path(out).iterdir()):
            print(f"  {f.name}")
    else:
        print(f"pushed {cfg.folder} to https://huggingface.co/{cfg.repo_id} ({out})")
