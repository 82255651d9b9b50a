"""Every Python script under recipes/ answers --help (a recipe script once broke silently in a refactor: an import
of names that had moved), and the distributed runner refuses a bad accelerate config before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPTS = sorted((ROOT / "recipes").rglob("*.py"))


def test_there_are_recipe_scripts():
    assert SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=[str(p.relative_to(ROOT)) for p in SCRIPTS])
def test_recipe_script_help(script):
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout


def test_run_distributed_refuses_a_missing_accelerate_config(tmp_path):
    script = ROOT / "recipes" / "llama-3.2-1b-imdb" / "run_distributed.py"
    cfg = ROOT / "recipes" / "tiny" / "llm_gaussian.yaml"
    cmd = [sys.executable, str(script), "--config", str(cfg), "--output_dir", str(tmp_path / "run")]
    proc = subprocess.run([*cmd, "--accelerate_config", str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "accelerate_config" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing written
