"""Generation speed: batched HF greedy generation (left padding, KV cache; ``llm_unlearn.generation.hf``) vs the same
function one prompt at a time, on the embedded tiny Llama (head_dim 64) and embedded-review prompts. Both sides must
produce the same token ids. Target: >= 5x. When ``vllm`` is importable, vLLM (the project's vllm backend, one engine
start, timed with and without that start) is compared with batched HF on the same prompts.

    python bench/generation.py [--n 512] [--batch 64] [--max_new_tokens 2] [--repeats 3] [--threads N] [--device cuda]

``--device cuda``: the model lives on the device (``generate_ids`` moves each batch's ids there); every timed call
ends with the generated ids back on the CPU as lists, so the ratio compares finished work.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import torch
from _common import device_arg, machine, print_table, review_rows, sync, timeit, tiny_llm, write_json


def vllm_steady_state(model_dir: str, prompts, max_new_tokens: int, stops, repeats: int) -> float:
    """Median seconds of ``LLM.generate`` on a warm engine, same settings as the project's vllm backend."""
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=model_dir, dtype="float32", seed=0, enforce_eager=True, max_model_len=256)
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=stops, detokenize=False)
    batch = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    t, _ = timeit(lambda: llm.generate(batch, params, use_tqdm=False), repeats)
    return t  # the engine goes with this function's frame


def main() -> None:
    from llm_unlearn.generation import stop_token_ids
    from llm_unlearn.generation.hf import generate_ids
    from llm_unlearn.tasks.causal_lm import tokenize_prompt

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=512, help="prompts")
    parser.add_argument("--batch", type=int, default=64, help="prompts per batch on the batched side")
    parser.add_argument("--max_new_tokens", type=int, default=2, help="as in the tiny recipes (label + eos)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N: where the model lives")
    parser.add_argument("--attn_implementation", default="eager", help="eager | sdpa")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = device_arg(args.device)
    print(f"machine: {machine()}; device: {device}")
    tok, model = tiny_llm()
    model.set_attn_implementation(args.attn_implementation)  # eager: what the tiny recipes use on CPU
    model.to(device)
    prompts = [tokenize_prompt(tok, r["prompt"], 254) for r in review_rows(args.n, seed=1)]

    def batched():
        out = generate_ids(model, tok, prompts, args.max_new_tokens, args.batch)
        sync(device)  # the ids are already lists on the CPU; nothing may still be queued
        return out

    def one_by_one():
        out = generate_ids(model, tok, prompts, args.max_new_tokens, 1)
        sync(device)
        return out

    a, b = batched(), one_by_one()
    # A random-init model's greedy argmax can flip between near-tied logits when padding changes the kernels' sums:
    # report agreement rather than demand bit-identity.
    agree = sum(x == y for x, y in zip(a, b)) / len(a)
    t_batched, _ = timeit(batched, args.repeats)
    t_single, _ = timeit(one_by_one, args.repeats, warmup=0)
    rows = [
        ("HF, one prompt at a time", f"{t_single:.2f}", f"{args.n / t_single:.0f}", "1.0x"),
        (
            f"HF, batched ({args.batch})",
            f"{t_batched:.2f}",
            f"{args.n / t_batched:.0f}",
            f"{t_single / t_batched:.1f}x",
        ),
    ]
    record = dict(
        machine=machine(),
        device=str(device),
        prompts=args.n,
        batch=args.batch,
        max_new_tokens=args.max_new_tokens,
        repeats=args.repeats,
        single_s=t_single,
        batched_s=t_batched,
        speedup=t_single / t_batched,
        agreement=agree,
        vllm=None,
        target=5.0,
    )
    if importlib.util.find_spec("vllm") is not None:
        from llm_unlearn.generation import vllm as vllm_backend

        stops = stop_token_ids(tok, model.generation_config.eos_token_id)
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(Path(d), safe_serialization=True)
            tok.save_pretrained(Path(d))
            # The project's backend: a subprocess with one engine start per call (a fixed cost per evaluate stage).
            t0 = time.perf_counter()
            sets = vllm_backend.generate_ids(d, [prompts], args.max_new_tokens, stops)
            t_backend = time.perf_counter() - t0
            t_vllm = vllm_steady_state(d, prompts, args.max_new_tokens, stops, args.repeats)
        agree_v = sum(x == y for x, y in zip(a, sets[0])) / len(a)
        rows.append(
            (
                "vLLM backend (engine start + run)",
                f"{t_backend:.2f}",
                f"{args.n / t_backend:.0f}",
                f"{t_single / t_backend:.1f}x",
            )
        )
        rows.append(
            (
                "vLLM engine, warm (generate only)",
                f"{t_vllm:.2f}",
                f"{args.n / t_vllm:.0f}",
                f"{t_single / t_vllm:.1f}x",
            )
        )
        print(f"vLLM agrees with batched HF on {agree_v:.1%} of prompts")
        record["vllm"] = dict(backend_s=t_backend, warm_s=t_vllm, agreement=agree_v)
    else:
        print("vLLM: skipped (vllm is not importable; install the vllm extra to compare)")
    print_table(
        f"greedy generation of {args.max_new_tokens} tokens for {args.n} prompts (medians of {args.repeats})",
        rows,
        ("side", "seconds", "prompts / s", "speed-up vs one at a time"),
    )
    print(f"\nbatched and one-at-a-time outputs agree on {agree:.1%} of prompts")
    write_json(args.json, record)


if __name__ == "__main__":
    main()
