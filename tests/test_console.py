"""What `run` prints and where job output goes (llm_unlearn/console.py): per-job log.txt files that catch everything a
job prints (Python, file descriptors, child processes, log records), a console of one line per job, failures shown
with their log, config errors before any heavy import, every key's default in `--help`, and TensorBoard events with
`report_to: tensorboard`."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import re
import subprocess
import sys

import pytest
import yaml
from helpers import TINY_SHAPE, FakeStageConfig

from llm_unlearn.cli import COMMANDS
from llm_unlearn.console import Console, job_output, log_tail
from llm_unlearn.scheduler import Job, JobFailed, execute

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


# --- the per-job log ---


def test_job_output_catches_python_fd_children_and_log_records(tmp_path):
    log = tmp_path / "job" / "log.txt"
    before = sys.stdout, sys.stderr
    with job_output(log, "s0/initial"):
        print("from print")
        print("from stderr", file=sys.stderr)
        os.write(1, b"from fd 1\n")
        os.write(2, b"from fd 2\n")
        subprocess.run([sys.executable, "-c", "import sys; print('from a child'); sys.stderr.write('child err\\n')"])
        logging.getLogger("llm_unlearn.some_stage").warning("a log record")
    assert (sys.stdout, sys.stderr) == before  # restored
    text = log.read_text()
    assert text.startswith("=== s0/initial: started ")
    for line in ("from print", "from stderr", "from fd 1", "from fd 2", "from a child", "child err", "a log record"):
        assert line in text
    with job_output(log, "s0/initial"):  # a resumed job appends under a new header
        print("second attempt")
    text = log.read_text()
    assert text.count("=== s0/initial: started ") == 2 and "from print" in text and "second attempt" in text


def test_log_tail_keeps_the_last_state_of_a_progress_bar(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("a\n\nMap:  10%\rMap:  50%\rMap: 100%\nb\n")
    assert log_tail(log) == ["a", "Map: 100%", "b"]
    assert log_tail(log, 1) == ["b"]
    assert log_tail(tmp_path / "missing") == []


# --- the console around the grid ---


def _fail_main(cfg):  # a stage that prints, then fails like a library bug would
    print(f"working on {cfg.output_dir}")
    raise RuntimeError("boom in the stage")


@dataclasses.dataclass
class FailingConfig:
    output_dir: str


main = _fail_main  # `Job(stage="test_console")` runs this module's main


def test_execute_writes_logs_and_one_line_per_job(tmp_path, capfd):
    jobs = [
        Job("e0/a", "helpers", FakeStageConfig(str(tmp_path / "a")), []),
        Job("e0/b", "helpers", FakeStageConfig(str(tmp_path / "b")), ["e0/a"]),
    ]
    execute(jobs, workers=1)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert re.fullmatch(r"\[1/2 0:\d\d eta 0:\d\d\] a  \d+\.\ds", lines[0]), lines[0]
    assert re.fullmatch(r"\[2/2 0:\d\d\] b  \d+\.\ds", lines[1]), lines[1]
    assert lines[-1].startswith("2 jobs in ")
    assert all((tmp_path / n / "log.txt").is_file() for n in "ab")
    # a rerun keeps both (their logs too) and says so in one line
    execute(jobs, workers=1)
    err = capfd.readouterr().err
    assert "2 of 2 jobs already finished" in err and len(err.strip().splitlines()) == 1


def test_a_redone_job_appends_to_its_log(tmp_path, capfd):
    def job(value):
        return Job("a", "helpers", FakeStageConfig(str(tmp_path / "a"), value=value, log=str(tmp_path / "ran")), [])

    execute([job(1)], workers=1)
    execute([job(2)], workers=1)  # another config: the output is cleared and redone, its log kept and appended to
    assert (tmp_path / "ran").read_text().split() == ["a", "a"]
    assert (tmp_path / "a" / "log.txt").read_text().count("=== a: started ") == 2


def test_a_failed_job_shows_its_name_last_lines_and_log(tmp_path, capfd):
    out = tmp_path / "bad"
    with pytest.raises(
        JobFailed, match=r"^job s0/bad failed \(RuntimeError: boom in the stage\); its traceback is in "
    ):
        execute([Job("e0/s0/bad", "test_console", FailingConfig(str(out)), [])], workers=1)
    err = capfd.readouterr().err
    assert "FAILED s0/bad: RuntimeError: boom in the stage" in err
    assert f"  | working on {out}" in err and "  | RuntimeError: boom in the stage" in err
    assert f"the job's whole output: {out / 'log.txt'}" in err
    assert "Traceback (most recent call last)" in (out / "log.txt").read_text()


def _refuse_main(cfg):
    from llm_unlearn.configs import ConfigError

    raise ConfigError("budget buys no step")


def test_a_job_refusing_its_inputs_stays_a_config_error_naming_its_log(tmp_path, monkeypatch, capfd):
    from llm_unlearn.configs import ConfigError

    monkeypatch.setattr(sys.modules[__name__], "main", _refuse_main)
    out = tmp_path / "u"
    with pytest.raises(
        ConfigError, match=rf"^budget buys no step \(job u; its output: {re.escape(str(out / 'log.txt'))}\)$"
    ):
        execute([Job("u", "test_console", FailingConfig(str(out)), [])], workers=1)
    assert "FAILED u: ConfigError: budget buys no step" in capfd.readouterr().err


def test_console_without_a_terminal_has_no_bar(tmp_path):
    with open(tmp_path / "console.txt", "w") as stream:
        c = Console(3, kept=1, stream=stream)
        c.name_jobs(["e0/x", "e0/y"])
        c.started("e0/x")
        c.finished("e0/x", 1.5, "diverged")
        c.close()
    lines = (tmp_path / "console.txt").read_text().splitlines()
    assert lines[0] == "1 of 3 jobs already finished (kept from an earlier run)"
    assert lines[1].startswith("[2/3 ") and lines[1].endswith("] x  1.5s  (diverged)") and " eta " in lines[1]
    assert lines[2].startswith("1 jobs in ") and "\r" not in "".join(lines)


def test_a_big_grid_lists_only_its_long_jobs_and_those_with_a_note(tmp_path):
    from llm_unlearn.console import EVERY_JOB_UP_TO

    with open(tmp_path / "console.txt", "w") as stream:
        c = Console(EVERY_JOB_UP_TO + 1, stream=stream)
        c.name_jobs(
            ["e0/s0/initial", "e0/s0/eval/initial", "e0/s0/eval/ga"], minor={"e0/s0/eval/initial", "e0/s0/eval/ga"}
        )
        c.finished("e0/s0/initial", 30.0)
        c.finished("e0/s0/eval/initial", 2.0)  # short, no note: counted, not listed
        c.finished("e0/s0/eval/ga", 0.0, "diverged")
        c.close()
    lines = (tmp_path / "console.txt").read_text().splitlines()
    assert [line.split("] ", 1)[1] for line in lines[:2]] == ["s0/initial  30.0s", "s0/eval/ga  0.0s  (diverged)"]
    assert lines[1].startswith(f"[ 3/{EVERY_JOB_UP_TO + 1} ")
    assert lines[2].startswith("3 jobs in ") and lines[2].endswith(", 1 short ones not listed")


def test_verbose_leaves_job_output_on_the_terminal(tmp_path, capfd):
    execute([Job("a", "helpers", FakeStageConfig(str(tmp_path / "a")), [])], workers=1, verbose=True)
    assert not (tmp_path / "a" / "log.txt").exists()
    assert "] a  " in capfd.readouterr().err  # its line on the console all the same


# --- fast config errors, defaults in --help ---


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "seeds: [0]\ntrain:\n  learning_rat: 0.1\n",
            "unknown key 'train.learning_rat' for TrainConfig (did you mean 'learning_rate'?)",
        ),
        ("methods: [gd, nope]\n", "unknown method 'nope'; choose from ['cf_k', 'eu_k', 'ga', 'gd', 'graddiff',"),
    ],
)
def test_a_config_error_comes_before_torch_and_transformers_are_imported(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    code = (
        "import sys\nfrom llm_unlearn.cli import main\n"
        f"rc = main(['run', '--config', {str(bad)!r}, '--output_dir', {str(tmp_path / 'out')!r}])\n"
        "print(rc, sorted(m for m in ('torch', 'transformers', 'datasets', 'peft', 'numpy') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert message in proc.stderr
    assert proc.stdout.split("\n")[0] == "2 []", proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_every_keys_default(command):
    module_name, _, _ = COMMANDS[command][0].partition(":")
    module = importlib.import_module(f"llm_unlearn.stages.{module_name}")
    if command == "suite":
        from llm_unlearn.flags import make_parser
        from llm_unlearn.stages.run import SuiteConfig

        parser = make_parser(SuiteConfig, prog="llm-unlearn suite")
    else:
        parser = module.make_parser()
    keys = [a for a in parser._actions if a.option_strings and a.option_strings[0] not in ("-h", "--config")]
    assert keys
    for action in keys:
        if action.help == "==SUPPRESS==":  # --no_KEY, the false spelling of a true/false key
            continue
        assert "(default: " in action.help or "(required)" in action.help or "default" in action.help, (
            action.option_strings,
            action.help,
        )
    if command == "run":
        helps = {a.option_strings[0]: a.help for a in keys}
        assert helps["--seeds"].endswith("(default: [0, 1, 2])")
        assert helps["--train.learning_rate"].endswith("(default: 0.001)")
        assert helps["--report_to"].endswith("(default: none)")


# --- a whole tiny run through the CLI ---


def test_a_tiny_run_prints_a_screenful_and_logs_every_job(tmp_path):
    """Two workers (jobs in worker processes), TensorBoard on: the console is one line per job, each job's output
    (HF's loss dicts, bars) is in its log.txt, events are written offline, and the last line is the verdict."""
    config = tmp_path / "exp.yaml"
    experiment = {
        "seeds": [0],
        "workers": 2,
        "tiny": dict(TINY_SHAPE),
        "poison": {"attack": "gaussian", "poison_fraction": 0.1, "embedded_n_train": 80, "embedded_n_test": 30},
        "train": {"num_train_epochs": 1, "per_device_train_batch_size": 16, "logging_steps": 1},
        "unlearn": {"per_device_train_batch_size": 8, "logging_steps": 1},
        "eval": {"fresh_noise_draws": 2},
        "methods": ["gd"],
        "budgets": [0.2],
        "diagnostics": False,
    }
    config.write_text(yaml.safe_dump(experiment))
    out = tmp_path / "run"
    args = ["run", "--config", str(config), "--output_dir", str(out), "--report_to", "tensorboard"]
    proc = subprocess.run(
        [sys.executable, "-m", "llm_unlearn", *args], capture_output=True, text=True, env=ENV, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout + proc.stderr
    assert len(printed.splitlines()) <= 60, printed
    assert "{'loss'" not in printed and "Map:" not in printed and "Loading weights" not in printed
    assert "] s0/unlearn/gd_b0.2  " in proc.stderr and "] s0/eval/gd_b0.2  " in proc.stderr  # a line per job
    assert proc.stdout.splitlines()[-1].startswith("verdict gaussian (run): ")
    seed = out / "seed_0"
    jobs = [p.parent for p in seed.rglob(".complete")]
    assert len(jobs) == 8  # base, poison, initial, retrain, unlearn, 3 evaluations
    for d in jobs:
        assert (d / "log.txt").is_file(), d
    assert "{'loss'" in (seed / "initial" / "log.txt").read_text()  # the Trainer's per-step dicts went here
    assert "{'loss'" in (seed / "unlearn" / "gd_b0.2" / "log.txt").read_text()
    for d in (seed / "initial", seed / "retrain", seed / "unlearn" / "gd_b0.2"):
        assert list((d / "tensorboard").glob("events.out.tfevents.*")), d
    assert not (seed / "initial" / "trainer").exists()  # the events outlive the Trainer's scratch dir
    # the log is no record: the stage's marker holds no digest of it
    marker = yaml.safe_load((seed / "initial" / ".complete").read_text())
    assert "log.txt" not in str(marker.get("files", {}))


def test_report_to_a_tracker_that_is_not_installed_is_a_config_error(monkeypatch):
    import importlib.util

    from llm_unlearn.configs import ConfigError
    from llm_unlearn.training import check_report_to

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="report_to: wandb needs the wandb package"):
        check_report_to("wandb")
    check_report_to("none")
    with pytest.raises(ConfigError, match="choose from"):
        check_report_to("mlflow")


# --- plots a reader cannot misread ---


def _rows(budgets):
    rows = [
        {"method": m, "budget": None, "variant": m, "seed": 0, "metrics": {}, "attack": "gaussian"}
        for m in ("initial", "retrain")
    ]
    for b in budgets:
        for i, m in enumerate(("gd", "ga")):
            rows.append(
                {
                    "method": m,
                    "budget": b,
                    "variant": f"{m}_b{b:g}",
                    "seed": 0,
                    "selected": True,
                    "within_tolerance": m == "gd",
                    "attack": "gaussian",
                    "metrics": {"gap_closed": 0.1 + i},
                }
            )
    return rows


def _figures(monkeypatch):
    from llm_unlearn.stages import plots

    figs = []
    monkeypatch.setattr(plots, "atomic_savefig", lambda fig, path, **kw: figs.append(fig))
    return plots, figs


def test_gap_closed_is_a_bar_chart_with_one_budget_and_lines_with_several(tmp_path, monkeypatch):
    plots, figs = _figures(monkeypatch)
    plots.plot_gap_closed(_rows([0.1]), tmp_path)
    (ax,) = figs[-1].axes
    bars = [p for p in ax.patches if type(p).__name__ == "Rectangle"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["gd", "ga"] and len(bars) == 2
    assert bars[1].get_hatch() == "//" and bars[0].get_hatch() is None  # ga fell outside the tolerance: hollow
    assert "budget 0.1" in ax.get_title() and ax.get_ylabel() == "gap closed"
    plots.plot_gap_closed(_rows([0.05, 0.1]), tmp_path)
    (ax,) = figs[-1].axes
    assert not [p for p in ax.patches if type(p).__name__ == "Rectangle"] and "vs budget" in ax.get_title()


def test_every_gus_hist_panel_has_its_own_legend_and_axis_labels(tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace

    plots, figs = _figures(monkeypatch)
    rng = __import__("numpy").random.default_rng(0)
    for key in ("initial", "retrain", "gd_b0.1", "ga_b0.1"):
        d = tmp_path / "seed_0" / "eval" / key
        d.mkdir(parents=True)
        record = {"gus_poison": rng.normal(size=50).tolist(), "gus_fresh": rng.normal(size=(50, 2)).tolist()}
        (d / "per_sample.json").write_text(json.dumps(record))
    plots.plot_gus_hist(tmp_path, SimpleNamespace(seeds=[0]), _rows([0.1]), tmp_path)
    axes = figs[-1].axes
    assert [ax.get_title() for ax in axes] == ["retrain (gold)", "gd (budget 0.1)", "ga (budget 0.1)"]
    for ax, model in zip(axes, ("retrain (gold)", "gd", "ga")):
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == ["fresh noise, initial model", "poisons, initial model", f"poisons, {model}"]
        assert ax.get_ylabel() == "density" and ax.get_xlabel().startswith("I_z")
