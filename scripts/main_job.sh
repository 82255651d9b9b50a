#!/usr/bin/env bash
# Install everything into .venv and run the main job: the paper's protocol on the embedded default (tiny Llama,
# synthetic reviews, 3 seeds) for the Gaussian and the backdoor attack. Prints where the reports are and the verdicts.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-runs/main}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Both attacks as one job graph on two worker processes (same as two `llm-unlearn run` calls, less idle time). It
# prints a line per job (each job's own output is in its dir's log.txt; --verbose shows it here), the grid's time, the
# report paths and, last, one verdict line per attack.
.venv/bin/llm-unlearn suite --configs "[recipes/tiny/llm_gaussian.yaml, recipes/tiny/llm_backdoor.yaml]" \
    --output_dir "$OUT" "$@"
