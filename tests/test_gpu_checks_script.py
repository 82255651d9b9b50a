"""``scripts/gpu_checks.sh`` (the one prepared run on a lent GPU machine) works as a CPU dry run: its plumbing (step
runner with timeouts, the per-step records, the summary table and JSON, the file budget under ``$OUT``) and check 1
(``bench/gus.py``) at QUICK sizes. Nothing here says anything about a GPU: ``DEVICE=cpu`` hides any GPU from the
script's steps, and GPU-only results (speed-ups on CUDA, bf16, ZeRO-3 on CUDA) are only measured by running the
script on one. The whole dry run (all four checks, ~3 min here) is run by hand:
``OUT=/tmp/gpu_dry DEVICE=cpu QUICK=1 SKIP_INSTALL=1 PY=.venv/bin/python bash scripts/gpu_checks.sh``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "gpu_checks.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash")


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_cpu_dry_run_of_check_1(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(
        os.environ,
        OUT=str(out),
        WORK=str(work),
        DEVICE="cpu",
        QUICK="1",
        SKIP_INSTALL="1",
        PY=sys.executable,
        CHECKS="1",
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "gpu_checks.log").read_text()
    assert "=== summary" in log and "| c1_gus | PASS |" in log, log[-3000:]
    summary = json.loads((out / "gpu_checks_summary.json").read_text())
    assert summary["device"] == "cpu" and summary["quick"] is True
    steps = {s["step"]: s for s in summary["steps"]}
    assert list(steps) == ["versions", "c1_gus"]
    assert steps["c1_gus"]["status"] == "PASS" and steps["c1_gus"]["gpu_mem_peak_mib"] is None
    assert summary["env"]["gpu"] == "no GPU"  # DEVICE=cpu: the steps never see a GPU
    gus = json.loads((out / "gus.json").read_text())
    assert gus["device"] == "cpu" and not gus["failures"]
    assert gus["cases"] and all(c["speedup"] > 0 and c["max_abs_diff"] < 1e-3 for c in gus["cases"])
    # Everything comes back in at most 7 small files directly under $OUT.
    files = list(out.iterdir())
    assert len(files) <= 7 and all(f.is_file() and f.stat().st_size < 1_000_000 for f in files)


def test_bench_device_cuda_without_a_gpu_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the benchmark would run")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gus.py"), "--device", "cuda", "--n", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "CUDA is not available" in proc.stderr
