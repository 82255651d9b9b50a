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


def read_manifest(dataset_dir: str, key: str = "dataset_dir", data: str = "dataset/dataset_dict.json") -> dict:
    """The manifest of a poison stage's output (a ConfigError if ``dataset_dir`` is not one, or it does not parse);
    ``data``: the file the task's poison stage writes its data to."""
    import json

    p = Path(dataset_dir)
    if not (p / data).is_file() or not (p / "manifest.json").is_file():
        shown = data.split("/")[0] + "/" if "/" in data else data
        raise ConfigError(
            f"{key}: {str(dataset_dir)!r} is not the output of a poison stage (no {shown} + manifest.json)"
        )
    try:
        manifest = json.loads((p / "manifest.json").read_text())
    except (ValueError, OSError) as e:
        raise ConfigError(f"{key}: {str(p / 'manifest.json')!r} does not parse ({e}); redo the poison stage") from e
    if not isinstance(manifest, dict):
        raise ConfigError(f"{key}: {str(p / 'manifest.json')!r} is not a poison manifest; redo the poison stage")
    return manifest


def load_dataset_dir(dataset_dir: str, key: str = "dataset_dir"):
    """The ``DatasetDict`` a poison stage wrote, plus its manifest."""
    import datasets

    manifest = read_manifest(dataset_dir, key)
    return datasets.load_from_disk(str(Path(dataset_dir) / "dataset")), manifest


# config.json keys that do not make two checkpoints of one architecture different models.
_NOT_ARCHITECTURE = {
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
    "architectures",
    "auto_map",
    "output_attentions",
    "output_hidden_states",
}


def check_same_model(dirs: dict[str, str | None]) -> None:
    """Models that one run compares (initial, gold, unlearned) must share architecture and tokenizer: a pair that does
    not would compare parameters of different shapes, or token counts of two tokenizers. Checked from the saved
    files alone (config.json, tokenizer.json), before any work; dirs without them (adapters, Hub ids) are skipped."""
    import hashlib
    import json

    archs: dict[str, tuple[str, dict]] = {}
    tokenizers: dict[str, tuple[str, str]] = {}
    for key, path in dirs.items():
        if not path:
            continue
        p = Path(path)
        cfg_file, tok_file = p / "config.json", p / "tokenizer.json"
        if cfg_file.is_file():
            try:
                arch = {k: v for k, v in json.loads(cfg_file.read_text()).items() if k not in _NOT_ARCHITECTURE}
            except (ValueError, OSError) as e:
                raise ConfigError(f"{key}: {str(cfg_file)!r} does not parse ({e})") from e
            archs[key] = (path, arch)
            check_same_architecture(archs, "architecture and tokenizer")
        if tok_file.is_file():
            try:  # the vocabulary and merges, not settings such as truncation that a save may record
                tok = json.loads(tok_file.read_text())
            except (ValueError, OSError) as e:
                raise ConfigError(f"{key}: {str(tok_file)!r} does not parse ({e})") from e
            vocab = json.dumps([tok.get("model"), tok.get("added_tokens")], sort_keys=True)
            digest = hashlib.sha256(vocab.encode()).hexdigest()
            for other, (other_path, other_digest) in tokenizers.items():
                if digest != other_digest:
                    raise ConfigError(
                        f"{key} {path!r} and {other} {other_path!r} have different tokenizers (tokenizer.json); the "
                        "models of one run must share architecture and tokenizer"
                    )
            tokenizers[key] = (path, digest)


def check_same_architecture(archs: dict[str, tuple[str, dict]], shared: str) -> None:
    """The models of one run (key -> (dir, the description of its architecture)) must all be described alike: a
    ConfigError names the first that differs from the first one, how (up to three keys), and what they must share."""
    (first, (first_path, first_arch)), *rest = archs.items()
    for key, (path, arch) in rest:
        diff = sorted(k for k in arch.keys() | first_arch.keys() if arch.get(k) != first_arch.get(k))
        if diff:
            shown = ", ".join(f"{k}: {first_arch.get(k)!r} vs {arch.get(k)!r}" for k in diff[:3])
            raise ConfigError(
                f"{key} {str(path)!r} and {first} {str(first_path)!r} are not the same architecture ({shown}); the "
                f"models of one run must share {shared}"
            )


# --- Models that are plain torch modules (the image track's classifiers): their weights + what rebuilds them ---

MODULE_WEIGHTS, MODULE_CONFIG = "model.safetensors", "model_config.json"


def save_module(model, out: str | Path, description: dict) -> None:
    """``model.safetensors`` (weights and buffers) + ``model_config.json`` (``description``: what rebuilds the module,
    see :func:`load_module`), each written atomically; no pickles."""
    import json

    from .files import atomic_save_tensors, atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / MODULE_WEIGHTS)
    atomic_write_text(out / MODULE_CONFIG, json.dumps(description, indent=2) + "\n")


def module_description(model_dir: str | Path, key: str = "model_dir") -> dict:
    """The description a :func:`save_module` dir holds, or a ConfigError naming ``key``."""
    import json

    d = Path(model_dir)
    if not (d / MODULE_WEIGHTS).is_file() or not (d / MODULE_CONFIG).is_file():
        raise ConfigError(
            f"{key}: {str(d)!r} holds no saved model ({MODULE_WEIGHTS} + {MODULE_CONFIG}); is it a train output?"
        )
    try:
        desc = json.loads((d / MODULE_CONFIG).read_text())
    except (ValueError, OSError) as e:
        raise ConfigError(f"{key}: {str(d / MODULE_CONFIG)!r} does not parse ({e})") from e
    if not isinstance(desc, dict):
        raise ConfigError(f"{key}: {str(d / MODULE_CONFIG)!r} is not a model description")
    return desc


def load_module(model_dir: str | Path, build, key: str = "model_dir"):
    """``build(description)`` with the weights of a :func:`save_module` dir loaded (every tensor must match)."""
    from safetensors.torch import load_file

    model = build(module_description(model_dir, key))
    model.load_state_dict(load_file(str(Path(model_dir) / MODULE_WEIGHTS)), strict=True)
    return model


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
