"""Loading models, tokenizers and the poisoned dataset with the project's safety rules: safetensors only,
``trust_remote_code`` off unless asked, clear errors for missing or pickle-only model dirs."""

from __future__ import annotations

from pathlib import Path

from .configs import ConfigError


def check_model_path(path: str, key: str = "model_name_or_path") -> None:
    """A local directory must exist and hold safetensors weights; anything that is not a local path is a Hub id."""
    p = Path(path)
    looks_local = p.is_absolute() or path.startswith((".", "~")) or p.exists()
    if not looks_local:
        return
    if not p.is_dir():
        raise ConfigError(f"{key}: model directory {path!r} does not exist")
    if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
        raise ConfigError(f"{key}: {path!r} holds no config.json (not a saved model)")
    has_st = any(p.glob("*.safetensors"))
    has_pickle = any(p.glob("*.bin")) or any(p.glob("*.pt")) or any(p.glob("*.pth"))
    if not has_st and has_pickle:
        raise ConfigError(
            f"{key}: {path!r} holds only pickle weights (.bin/.pt); refusing to unpickle them. Convert to safetensors."
        )
    if not has_st:
        raise ConfigError(f"{key}: {path!r} holds no *.safetensors weights")
    check_vocab_files(p, key)


def check_vocab_files(p: Path, key: str) -> None:
    """Tokenizer vs embedding size from the saved files alone (no weights loaded), so a mismatched pair fails before
    any work. Only the plain layout is checked (``config.json`` with ``vocab_size`` + ``tokenizer.json``); anything
    else is left to :func:`check_vocab` after loading."""
    import json

    cfg_file, tok_file = p / "config.json", p / "tokenizer.json"
    if not (cfg_file.is_file() and tok_file.is_file()):
        return
    try:
        n_embed = json.loads(cfg_file.read_text()).get("vocab_size")
        from tokenizers import Tokenizer

        n_tok = Tokenizer.from_file(str(tok_file)).get_vocab_size(with_added_tokens=True)
    except Exception as e:  # json, tokenizers and OS errors alike mean the same thing to the user: unreadable files
        raise ConfigError(f"{key}: {str(p)!r} holds an unreadable config.json or tokenizer.json: {e}") from e
    if isinstance(n_embed, int) and n_tok > n_embed:
        raise ConfigError(
            f"{key}: {str(p)!r} has a tokenizer of {n_tok} tokens but config.json vocab_size={n_embed}: "
            "the model and tokenizer do not belong together (the tokenizer must not exceed vocab_size)"
        )


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    check_model_path(path)  # a missing or pickle-only dir is reported as such, not as a failed Hub lookup
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:  # GPT-2 and Llama tokenizers ship without a pad token
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    path: str, dtype: str = "float32", trust_remote_code: bool = False, attn_implementation: str | None = None
):
    import torch
    from transformers import AutoModelForCausalLM

    check_model_path(path)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    return AutoModelForCausalLM.from_pretrained(
        path,
        dtype=torch_dtype,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
        attn_implementation=attn_implementation,
    )


def load_dataset_dir(dataset_dir: str, key: str = "dataset_dir"):
    """The ``DatasetDict`` a poison stage wrote, plus its manifest."""
    import datasets

    from .utils import read_json

    p = Path(dataset_dir)
    if not (p / "dataset" / "dataset_dict.json").is_file() or not (p / "manifest.json").is_file():
        raise ConfigError(f"{key}: {dataset_dir!r} is not the output of a poison stage (no dataset/ + manifest.json)")
    return datasets.load_from_disk(str(p / "dataset")), read_json(p / "manifest.json")


def check_vocab(model, tokenizer) -> None:
    n_embed = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > n_embed:
        raise ConfigError(
            f"tokenizer has {len(tokenizer)} tokens but the model's embedding has only {n_embed} rows: "
            "model and tokenizer do not belong together"
        )


def tokenize_split(ds, tokenizer, max_length: int):
    """Tokenise a prompt/completion split; keeps ``noise_seed``/``index`` for the Gaussian attack and audits."""
    from .tasks.causal_lm import tokenize_example

    keep = {"noise_seed", "index"}

    def fn(row):
        return tokenize_example(tokenizer, row["prompt"], row["completion"], max_length)

    return ds.map(fn, remove_columns=[c for c in ds.column_names if c not in keep], desc=None)
