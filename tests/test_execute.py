"""The orchestrator's resume rule: complete outputs are skipped, unless their config changed (an --overwrite run
with other settings), in which case they and everything built on them are redone."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import FakeStageConfig

from llm_unlearn.scheduler import Job, execute


def _jobs(tmp_path: Path, a_value: int, c_value: int) -> list[Job]:
    log = str(tmp_path / "log")
    return [
        Job("a", "helpers", FakeStageConfig(str(tmp_path / "a"), a_value, log), []),
        Job("b", "helpers", FakeStageConfig(str(tmp_path / "b"), 0, log), ["a"]),  # same config, input a
        Job("c", "helpers", FakeStageConfig(str(tmp_path / "c"), c_value, log), []),
        Job("d", "helpers", FakeStageConfig(str(tmp_path / "d"), 0, log), []),
    ]


def _ran(tmp_path: Path) -> list[str]:
    log = tmp_path / "log"
    out = sorted(log.read_text().split()) if log.is_file() else []
    log.unlink(missing_ok=True)
    return out


def test_complete_outputs_are_skipped(tmp_path):
    execute(_jobs(tmp_path, 1, 1), workers=1)
    assert _ran(tmp_path) == ["a", "b", "c", "d"]
    execute(_jobs(tmp_path, 1, 1), workers=1)
    assert _ran(tmp_path) == []


def test_changed_config_redoes_the_job_and_its_dependents(tmp_path):
    execute(_jobs(tmp_path, 1, 1), workers=1)
    _ran(tmp_path)
    execute(_jobs(tmp_path, 2, 1), workers=1)  # a changed: a and b (built on a) rerun; c, d are kept
    assert _ran(tmp_path) == ["a", "b"]
    execute(_jobs(tmp_path, 2, 5), workers=1)
    assert _ran(tmp_path) == ["c"]


def test_checkpoint_frequency_is_not_a_config_change(tmp_path):
    import yaml

    from llm_unlearn.scheduler import _config_changed

    out = tmp_path / "stage"
    out.mkdir()
    saved = {
        "output_dir": str(out),
        "lr": 0.1,
        "save_steps": 0,
        "progress": True,
        "train": {"save_epochs": 0, "epochs": 2},
    }
    (out / "config.yaml").write_text(yaml.safe_dump(saved))

    def job(**changes):
        cfg = {**saved, **changes}
        return Job("s", "helpers", cfg, [])

    # Turning checkpoints on for a long run (or the progress bar off) keeps its finished stages ...
    assert not _config_changed(job(save_steps=500, progress=False, train={"save_epochs": 5, "epochs": 2}))
    # ... while anything that changes what is computed redoes them.
    assert _config_changed(job(lr=0.2))
    assert _config_changed(job(train={"save_epochs": 5, "epochs": 3}))
    assert not _config_changed(job())


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_job_skips_its_dependents_while_independent_jobs_go_on(tmp_path, workers, capfd):
    """a fails: b (needs a) and e (needs b) are skipped, c and d run; then a's error is raised, and a rerun with a
    fixed a runs only a, b and e (c and d are kept)."""
    from llm_unlearn.configs import ConfigError

    log = str(tmp_path / "log")

    def jobs(fail):
        return [
            Job("a", "helpers", FakeStageConfig(str(tmp_path / "a"), 0, log, fail=fail), []),
            Job("b", "helpers", FakeStageConfig(str(tmp_path / "b"), 0, log), ["a"]),
            Job("c", "helpers", FakeStageConfig(str(tmp_path / "c"), 0, log, sleep=0.5), []),
            Job("d", "helpers", FakeStageConfig(str(tmp_path / "d"), 0, log), ["c"]),
            Job("e", "helpers", FakeStageConfig(str(tmp_path / "e"), 0, log), ["b", "d"]),
        ]

    with pytest.raises(ConfigError, match="a refuses its input"):
        execute(jobs("a refuses its input"), workers=workers)
    assert _ran(tmp_path) == ["c", "d"]
    err = capfd.readouterr().err
    assert "FAILED a: ConfigError: a refuses its input" in err and "skipped (they need a): b, e" in err
    assert not (tmp_path / "b").exists() and not (tmp_path / "e").exists()
    execute(jobs(None), workers=workers)
    assert _ran(tmp_path) == ["a", "b", "e"]
