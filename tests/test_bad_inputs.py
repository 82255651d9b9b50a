"""The bad-input catalogue: every case goes through the CLI (``llm_unlearn.cli.main``) and must

- return exit code 2 with exactly one stderr line that names the field and what is allowed (no traceback),
- fail before any expensive work (the job graph, ``Trainer.train`` and the tiny-model build are booby-trapped),
- leave the file system exactly as it was (no half-written output dir).

Image-track cases go through the same ``run`` (a YAML with ``track: image``). Issue 13's cases that are found before
any work are here too (seeds outside numpy's range, names the filesystem refuses, duplicate YAML keys, empty YAML,
``null`` flags, degenerate experiments, models that do not belong together); the faults during or after work
(locks, signals, kills, corrupted files, disk full) are in ``test_faults.py`` and ``test_locks_signals.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

GOOD = json.dumps({"text": "a fine film with a superb ending", "label": 1})
GOOD_NEG = json.dumps({"text": "a dull film", "label": "negative"})
GOOD_FILE = f"{GOOD}\n{GOOD_NEG}\n"
TEST_FILE = ["--poison.test_file", "{tmp}/test.jsonl"]
DATA = {"test.jsonl": GOOD_FILE}


def case(id, argv, match, files=None, out=True):
    """``argv`` may use {tmp} (this test's directory), {tiny} (a tiny saved model) and {gaussian} (a poison dir);
    ``files`` maps paths under {tmp} to their text (or to the special values below); ``out`` appends an output_dir."""
    return pytest.param(argv, match, files or {}, out, id=id)


CASES = [
    # --- keys and types
    case("unknown_flag", ["run", "--poison_fracton", "0.1"], r"unknown argument '--poison_fracton'"),
    case(
        "unknown_nested_yaml_key",
        ["run", "--config", "{tmp}/exp.yaml"],
        r"unknown key 'train\.learnin_rate'.*did you mean 'learning_rate'",
        {"exp.yaml": "train: {learnin_rate: 0.1}\n"},
    ),
    case("wrong_type_list", ["run", "--seeds", "zero"], r"seeds: expected a list of int, got 'zero'"),
    case("wrong_type_list_item", ["run", "--seeds", "[0, x]"], r"seeds\[1\]: expected an integer"),
    case(
        "wrong_type_nested_float", ["run", "--train.learning_rate", "fast"], r"train\.learning_rate: expected a number"
    ),
    case("wrong_type_bool", ["run", "--overwrite", "maybe"], r"overwrite: expected true or false"),
    case(
        "wrong_type_section",
        ["run", "--config", "{tmp}/exp.yaml"],
        r"poison: expected a mapping",
        {"exp.yaml": "poison: 3\n"},
    ),
    case("config_file_missing", ["run", "--config", "{tmp}/nope.yaml"], r"config file .*nope\.yaml' does not exist"),
    case(
        "config_not_mapping", ["run", "--config", "{tmp}/exp.yaml"], r"must hold a mapping", {"exp.yaml": "- a\n- b\n"}
    ),
    case(
        "config_bad_yaml", ["run", "--config", "{tmp}/exp.yaml"], r"is not valid YAML", {"exp.yaml": "seeds: [0, 1\n"}
    ),
    case(
        "run_owned_key_in_yaml",
        ["run", "--config", "{tmp}/exp.yaml"],
        r"train\.output_dir is set by run",
        {"exp.yaml": "train: {output_dir: x}\n"},
    ),
    case("run_owned_key_as_flag", ["run", "--train.output_dir", "x"], r"unknown argument '--train\.output_dir'"),
    case("output_dir_missing", ["run"], r"output_dir is required", out=False),
    # --- the image track, reached through the same `run` (its YAML says track: image)
    case("unknown_track", ["run", "--track", "video"], r"unknown track 'video'; choose from \['image', 'llm'\]"),
    case(
        "image_size_too_small",
        ["run", "--config", "{tmp}/img.yaml"],
        r"data: image_size must be >= 4",
        {"img.yaml": "track: image\ndata: {image_size: 2}\n"},
    ),
    case(
        "image_unknown_arch",
        ["run", "--config", "{tmp}/img.yaml"],
        r"model\.arch: 'vit' is not allowed; choose from \['cnn', 'resnet18', 'mlp', 'linear'\]",
        {"img.yaml": "track: image\nmodel: {arch: vit}\n"},
    ),
    case(
        "image_attack_model_mismatch",
        ["run", "--config", "{tmp}/img.yaml"],
        r"gradient_canceling needs model\.arch: linear",
        {"img.yaml": "track: image\npoison: {attack: gradient_canceling}\nmodel: {arch: cnn}\n"},
    ),
    # --- data files
    case(
        "train_file_missing",
        ["run", "--poison.train_file", "{tmp}/nope.jsonl", *TEST_FILE],
        r"train_file: file .*nope\.jsonl' does not exist",
        DATA,
    ),
    case(
        "train_file_empty",
        ["run", "--poison.train_file", "{tmp}/train.jsonl", *TEST_FILE],
        r"train_file: file .*train\.jsonl' is empty",
        {**DATA, "train.jsonl": ""},
    ),
    case(
        "train_file_blank_lines_only",
        ["run", "--poison.train_file", "{tmp}/train.jsonl", *TEST_FILE],
        r"train_file: file .* holds no rows",
        {**DATA, "train.jsonl": "\n\n"},
    ),
    case(
        "train_file_bad_suffix",
        ["run", "--poison.train_file", "{tmp}/train.txt", *TEST_FILE],
        r"train_file: .* has suffix '\.txt'; allowed: \['\.csv', '\.json', '\.jsonl', '\.parquet'\]",
        {**DATA, "train.txt": GOOD_FILE},
    ),
    case(
        "jsonl_malformed_row",
        ["run", "--poison.train_file", "{tmp}/train.jsonl", *TEST_FILE],
        r"train_file: .* line 3 is not valid JSON",
        {**DATA, "train.jsonl": f'{GOOD}\n{GOOD}\n{{"text": "oops"\n'},
    ),
    case(
        "jsonl_row_not_object",
        ["run", "--poison.train_file", "{tmp}/train.jsonl", *TEST_FILE],
        r"train_file: .* line 2 must be a JSON object",
        {**DATA, "train.jsonl": f"{GOOD}\n[1, 2]\n"},
    ),
    case(
        "jsonl_missing_column",
        ["run", "--poison.train_file", "{tmp}/train.jsonl", *TEST_FILE],
        r"train_file: .* line 1, train row 0 has no 'text' field",
        {**DATA, "train.jsonl": json.dumps({"review": "good", "label": 1}) + "\n"},
    ),
    case(
        "test_file_label_outside_label_set",
        ["run", "--poison.train_file", "{tmp}/train.jsonl", "--poison.test_file", "{tmp}/bad.jsonl"],
        r"test_file: .* line 2, test row 1: label 'neutral' is not in label_names=\['negative', 'positive'\]",
        {"train.jsonl": GOOD_FILE, "bad.jsonl": f"{GOOD}\n" + json.dumps({"text": "meh", "label": "neutral"})},
    ),
    case(
        "label_index_out_of_range",
        ["run", "--poison.train_file", "{tmp}/train.jsonl", *TEST_FILE],
        r"line 1, train row 0: label 2 is outside 0\.\.1",
        {**DATA, "train.jsonl": json.dumps({"text": "fine", "label": 2}) + "\n"},
    ),
    case(
        "empty_text",
        ["run", "--poison.train_file", "{tmp}/train.jsonl", *TEST_FILE],
        r"line 1, train row 0: 'text' must be a non-empty string",
        {**DATA, "train.jsonl": json.dumps({"text": " ", "label": 1}) + "\n"},
    ),
    case(
        "only_train_file",
        ["run", "--poison.train_file", "{tmp}/test.jsonl"],
        r"train_file and test_file: set both",
        DATA,
    ),
    # --- values
    case("poison_fraction_zero", ["run", "--poison.poison_fraction", "0"], r"poison_fraction must be in \(0, 1\)"),
    case(
        "poison_fraction_above_one", ["run", "--poison.poison_fraction", "1.5"], r"poison_fraction must be in \(0, 1\)"
    ),
    case("poison_fraction_nan", ["run", "--poison.poison_fraction", ".nan"], r"poison_fraction must be in \(0, 1\)"),
    case("poison_fraction_no_poisons", ["run", "--poison.poison_fraction", "0.0001"], r"gives 0 poisons.*at least 2"),
    case("budget_zero", ["run", "--budgets", "[0]"], r"budgets must be a non-empty list of fractions in \(0, 1\]"),
    case(
        "budget_above_one", ["run", "--budgets", "[1.5]"], r"budgets must be a non-empty list of fractions in \(0, 1\]"
    ),
    case("budgets_empty", ["run", "--budgets", "[]"], r"budgets must be a non-empty list"),
    case("unknown_method", ["run", "--methods", "[gd, bogus]"], r"unknown method 'bogus'; choose from \[.*'gd'.*\]"),
    case("methods_empty", ["run", "--methods", "[]"], r"methods must name at least one registered method"),
    case(
        "unknown_method_arg",
        ["run", "--methods", "[neggrad_plus]", "--method_args", "{neggrad_plus: {betta: 0.9}}"],
        r"unknown key 'betta'.*did you mean 'beta'",
    ),
    case(
        "unknown_attack",
        ["run", "--poison.attack", "label_flip"],
        r"unknown attack 'label_flip' for the llm track; choose from \['backdoor', 'gaussian', 'gradient_canceling'\]",
    ),
    case(
        "unknown_backend",
        ["run", "--eval.backend", "onnx"],
        r"unknown generation backend 'onnx'; choose from \['hf', 'vllm'\]",
    ),
    case("unknown_track_audio", ["run", "--track", "audio"], r"unknown track 'audio'; choose from \[.*'llm'.*\]"),
    case(
        "empty_trigger",
        ["run", "--poison.attack", "backdoor", "--poison.attack_args", "{trigger: ''}"],
        r"trigger must be a non-empty phrase",
    ),
    case(
        "blank_trigger",
        ["run", "--poison.attack", "backdoor", "--poison.attack_args", "{trigger: '   '}"],
        r"trigger must be a non-empty phrase",
    ),
    case(
        "target_label_unknown",
        ["run", "--poison.attack", "backdoor", "--poison.attack_args", "{target_label: neutral}"],
        r"target_label 'neutral' is not in",
    ),
    case(
        "attack_arg_unknown",
        ["run", "--poison.attack_args", "{noise_ep: 2}"],
        r"unknown key 'attack_args.noise_ep'.*did you mean 'noise_eps'",
    ),
    case(
        "attack_knob_moved",
        ["run", "--poison.noise_eps", "0.5"],
        r"poison.noise_eps moved: write poison.attack_args.noise_eps",
    ),
    case("prompt_without_text", ["run", "--poison.prompt_template", "Review:"], r"prompt_template must contain"),
    case(
        "prompt_other_field", ["run", "--poison.prompt_template", "{txt} {text}"], r"prompt_template must be a format"
    ),
    case("noise_eps_zero", ["run", "--poison.attack_args", "{noise_eps: 0}"], r"noise_eps must be > 0"),
    case("noise_eps_negative", ["run", "--poison.attack_args", "{noise_eps: -1}"], r"noise_eps must be > 0"),
    case(
        "gradient_noise_negative",
        ["run", "--methods", "[ngd]", "--method_args", "{ngd: {sigma: -0.1}}"],
        r"sigma must be a finite number >= 0",
    ),
    case("learning_rate_negative", ["run", "--train.learning_rate", "-1"], r"learning_rate must be a positive number"),
    case(
        "trainer_args_unknown", ["run", "--train.trainer_args", "{bogus: 1}"], r"unknown TrainingArguments key 'bogus'"
    ),
    case("grid_unknown_key", ["run", "--methods", "[gd]", "--grid", "{gd: {lr: [1]}}"], r"grid\.gd\.lr: unknown key"),
    case("seeds_empty", ["run", "--seeds", "[]"], r"seeds must hold at least one seed"),
    case("seeds_duplicate", ["run", "--seeds", "[0, 0]"], r"seeds must be distinct"),
    case("workers_zero", ["run", "--workers", "0"], r"workers must be >= 1"),
    # --- issue 13: seeds outside numpy's range failed inside the Trainer, after poisoning (and left experiment.yaml)
    case("seed_negative", ["run", "--seeds", "[-1]"], r"seeds\[0\]: -1 is outside the seed range \[0, 2\*\*32 - 1\]"),
    case("seed_too_large", ["run", "--seeds", "[0, 1099511627776]"], r"seeds\[1\]: 1099511627776 is outside the seed"),
    case("stage_seed_negative", ["train", "--seed", "-1"], r"seed: -1 is outside the seed range"),
    case("poison_seed_too_large", ["poison", "--seed", "4294967296"], r"seed: 4294967296 is outside the seed range"),
    # --- issue 13: config parsing
    case(
        "yaml_duplicate_key",
        ["run", "--config", "{tmp}/exp.yaml"],
        r"exp\.yaml': key 'seeds' appears twice \(lines 1 and 3\)",
        {"exp.yaml": "seeds: [0]\nworkers: 1\nseeds: [1]\n"},
    ),
    case(
        "yaml_duplicate_nested_key",
        ["run", "--config", "{tmp}/exp.yaml"],
        r"key 'learning_rate' appears twice \(lines 2 and 3\)",
        {"exp.yaml": "train:\n  learning_rate: 0.1\n  learning_rate: 0.2\n"},
    ),
    case("yaml_empty", ["run", "--config", "{tmp}/exp.yaml"], r"exp\.yaml' is empty", {"exp.yaml": ""}),
    case("yaml_only_comments", ["run", "--config", "{tmp}/exp.yaml"], r"is empty", {"exp.yaml": "# seeds: [0]\n"}),
    case("flag_duplicate_key", ["run", "--method_args", "{gd: {}, gd: {}}"], r"--method_args: key 'gd' appears twice"),
    case(
        "null_flag_is_none",
        ["run", "--poison.dataset_name", "null"],
        r"poison\.dataset_name: expected a string, got None",
    ),
    case("null_flag_tilde", ["poison", "--attack", "~"], r"attack: expected a string, got None"),
    case(
        "train_file_is_directory",
        ["run", "--poison.train_file", "{tmp}/adir", *TEST_FILE],
        r"train_file: .*adir' is a directory; give a \.jsonl/\.json/\.csv/\.parquet file",
        {**DATA, "adir/train.jsonl": GOOD_FILE},
    ),
    case(
        "stage_overwrite_not_bool",
        ["poison", "--overwrite", "maybe"],
        r"overwrite: expected true or false, got 'maybe'",
    ),
    # --- issue 13: names the filesystem refuses
    case("output_dir_name_too_long", ["run", "--output_dir", "{tmp}/" + "x" * 300], r"name of 300 bytes", out=False),
    case(
        "stage_output_dir_name_too_long",
        ["poison", "--output_dir", "{tmp}/" + "p" * 256],
        r"output_dir: .* holds a name of 256 bytes .* allows at most 255",
        out=False,
    ),
    case(
        "job_dir_name_too_long",
        ["run", "--methods", "[gd]", "--grid", "{gd: {attn_implementation: [" + "a" * 250 + "]}}"],
        r"output_dir of job s0/unlearn/gd_b0\.1_attn_implementationaaa.*: .* holds a name of 277 bytes",
    ),
    # --- issue 13: degenerate experiments
    case(
        "degenerate_retain_set",
        ["run", "--poison.poison_fraction", "0.999"],
        r"poison_fraction=0\.999 of 3000 training examples: the retain set holds 3 example\(s\), fewer than the "
        r"batch size 32",
    ),
    case(
        "degenerate_budget_below_one_step",
        ["run", "--budgets", "[1e-9]"],
        r"budget 1e-09 buys at most .* tokens of compute, less than one optimizer step .*; the smallest budget that "
        r"gives one step is at least \d",
    ),
    case(
        "degenerate_image_budget",
        ["run", "--config", "{tmp}/img.yaml"],
        r"budget 1e-06 buys at most .* examples of compute, less than one optimizer step \(64 examples",
        {"img.yaml": "track: image\nbudgets: [0.000001]\n"},
    ),
    case(
        "degenerate_image_retain_set",
        ["run", "--config", "{tmp}/img.yaml"],
        r"the retain set holds \d+ example\(s\), fewer than the batch size 64",
        {"img.yaml": "track: image\npoison: {poison_fraction: 0.99}\n"},
    ),
    case(
        "degenerate_unlearn_stage_budget",
        ["unlearn", "--model_dir", "{tiny}", "--dataset_dir", "{gaussian}", "--reference_compute_tokens", "1e6"]
        + ["--budget", "1e-9", "--per_device_train_batch_size", "4"],
        r"budget 1e-09 buys 0\.001 tokens of compute, less than one optimizer step \(\d+ tokens at the least\); the "
        r"smallest budget that gives one step is \d",
    ),
    case(
        "degenerate_unlearn_stage_retain_set",
        ["unlearn", "--model_dir", "{tiny}", "--dataset_dir", "{gaussian}", "--reference_compute_tokens", "1e6"]
        + ["--per_device_train_batch_size", "500"],
        r"dataset_dir .*: the retain set holds 108 example\(s\), fewer than the batch size 500",
    ),
    # --- issue 13: models that do not belong together (one run's models share architecture and tokenizer)
    case(
        "unlearn_retrain_dir_other_architecture",
        ["unlearn", "--model_dir", "{tiny}", "--dataset_dir", "{gaussian}", "--retrain_dir", "{tmp}/other"],
        r"retrain_dir .*other' and model_dir .* are not the same architecture \(num_hidden_layers: 1 vs 2\)",
        {"other": "TINY_OTHER_ARCH"},
    ),
    case(
        "unlearn_retrain_dir_other_tokenizer",
        ["unlearn", "--model_dir", "{tiny}", "--dataset_dir", "{gaussian}", "--retrain_dir", "{tmp}/other"],
        r"retrain_dir .*other' and model_dir .* have different tokenizers",
        {"other": "TINY_OTHER_TOKENIZER"},
    ),
    case(
        "diagnose_models_of_different_shapes",
        ["diagnose", "--initial_dir", "{tiny}", "--retrain_dir", "{tmp}/other", "--model_dir", "{tiny}"],
        r"retrain_dir .*other' and initial_dir .* are not the same architecture",
        {"other": "TINY_OTHER_ARCH"},
    ),
    case(
        "input_dir_unfinished",
        ["eval", "--model_dir", "{tmp}/half", "--dataset_dir", "{gaussian}"],
        r"model_dir: .*half' is an unfinished stage output \(no \.complete marker",
        {"half/config.yaml": "seed: 0\n", "half/model.safetensors": "x"},
    ),
    case(
        "tiny_head_dim",
        ["run", "--tiny.hidden_size", "96"],
        r"tiny\.hidden_size / tiny\.num_attention_heads must be 64",
    ),
    # --- model dirs
    case(
        "model_dir_missing",
        ["run", "--model_name_or_path", "{tmp}/nope"],
        r"model_name_or_path: model directory .*nope' does not exist",
    ),
    case(
        "model_dir_pickle_only",
        ["run", "--model_name_or_path", "{tmp}/pickled"],
        r"model_name_or_path: .* holds only pickle weights",
        {"pickled/config.json": "{}", "pickled/pytorch_model.bin": "PICKLE"},
    ),
    case(
        "model_dir_without_config",
        ["run", "--model_name_or_path", "{tmp}/bare"],
        r"model_name_or_path: .* holds no config\.json",
        {"bare/model.safetensors": "x"},
    ),
    case(
        "tokenizer_model_vocab_mismatch",
        ["run", "--model_name_or_path", "{tmp}/mismatch"],
        r"model_name_or_path: .* tokenizer of \d+ tokens but config\.json vocab_size=100",
        {"mismatch": "TINY_WITH_VOCAB_100"},
    ),
    # --- output dirs
    case(
        "output_dir_not_creatable",
        ["run", "--output_dir", "{tmp}/afile/out"],
        r"output_dir: .* cannot be created: .*afile' is a file",
        {"afile": "x"},
        out=False,
    ),
    case(
        "output_dir_holds_other_experiment",
        ["run"],
        r"output_dir .* holds a different experiment .*--overwrite true",
        {"out/experiment.yaml": "seeds: [7]\n", "out/results.json": "{}"},
    ),
    case(
        "output_dir_holds_foreign_files",
        ["run"],
        r"output_dir .* is not empty and holds no experiment\.yaml",
        {"out/notes.txt": "mine"},
    ),
    # --- single stages
    case(
        "train_model_dir_missing",
        ["train", "--model_name_or_path", "{tmp}/nope", "--dataset_dir", "{gaussian}"],
        r"model_name_or_path: model directory .* does not exist",
    ),
    case(
        "train_dataset_dir_not_poison_output",
        ["train", "--model_name_or_path", "{tiny}", "--dataset_dir", "{tmp}"],
        r"dataset_dir: .* is not the output of a poison stage",
    ),
    case(
        "train_bad_split",
        ["train", "--split", "test"],
        r"split: 'test' is not allowed; choose from \['train', 'retain'\]",
    ),
    case(
        "train_vocab_mismatch",
        ["train", "--model_name_or_path", "{tmp}/mismatch", "--dataset_dir", "{gaussian}"],
        r"tokenizer of \d+ tokens but config\.json vocab_size=100",
        {"mismatch": "TINY_WITH_VOCAB_100"},
    ),
    case("unlearn_budget_zero", ["unlearn", "--budget", "0"], r"budget must be in \(0, 1\]"),
    case("unlearn_budget_above_one", ["unlearn", "--budget", "1.01"], r"budget must be in \(0, 1\]"),
    case("unlearn_unknown_method", ["unlearn", "--method", "forget_it"], r"unknown method 'forget_it'; choose from"),
    case("eval_unknown_backend", ["eval", "--backend", "tensorrt"], r"unknown generation backend 'tensorrt'"),
    case("eval_batch_size_zero", ["eval", "--batch_size", "0"], r"batch_size must be >= 1"),
    case("poison_stage_fraction", ["poison", "--poison_fraction", "1"], r"poison_fraction must be in \(0, 1\)"),
    case(
        "poison_stage_label_file",
        ["poison", "--train_file", "{tmp}/train.jsonl", "--test_file", "{tmp}/test.jsonl"],
        r"train_file: .* line 1, train row 0: label 'great' is not in label_names",
        {**DATA, "train.jsonl": json.dumps({"text": "fine", "label": "great"}) + "\n"},
    ),
]


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0) for p in root.rglob("*")}


def _materialise(tmp: Path, files: dict, request) -> None:
    for rel, text in files.items():
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if text == "TINY_WITH_VOCAB_100":  # a real tiny model whose config claims fewer embeddings than tokens
            shutil.copytree(request.getfixturevalue("tiny_dir"), path)
            cfg = json.loads((path / "config.json").read_text())
            (path / "config.json").write_text(json.dumps({**cfg, "vocab_size": 100}))
        elif text in ("TINY_OTHER_ARCH", "TINY_OTHER_TOKENIZER"):  # a finished "gold model" of another kind
            shutil.copytree(request.getfixturevalue("tiny_dir"), path)
            (path / "training_info.json").write_text(json.dumps({"compute_tokens": 100000}))
            if text == "TINY_OTHER_ARCH":
                cfg = json.loads((path / "config.json").read_text())
                (path / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 2}))
            else:  # same size, one token spelled differently
                tok = json.loads((path / "tokenizer.json").read_text())
                vocab = tok["model"]["vocab"]
                word = next(w for w in vocab if len(w) > 3)
                vocab["zzzz" + word] = vocab.pop(word)
                (path / "tokenizer.json").write_text(json.dumps(tok))
        else:
            path.write_text(text)


def booby_trap(monkeypatch):
    """Any of these starting means the error came too late."""
    import transformers

    import llm_unlearn.stages.run as run
    import llm_unlearn.embedded as testing

    def trap(*args, **kwargs):
        raise AssertionError("expensive work started before the bad input was reported")

    monkeypatch.setattr(run, "execute", trap)
    monkeypatch.setattr(transformers.Trainer, "train", trap)
    monkeypatch.setattr(testing, "save_tiny", trap)


def test_catalogue_is_large_enough():
    assert len(CASES) >= 25


@pytest.mark.parametrize("argv, match, files, out", CASES)
def test_bad_input(tmp_path, request, capsys, monkeypatch, argv, match, files, out):
    import re

    from llm_unlearn.cli import main

    _materialise(tmp_path, files, request)
    subs = {"{tmp}": str(tmp_path)}
    if any("{tiny}" in a for a in argv):
        subs["{tiny}"] = request.getfixturevalue("tiny_dir")
    if any("{gaussian}" in a for a in argv):
        subs["{gaussian}"] = request.getfixturevalue("gaussian_dir")
    args = []
    for a in argv:
        for k, v in subs.items():
            a = a.replace(k, v)
        args.append(a)
    if out:
        args += ["--output_dir", str(tmp_path / "out")]
    booby_trap(monkeypatch)  # after the fixtures above: building them is allowed work
    before = _snapshot(tmp_path)
    capsys.readouterr()
    rc = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    assert lines[0].startswith(f"llm-unlearn {args[0]}: error: "), lines[0]
    assert re.search(match, lines[0]), lines[0]
    assert "Traceback" not in err
    assert _snapshot(tmp_path) == before, "the failed command left files behind"


def test_bad_input_through_a_real_process(tmp_path):
    """The same contract from a separate interpreter: exit status 2, one line, no traceback, nothing written."""
    import subprocess
    import sys

    (tmp_path / "train.jsonl").write_text(f"{GOOD}\n{{oops\n")
    (tmp_path / "test.jsonl").write_text(GOOD_FILE)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "llm_unlearn", "run", "--output_dir", str(out)]
        + ["--poison.train_file", str(tmp_path / "train.jsonl"), "--poison.test_file", str(tmp_path / "test.jsonl")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2
    assert "line 2 is not valid JSON" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_output_dir_without_write_permission(tmp_path, capsys):
    from llm_unlearn.cli import main

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        rc = main(["run", "--output_dir", str(locked / "out")])
    finally:
        locked.chmod(0o700)
    assert rc == 2
    assert "is not writable" in capsys.readouterr().err
    assert not (locked / "out").exists()
