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
# Both attacks as one job graph on two worker processes (same as two `llm-unlearn run` calls, less idle time).
.venv/bin/llm-unlearn suite --configs "[recipes/tiny/llm_gaussian.yaml, recipes/tiny/llm_backdoor.yaml]" \
    --output_dir "$OUT" "$@"
echo "main job finished in $(( $(date +%s) - start )) s (after install)"
echo "reports: $OUT/llm_gaussian/report.md  $OUT/llm_backdoor/report.md"
