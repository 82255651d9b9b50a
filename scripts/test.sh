#!/usr/bin/env bash
# Install everything into .venv (plain pip: it finds the CPU torch wheel on disk) and run the test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m ruff check llm_unlearn image_track tests
.venv/bin/python -m pytest -q "$@"
