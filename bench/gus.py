"""GUS audit speed: batched one-backward ``gaussian_scores`` vs a per-sample loop over the same poisons.

Each sample's loss depends only on its own input, so one backward pass of the summed batch loss yields every
per-sample input gradient; the loop pays one forward+backward per poison instead. Both sides score the same poisons
with the same noises on the same model, and the script checks that they agree before it prints the ratio.

    python bench/gus.py [--n 1024] [--batch 128] [--repeats 3]

Cases: the tiny LLM (the embedded default's shape: hidden 128, 2 layers) on embedded-review prompts, and, when the
``image_track`` package is importable, its tiny CNN on 3x32x32 images. Target: >= 20x.
"""

from __future__ import annotations

import argparse

import torch
from _common import machine, print_table, review_rows, timeit, tiny_llm

from llm_unlearn.metrics import gaussian_scores


def llm_case(n: int, batch: int):
    """(batched_fn, loop_fn) over ``n`` poisons of the tiny LLM; both return the scores in poison order."""
    from llm_unlearn.attacks.gaussian import batch_prompt_noise
    from llm_unlearn.tasks.causal_lm import CompletionCollator, embed, sequence_nll, tokenize_example

    tok, model = tiny_llm()
    model.set_attn_implementation("eager")  # what the tiny recipes use: the fastest on CPU at this size
    rows = review_rows(n)
    feats = [tokenize_example(tok, r["prompt"], r["completion"], 256) for r in rows]
    for i, f in enumerate(feats):
        f["noise_seed"] = 1000 + i
    # Batches of similar lengths waste little compute on padding (scores are per poison: the order is irrelevant).
    feats.sort(key=lambda f: len(f["input_ids"]))
    collate = CompletionCollator(tok.pad_token_id)
    hidden = model.config.hidden_size

    def prepare(chunk):
        b = collate(chunk)
        with torch.no_grad():
            clean = embed(model, b["input_ids"]).float()
        width = clean.shape[1]
        noise = batch_prompt_noise(b["noise_seed"].tolist(), b["prompt_len"].tolist(), width, hidden, 1.0)
        mask = (torch.arange(width)[None, :] < b["prompt_len"][:, None])[..., None].float()
        return b, clean, noise, mask

    # Inputs are built once, outside the timed region: both sides then time the audit only.
    batched_inputs = [prepare(feats[i : i + batch]) for i in range(0, n, batch)]
    single_inputs = [prepare([f]) for f in feats]

    def score(inputs):
        out = []
        for b, clean, noise, mask in inputs:
            out.append(gaussian_scores(lambda e, b=b: sequence_nll(model, b, e), clean, noise, 1.0, mask))
        return torch.cat(out)

    return (lambda: score(batched_inputs)), (lambda: score(single_inputs))


def cnn_case(n: int, batch: int):
    """The same comparison on the image track's tiny CNN, if that package is installed; None otherwise."""
    try:
        from image_track.attacks import batch_pixel_noise
        from image_track.models import ModelConfig, build_model
    except ImportError:
        return None
    import torch.nn.functional as F

    shape = (3, 32, 32)
    model = build_model(ModelConfig(arch="cnn"), shape, 10, [0.5] * 3, [0.25] * 3, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand((n, *shape), generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    noise = batch_pixel_noise(list(range(n)), shape, 0)

    def loss_fn(z, yy):
        return F.cross_entropy(model(pixel_values=z).logits.float(), yy, reduction="none")

    def score(step):
        out = []
        for i in range(0, n, step):
            sl = slice(i, i + step)
            out.append(gaussian_scores(lambda z, yy=y[sl]: loss_fn(z, yy), x[sl], noise[sl], 1.0))
        return torch.cat(out)

    return (lambda: score(batch)), (lambda: score(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1024, help="poisons scored (>= 1000 for the issue's target)")
    parser.add_argument("--batch", type=int, default=128, help="poisons per backward pass on the batched side")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per side (the median is reported)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    results = []
    for name, make in (("tiny LLM (Llama 128x2)", llm_case), ("tiny CNN (image_track, 3x32x32)", cnn_case)):
        case = make(args.n, args.batch)
        if case is None:
            print(f"{name}: skipped (image_track is not importable)")
            continue
        batched, loop = case
        a, b = batched(), loop()
        # Same poisons, same noises: the scores agree up to float32 summation order (padding changes the kernels).
        err = float((a - b).abs().max())
        if err > 1e-3:
            raise SystemExit(f"{name}: batched and per-sample scores differ by {err:.2e}")
        t_batched, _ = timeit(batched, args.repeats)
        t_loop, _ = timeit(loop, args.repeats, warmup=0)
        results.append((name, args.n, f"{t_batched:.3f}", f"{t_loop:.3f}", f"{t_loop / t_batched:.1f}x", f"{err:.1e}"))
    print_table(
        f"GUS scores of {args.n} poisons: batched (one backward per {args.batch}) vs one backward per poison "
        f"(medians of {args.repeats})",
        results,
        ("model", "poisons", "batched s", "per-sample s", "speed-up", "max |diff|"),
    )


if __name__ == "__main__":
    main()
