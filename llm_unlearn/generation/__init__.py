"""Generation backends behind one interface: ``generate(model_dir, prompt_ids, max_new_tokens) -> list[str]``.

``hf`` (batched, left-padded, KV cache; the CPU default) is here; ``vllm`` is an optional extra."""

from __future__ import annotations

BACKENDS = ("hf", "vllm")


def check_backend(name: str) -> None:
    from ..configs import ConfigError

    if name not in BACKENDS:
        raise ConfigError(f"backend: unknown generation backend {name!r}; choose from {list(BACKENDS)}")
