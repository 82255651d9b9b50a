"""Relearning after unlearning (issue 17, part 2): the relearn stage trains exactly ``steps`` optimizer steps on the
rows it says, saves the model after each step count as its own finished output, follows the harness's resume rules,
is configured through a checked ``relearn`` section, and a run with it writes relearned rows and ``relearn.png``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import TINY_SHAPE
from safetensors.torch import load_file

from llm_unlearn.configs import ConfigError, build_config
from llm_unlearn.stages.relearn import RelearnConfig, forget_subset, main, step_dir


def _cfg(initial, dataset, out, **kw):
    base = dict(model_dir=initial, dataset_dir=dataset, output_dir=str(out), per_device_train_batch_size=8)
    return RelearnConfig(**(base | kw))


def _info(path) -> dict:
    return json.loads((Path(path) / "relearn_info.json").read_text())


def _weights(d) -> dict:
    return load_file(str(Path(d) / "model.safetensors"))


@pytest.fixture(scope="module")
def forget_run(tmp_path_factory, trained_dirs, gaussian_dir):
    out = tmp_path_factory.mktemp("relearn") / "forget"
    cfg = _cfg(trained_dirs[0], gaussian_dir, out, steps=[3, 2], data="forget_fraction", fraction=0.25, seed=5)
    return cfg, main(cfg)


def test_forget_fraction_trains_exactly_steps_on_the_seeded_poisons(forget_run, gaussian_dir, trained_dirs):
    import datasets

    cfg, out = forget_run
    forget = datasets.load_from_disk(str(Path(gaussian_dir) / "dataset"))["forget"]
    picked = forget_subset(len(forget), 0.25, 5)
    assert len(picked) == max(1, round(0.25 * len(forget))) == 3
    expected = sorted(forget[i]["index"] for i in picked)
    info = _info(out)
    assert info["steps_done"] == 3 and info["steps"] == [2, 3] and sorted(info["rows"]) == expected
    # every micro-batch the loss saw held exactly the chosen poisons (3 rows < the batch of 8: all of them each step)
    assert len(info["batches"]) == 3 and all(sorted(b) == expected for b in info["batches"])
    assert info["noise_std"] > 0  # the Gaussian poisons are relearned with their noise, as in training
    for n in (2, 3):
        sub = step_dir(out, n)
        assert (sub / ".complete").is_file() and (sub / "model.safetensors").is_file()
        assert _info(sub)["steps_done"] == n and len(_info(sub)["batches"]) == n
        assert "steps:\n- " + str(n) in (sub / "config.yaml").read_text()
    assert not list(Path(out).rglob("*.bin")) and not (Path(out) / "trainer").exists()  # no pickles left
    before, after2, after3 = (_weights(d) for d in (trained_dirs[0], step_dir(out, 2), step_dir(out, 3)))
    assert any(not after2[k].equal(before[k]) for k in before)
    assert any(not after3[k].equal(after2[k]) for k in before)


def test_model_saved_at_step_n_is_an_n_step_run(forget_run, tmp_path):
    cfg, out = forget_run
    import dataclasses

    alone = main(dataclasses.replace(cfg, output_dir=str(tmp_path / "two"), steps=[2]))
    a, b = _weights(step_dir(out, 2)), _weights(step_dir(alone, 2))
    assert all(a[k].equal(b[k]) for k in a)


def test_retain_rows_and_adapter_merge(tmp_path, trained_dirs, gaussian_dir):
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    # an adapter on the initial model, as a LoRA unlearning run leaves it
    model = AutoModelForCausalLM.from_pretrained(trained_dirs[0])
    peft = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    peft.save_pretrained(str(tmp_path / "adapter"))
    out = main(_cfg(trained_dirs[0], gaussian_dir, tmp_path / "r", adapter_dir=str(tmp_path / "adapter"), steps=[2]))
    retain = set(datasets.load_from_disk(str(Path(gaussian_dir) / "dataset"))["retain"]["index"])
    info = _info(out)
    assert info["rows"] is None and info["n_rows"] == len(retain) and len(info["batches"]) == 2
    assert all(len(b) == 8 and set(b) <= retain for b in info["batches"])
    w = _weights(step_dir(out, 2))  # a plain full model: the adapter was merged, then every weight trained
    assert not any("lora" in k for k in w)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"steps": [0, 5]}, "steps must be optimizer step counts >= 1"),
        ({"steps": [5, 5]}, "steps must be distinct"),
        ({"fraction": 0.0}, "fraction must be in (0, 1]"),
        ({"fraction": 1.5}, "fraction must be in (0, 1]"),
        ({"learning_rate": 0.0}, "learning_rate must be a positive number"),
        ({"data": "poisons"}, "data"),
        ({"stepz": [1]}, "stepz"),
    ],
)
def test_bad_stage_config_is_one_clear_error(kw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("]", r"\]")):
        cfg = build_config(RelearnConfig, {"output_dir": "/tmp/x", "steps": [1], **kw})
        cfg.validate()


def test_no_steps_and_bad_inputs_refused_before_work(tmp_path, trained_dirs, gaussian_dir):
    with pytest.raises(ConfigError, match="steps must list at least one"):
        main(_cfg(trained_dirs[0], gaussian_dir, tmp_path / "a"))
    with pytest.raises(ConfigError, match="model_dir"):
        main(_cfg(str(tmp_path / "missing"), gaussian_dir, tmp_path / "b", steps=[1]))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_diverged_unlearned_model_is_not_relearned(tmp_path, trained_dirs, gaussian_dir):
    from llm_unlearn.scheduler import _diverged_unlearn
    from llm_unlearn.stages.evaluate import EvalConfig

    adapter = tmp_path / "unlearn"  # what a diverged LoRA unlearning run leaves: its record, no weights
    adapter.mkdir()
    (adapter / "unlearn_info.json").write_text(json.dumps({"diverged": True, "diverged_step": 3}))
    out = main(_cfg(trained_dirs[0], gaussian_dir, tmp_path / "r", adapter_dir=str(adapter), steps=[1, 2]))
    assert _info(out)["source_diverged"] is True
    for n in (1, 2):
        assert (step_dir(out, n) / ".complete").is_file() and not (step_dir(out, n) / "model.safetensors").exists()
        # its evaluation is skipped the way the source model's is
        ev = EvalConfig(model_dir=str(step_dir(out, n)), dataset_dir=gaussian_dir, output_dir=str(tmp_path / "e"))
        assert _diverged_unlearn(ev)


def test_experiment_relearn_section_is_checked():
    from llm_unlearn.stages.run import ExperimentConfig

    with pytest.raises(ConfigError, match="relearn"):
        build_config(ExperimentConfig, {"output_dir": "/tmp/x", "relearn": {"steps": [-1]}})
    with pytest.raises(ConfigError, match="relearn.model_dir is set by run"):
        build_config(ExperimentConfig, {"output_dir": "/tmp/x", "relearn": {"steps": [1], "model_dir": "m"}})
    with pytest.raises(ConfigError, match="stepz"):
        build_config(ExperimentConfig, {"output_dir": "/tmp/x", "relearn": {"stepz": [1]}})
    cfg = build_config(ExperimentConfig, {"output_dir": "/tmp/x", "seeds": [0], "methods": ["ga"]})
    from llm_unlearn.stages.run import plan

    assert not any("relearn" in j.name for j in plan(cfg))  # off by default
    on = build_config(
        ExperimentConfig, {"output_dir": "/tmp/x", "seeds": [0], "methods": ["ga"], "relearn": {"steps": [10, 50]}}
    )
    names = {j.name: j for j in plan(on)}
    for mid in ("initial", "retrain", "ga_b0.1"):
        job = names[f"s0/relearn/{mid}"]
        assert job.config.output_dir == "/tmp/x/seed_0/relearn/" + mid
        for n in (10, 50):
            ev = names[f"s0/eval/{mid}_r{n}"]
            assert ev.deps == [f"s0/relearn/{mid}"] and ev.config.model_dir.endswith(f"relearn/{mid}/r{n}")
            assert ev.config.adapter_dir is None
    assert names["s0/relearn/ga_b0.1"].config.adapter_dir.endswith("unlearn/ga_b0.1")  # LoRA: read as eval reads it
    assert names["s0/relearn/ga_b0.1"].deps == ["s0/unlearn/ga_b0.1"]


def test_resume_keeps_finished_and_redoes_when_the_model_changes(tmp_path, trained_dirs, gaussian_dir, caplog):
    from llm_unlearn.files import mark_complete, read_marker
    from llm_unlearn.outputs import finish, output_state
    from llm_unlearn.stages.evaluate import EvalConfig

    src = tmp_path / "initial"
    shutil.copytree(trained_dirs[0], src)
    cfg = _cfg(str(src), gaussian_dir, tmp_path / "r", steps=[1])
    out = main(cfg)
    stamp = read_marker(out)["stamp"]
    # an evaluation made from r1 (its marker records r1's stamp)
    ev = EvalConfig(model_dir=str(step_dir(out, 1)), dataset_dir=gaussian_dir, output_dir=str(tmp_path / "ev"))
    (tmp_path / "ev").mkdir()
    finish(tmp_path / "ev", ev, {"eval_results.json": {"clean_accuracy": 1.0}})
    assert output_state(ev)[0] == "current"
    main(cfg)  # the same config from the same model: kept
    assert read_marker(out)["stamp"] == stamp
    with pytest.raises(ConfigError, match="overwrite"):  # another model in its place: refused without --overwrite
        main(_cfg(trained_dirs[1], gaussian_dir, tmp_path / "r", steps=[1]))
    mark_complete(src, {"inputs": {}, "files": {}})  # the unlearned/initial model was redone since
    main(cfg)
    assert read_marker(out)["stamp"] != stamp
    assert output_state(ev)[0] == "stale"  # and so the evaluation of its step dir is redone by the next run


def test_run_with_relearning_writes_rows_table_and_plot(tmp_path):
    from llm_unlearn import run_experiment
    from llm_unlearn.stages.verdicts import table1_cells

    exp = {
        "seeds": [0],
        "tiny": dict(TINY_SHAPE),
        "poison": {"attack": "backdoor", "poison_fraction": 0.1, "embedded_n_train": 80, "embedded_n_test": 30},
        "train": {"num_train_epochs": 1, "per_device_train_batch_size": 16, "progress": False},
        "unlearn": {"per_device_train_batch_size": 8, "progress": False},
        "methods": ["ga"],
        "budgets": [0.2],
        "diagnostics": False,
        "relearn": {"steps": [1, 2], "data": "forget_fraction", "fraction": 0.5, "per_device_train_batch_size": 4},
    }
    report = run_experiment(exp, output_dir=str(tmp_path / "run"))
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = res["rows"]
    plain = [r for r in rows if r["relearn_steps"] == 0]
    relearned = [r for r in rows if r["relearn_steps"]]
    assert {r["variant"] for r in plain} == {"initial", "retrain", "ga_b0.2"}
    assert sorted((r["relearn_of"], r["relearn_steps"]) for r in relearned) == sorted(
        (m, n) for m in ("initial", "retrain", "ga_b0.2") for n in (1, 2)
    )
    for r in relearned:
        assert r["variant"] == f"{r['relearn_of']}_r{r['relearn_steps']}"
        assert r["metrics"]["relearn_data"] == "forget_fraction" and "asr" in r["metrics"]
        assert r["metrics"]["relearn_examples"] == 4 * r["relearn_steps"]  # 4 of the 8 poisons, every step
    # the Table 1 and the selection see the as-unlearned rows only
    _, cells = table1_cells(res)
    assert set(cells) == {"initial", "retrain", "ga"}
    text = report.read_text()
    assert "## Relearning: does the poison come back?" in text and "| ga, budget 0.2 | 0 |" in text
    assert text.index("## Relearning") < text.index("## Environment")
    assert (tmp_path / "run" / "relearn.png").stat().st_size > 1000


def test_a_run_dir_from_before_the_relearn_section_is_the_same_experiment(tmp_path):
    import yaml

    from llm_unlearn.configs import to_dict
    from llm_unlearn.stages.run import ExperimentConfig, check_output_dir

    cfg = build_config(ExperimentConfig, {"output_dir": str(tmp_path), "seeds": [0], "methods": ["ga"]})
    old = {k: v for k, v in to_dict(cfg).items() if k != "relearn"}  # an experiment.yaml of an older version
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    check_output_dir(cfg)  # relearning off: the same experiment, resumed
    on = build_config(ExperimentConfig, {**to_dict(cfg), "relearn": {"steps": [10]}})
    with pytest.raises(ConfigError, match="different experiment"):
        check_output_dir(on)  # relearning added: another experiment (--overwrite keeps its finished stages)
