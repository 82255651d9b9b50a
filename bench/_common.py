"""Shared helpers of the benchmarks: timing (medians of repeats), the machine description, the tiny LLM set-up."""

from __future__ import annotations

import os
import platform
import statistics
import time


def timeit(fn, repeats: int = 3, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` over ``repeats`` runs (after ``warmup`` untimed runs), and all the times."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    threads = torch.get_num_threads()
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({threads} threads), {gpu}, {load()}"


def load() -> str:
    """The 1/5/15-minute load averages: on a shared machine, how many other jobs competed for the cores."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load unknown"
    return f"load {one:.1f}/{five:.1f}/{fifteen:.1f}"


def tiny_llm(seed: int = 0, **shape):
    """The embedded tokenizer and a random-init tiny Llama (the default shape unless overridden)."""
    from llm_unlearn.embedded import TinyModelConfig, build_tiny_model, build_tiny_tokenizer

    cfg = TinyModelConfig(**shape)
    tok = build_tiny_tokenizer(cfg.vocab_size, cfg.corpus_reviews)
    return tok, build_tiny_model(tok, cfg, seed=seed).eval()


def review_rows(n: int, seed: int = 0, min_sentences: int = 1, max_sentences: int = 2) -> list[dict]:
    """``n`` prompt/completion rows of the embedded reviews, formatted as the poison stage formats them."""
    from llm_unlearn.tasks.reviews import generate_reviews

    rows = generate_reviews(n, seed=seed, min_sentences=min_sentences, max_sentences=max_sentences)
    return [{"prompt": f"Review: {r['text']}\nSentiment:", "completion": f" {r['label']}"} for r in rows]


def print_table(title: str, rows: list[tuple], header: tuple) -> None:
    print(f"\n{title}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


def device_arg(name: str):
    """``torch.device`` of a ``--device`` option; an explicit error when that device is not available here."""
    import torch

    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available (torch {torch.__version__})")
    if device.type == "cuda":
        # Exact float32 on both sides (cuDNN convolutions default to TF32 on Ampere and later), so the agreement
        # checks compare the same arithmetic; the speed comparison stays fair as both sides run it.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return device


def sync(device) -> None:
    """Wait for the device's queued work (a no-op on CPU), so a timed call ends when its result exists."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def write_json(path: str | None, data: dict) -> None:
    """The benchmark's results as JSON (``--json``), for scripts that collect them."""
    if path:
        import json

        with open(path, "w") as f:
            json.dump(data, f, indent=1)
