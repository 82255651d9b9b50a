"""``llm-unlearn <command> [--config file.yaml] [--field value ...]``: one entry per stage, nothing imported heavy
until a command runs (so ``--help`` is instant). User errors (found before any work) print one line and exit with
code 2; a fault after work started (disk full, an I/O error) prints one line naming the path and errno and exits with
code 1; SIGINT/SIGTERM print how to resume and exit with 130/143."""

from __future__ import annotations

import importlib
import logging
import sys

COMMANDS = {
    "run": ("run", "the whole protocol for one attack: poison, train, retrain, unlearn grid, eval, report"),
    "suite": ("run:suite_cli", "several experiment recipes as one job graph (the main job runs both attacks)"),
    "poison": ("poison", "poison a training set (gaussian | backdoor | gradient_canceling)"),
    "train": ("train", "fine-tune the initial (poisoned) or gold (retain) model"),
    "unlearn": ("unlearn", "unlearn the poisons with one method under a compute budget"),
    "eval": ("evaluate", "evaluate a model: utility, ASR, Gaussian Unlearning Score, loss MIA"),
    "relearn": ("relearn", "fine-tune a model a few more steps (retain rows or some poisons), saved after each count"),
    "diagnose": ("diagnose", "parameter-shift diagnostics of a model, or the exact linear toy (--toy linear)"),
    "audit": ("audit", "audit any model for what is left of Gaussian canaries (and a backdoor): a verdict"),
    "report": ("report", "results.json, report.md and plots for a run directory"),
    "tiny": ("tiny", "build the embedded tokenizer + tiny Llama offline"),
    "push": ("push", "upload a run's model (safetensors), results and a model card to the Hugging Face Hub"),
}


def usage() -> str:
    lines = ["usage: llm-unlearn <command> [--config FILE.yaml] [--key value ...]", "", "commands:"]
    lines += [f"  {name:<9} {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "`llm-unlearn <command> --help` lists a command's keys."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"llm-unlearn: error: unknown command {name!r}; choose from {sorted(COMMANDS)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import os

    from .launcher import LAUNCHED_ENV, die_with_parent

    if os.environ.get(LAUNCHED_ENV):  # a rank of a job `run` launched: it must not outlive the launch (or the run)
        die_with_parent()
    from .configs import ConfigError
    from .harness import StageFault

    module_name, _, func = COMMANDS[name][0].partition(":")
    try:
        # Plugins first: what they register (methods, attacks) may be named anywhere in the command's config.
        rest = _plugins(rest, keep=name in ("run", "suite"))
        module = importlib.import_module(f"llm_unlearn.stages.{module_name}")
        code = getattr(module, func or "cli")(rest)
    except ConfigError as e:
        print(f"llm-unlearn {name}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except StageFault as e:
        print(f"llm-unlearn {name}: fault: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # scheduler.Interrupted says how to resume
        signum = getattr(e, "signum", 2)
        msg = str(e) or "interrupted; nothing unfinished is marked complete: rerun the same command to resume"
        print(f"llm-unlearn {name}: {msg}", file=sys.stderr)
        return 128 + signum
    return code if isinstance(code, int) else 0  # audit --fail_on_residual: 1 when the verdict is residual


def entry() -> int:
    """The process entry point (``llm-unlearn``, ``python -m llm_unlearn``): :func:`main`, then, in a rank of
    ``accelerate launch`` whose stage finished, the process group destroyed before the interpreter exits. Left to exit,
    gloo's threads can be torn down while still joinable and the rank aborts ("terminate called without an active
    exception", SIGABRT) after its work is done, failing the launch (seen under load, ZeRO-3 on 2 CPU processes).
    :func:`main` itself leaves the group alone: a program calling it in-process may go on using it."""
    code = main()
    dist = sys.modules.get("torch.distributed")
    if code == 0 and dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank tears its connections down while another still uses them
        dist.destroy_process_group()
    return code


def _plugins(argv: list[str], keep: bool) -> list[str]:
    """Import the plugins named by ``--plugins`` (a YAML list or comma-separated names) and by the ``plugins`` key
    of the ``--config`` file; returns ``argv`` without ``--plugins`` unless ``keep`` (experiment configs have a
    ``plugins`` field that records them; stage configs do not)."""
    import argparse

    import yaml

    from .configs import ConfigError, read_yaml
    from .registry import load_plugins

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--plugins", action="append", default=[])
    pre.add_argument("--config")
    known, others = pre.parse_known_args(argv)
    names: list[str] = []
    if known.config:
        data = read_yaml(known.config)
        listed = data.get("plugins", []) if isinstance(data, dict) else []
        names += listed if isinstance(listed, list) else [listed]
    for raw in known.plugins:
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--plugins: expected a list of module names, got {raw!r}") from e
        names += value if isinstance(value, list) else [n.strip() for n in str(value).split(",") if n.strip()]
    load_plugins(names)
    if keep or not known.plugins:
        return argv
    # drop --plugins (and its value) for stage commands, keeping everything else in its order
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--plugins":
            skip = True
        elif not a.startswith("--plugins="):
            out.append(a)
    return out


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split("\n"))


if __name__ == "__main__":
    sys.exit(main())
