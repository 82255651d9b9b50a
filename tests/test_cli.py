from __future__ import annotations

import subprocess
import sys


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)


def test_import_is_lazy():
    """`import llm_unlearn` and `--help` must not pay for torch/transformers."""
    proc = _run("-c", "import sys, llm_unlearn, llm_unlearn.cli; print('torch' in sys.modules)")
    assert proc.stdout.strip() == "False"


def test_help_lists_commands():
    proc = _run("-m", "llm_unlearn", "--help")
    assert proc.returncode == 0
    for cmd in ("run", "poison", "train", "unlearn", "eval", "report", "tiny"):
        assert f"  {cmd}" in proc.stdout


def test_tiny_builds_loadable_model(tmp_path):
    out = tmp_path / "tiny"
    proc = _run(
        "-m",
        "llm_unlearn",
        "tiny",
        "--output_dir",
        str(out),
        "--tiny.hidden_size",
        "64",
        "--tiny.num_attention_heads",
        "1",
        "--tiny.num_hidden_layers",
        "1",
        "--tiny.corpus_reviews",
        "200",
        "--tiny.vocab_size",
        "400",
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    from llm_unlearn.modeling import load_model, load_tokenizer

    tok, model = load_tokenizer(str(out)), load_model(str(out))
    assert model.config.head_dim == 64
    assert len(tok) <= model.get_input_embeddings().weight.shape[0]
    assert len(tok.tokenize(" positive")) == 1 and len(tok.tokenize(" negative")) == 1
    assert tok("Review: fine\nSentiment:")["input_ids"][0] == tok.bos_token_id


def test_tiny_rejects_bad_head_dim(tmp_path):
    proc = _run(
        "-m",
        "llm_unlearn",
        "tiny",
        "--output_dir",
        str(tmp_path / "t"),
        "--tiny.hidden_size",
        "32",
        "--tiny.num_attention_heads",
        "2",
    )
    assert proc.returncode == 2
    assert "must be 64" in proc.stderr
    assert not (tmp_path / "t").exists()


def test_pickle_only_model_dir_is_refused(tmp_path):
    from llm_unlearn.configs import ConfigError
    from llm_unlearn.modeling import check_model_path

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    try:
        check_model_path(str(tmp_path))
    except ConfigError as e:
        assert "pickle" in str(e)
    else:
        raise AssertionError("a pickle-only model dir was accepted")


def test_missing_model_dir_is_refused(tmp_path):
    from llm_unlearn.configs import ConfigError
    from llm_unlearn.modeling import check_model_path

    try:
        check_model_path(str(tmp_path / "nope"))
    except ConfigError as e:
        assert "does not exist" in str(e)
    else:
        raise AssertionError("a missing model dir was accepted")
