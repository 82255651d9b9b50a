"""Documentation that cannot rot: every command in a ```bash block of README.md and of the READMEs under recipes/ is
parsed by the parser of the command it runs, and every script under recipes/ and scripts/ answers ``--help`` or
parses (a recipe script once broke silently in a refactor: an import of names that had moved).

What "parsed" means per command (the line, continuation lines joined, ``[--optional flags]`` unbracketed):

- ``llm-unlearn CMD ...`` and ``python -m llm_unlearn CMD ...``: the command's own parser (``make_parser()``): every
  ``--key`` is a real key and every value has the key's type. Where the command needs nothing but this checkout (the
  tiny recipes: no GPU, no Hub), the whole config is validated too, exactly as the command does before any work:
  recipe files, methods, budgets, output paths. Commands on Hub models or data only get the key and type check.
- ``accelerate launch ... -m llm_unlearn CMD ...``: accelerate's own ``launch`` parser for its part, then the above.
- ``bash SCRIPT`` / ``python SCRIPT``: the script exists; ``bash -n`` / ``--help`` passes.
- every ``recipes/...`` or ``scripts/...`` path a command names exists.

Executed at tiny settings elsewhere: the ``--launcher accelerate`` run on cpu.yaml (tests/test_run_launcher.py), the
tiny image recipes (tests/test_image_e2e.py), the main job's tiny recipes (scripts/main_job.sh; tests/test_e2e.py
runs the same pipeline small), ``scripts/gpu_checks.sh`` (tests/test_gpu_checks_script.py).
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPTS = sorted(p for d in ("recipes", "scripts") for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".sh"))
DOCS = [ROOT / "README.md", *sorted((ROOT / "recipes").rglob("README*.md"))]
PROGRAMS = ("llm-unlearn", "accelerate", "python", "bash")
# Paths that say the command needs a GPU or the Hub (model or data ids): parsed, not validated.
HEAVY = ("recipes/gpt2-medium-imdb/", "recipes/llama-3.2-1b-imdb/", "recipes/resnet18-cifar10/", "meta-llama/")


def doc_commands() -> list[tuple[str, str]]:
    """(where, command) for every command line of a ```bash block of the docs."""
    out = []
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        in_bash = False
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("```"):
                in_bash = not in_bash and line.strip() in ("```bash", "```sh", "```shell")
                i += 1
                continue
            start = i
            while in_bash and line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            text = line.strip()
            if in_bash and text.split(" ", 1)[0] in PROGRAMS:
                out.append((f"{doc.relative_to(ROOT)}:{start + 1}", text))
            i += 1
    return out


COMMANDS = doc_commands()


def test_the_docs_have_commands():
    programs = {cmd.split()[0] for _, cmd in COMMANDS}
    assert {"llm-unlearn", "accelerate", "bash"} <= programs
    assert not any("run_distributed" in cmd for _, cmd in COMMANDS)


def _words(cmd: str) -> list[str]:
    cmd = re.sub(r"\[(--[^\[\]]*)\]", r"\1", cmd)  # usage-style optional flags: check them too
    return shlex.split(cmd, comments=True)


def _parse_llm_unlearn(argv: list[str]) -> None:
    from llm_unlearn.cli import COMMANDS as CLI
    from llm_unlearn.configs import load_config, validate_config
    from llm_unlearn.flags import argv_data

    name, rest = argv[0], argv[1:]
    assert name in CLI, f"unknown command {name!r}"
    if "--help" in rest:
        return
    module = importlib.import_module(f"llm_unlearn.stages.{CLI[name][0].partition(':')[0]}")
    parser = module.make_parser()
    cls = parser.config_cls
    if name == "run":  # the track (from --track or the recipe) picks the config class
        from llm_unlearn.stages.run import _argv_track
        from llm_unlearn.tracks import get_track

        cls = get_track(_argv_track(rest)).config_cls
    if name == "suite":
        from llm_unlearn.stages.run import SuiteConfig

        cls = SuiteConfig
    config = rest[rest.index("--config") + 1] if "--config" in rest else None
    if config is not None and not (ROOT / config).is_file():  # a placeholder (train.yaml): check the flags alone
        i = rest.index("--config")
        rest = rest[:i] + rest[i + 2 :]
    data, _ = argv_data(cls, rest, flags=parser.extra_flags, bool_flags=parser.bool_flags)
    cfg = load_config(cls, data)  # every key is real and every value has the key's type
    heavy = any(h in " ".join(argv) for h in HEAVY) or name == "push"
    if not heavy and config is not None and (ROOT / config).is_file():
        validate_config(cfg)  # what the command checks before any work


def _parse_accelerate(argv: list[str]) -> None:
    from accelerate.commands.launch import launch_command_parser

    assert argv[:1] == ["launch"], argv
    i = argv.index("-m")
    assert argv[i + 1] == "llm_unlearn", argv
    args = launch_command_parser().parse_args([*argv[1:i], "dummy.py"])
    assert (ROOT / args.config_file).is_file(), args.config_file
    _parse_llm_unlearn(argv[i + 2 :])


@pytest.mark.parametrize(("where", "cmd"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_doc_command_parses(where, cmd, monkeypatch):
    monkeypatch.chdir(ROOT)  # the docs' paths are relative to the checkout
    words = _words(cmd)
    program, argv = words[0], words[1:]
    for w in words:  # a file of this checkout the command names (a recipe, an accelerate config) must exist
        if w.startswith(("recipes/", "scripts/")):
            assert (ROOT / w).exists(), f"{where}: {w} does not exist"
    if program == "llm-unlearn":
        _parse_llm_unlearn(argv)
    elif program == "accelerate":
        _parse_accelerate(argv)
    elif program == "python" and argv[:2] == ["-m", "llm_unlearn"]:
        _parse_llm_unlearn(argv[2:])
    elif program in ("python", "bash"):
        script = ROOT / argv[0]
        assert script.is_file(), f"{where}: {argv[0]} does not exist"
        check = ["bash", "-n", str(script)] if program == "bash" else [sys.executable, str(script), "--help"]
        proc = subprocess.run(check, capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-2000:]


PY_SCRIPTS = [p for p in SCRIPTS if p.suffix == ".py"]
SH_SCRIPTS = [p for p in SCRIPTS if p.suffix == ".sh"]


@pytest.mark.parametrize("script", PY_SCRIPTS, ids=[str(p.relative_to(ROOT)) for p in PY_SCRIPTS])
def test_python_script_help(script):
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout


@pytest.mark.parametrize("script", SH_SCRIPTS, ids=[str(p.relative_to(ROOT)) for p in SH_SCRIPTS])
def test_shell_script_parses(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_rotten_command_is_caught():
    """The checks above fail on what rots: a removed key, a wrong type, a moved script."""
    from llm_unlearn.configs import ConfigError

    with pytest.raises(ConfigError, match="unknown argument '--poison_fracton'"):
        _parse_llm_unlearn(_words("run --config recipes/tiny/llm_gaussian.yaml --poison_fracton 0.1"))
    with pytest.raises(ConfigError, match="seeds"):
        _parse_llm_unlearn(_words("run --config recipes/tiny/llm_gaussian.yaml --seeds zero"))
    with pytest.raises(ConfigError, match="accelerate_config"):
        _parse_llm_unlearn(_words("run --config recipes/tiny/llm_gaussian.yaml --launcher accelerate"))
