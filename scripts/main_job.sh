#!/usr/bin/env bash
# Install everything into .venv and run the main job: the paper's protocol on the embedded default (tiny Llama,
# synthetic reviews, 3 seeds) for the Gaussian and the backdoor attack. Prints where the reports are.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-runs/main}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)
.venv/bin/llm-unlearn run --config recipes/tiny/llm_gaussian.yaml --output_dir "$OUT/gaussian" "$@"
.venv/bin/llm-unlearn run --config recipes/tiny/llm_backdoor.yaml --output_dir "$OUT/backdoor" "$@"
echo "main job finished in $(( $(date +%s) - start )) s (after install)"
echo "reports: $OUT/gaussian/report.md  $OUT/backdoor/report.md"
