"""GUS audit speed: batched one-backward ``gaussian_scores`` vs a per-sample loop over the same poisons.

Each sample's loss depends only on its own input, so one backward pass of the summed batch loss yields every
per-sample input gradient; the loop pays one forward+backward per poison instead. Both sides score the same poisons
with the same noises on the same model, and the script checks that they agree before it prints the ratio.

    python bench/gus.py [--n 1024] [--batch 128] [--repeats 3] [--full_logits] [--skip_cnn] [--device cuda]

Cases: the tiny LLM (the embedded default's shape: hidden 128, 2 layers) on embedded-review prompts, and, when the
``image_track`` package is importable, its tiny CNN on 3x32x32 images. Both sides run the evaluate stages' audit
losses (``gus_loss_fn``). Target: >= 20x.

``--device cuda``: the models and every input move to the device before timing; each timed call ends with the scores
on the CPU (one copy per batch, as the evaluate stage does) and a device synchronisation, so the ratio compares
finished work. TF32 is switched off there so both sides compute the same float32 arithmetic.
"""

from __future__ import annotations

import argparse

import torch
from _common import device_arg, load, machine, print_table, review_rows, sync, timeit, tiny_llm, write_json

from llm_unlearn.metrics import gaussian_scores


def llm_case(n: int, batch: int, full_logits: bool = False, device="cpu", attn: str = "eager"):
    """(batched_fn, loop_fn) over ``n`` poisons of the tiny LLM; both return the scores (on the CPU) in poison order.

    Both sides run the evaluate stage's audit loss (``gus_loss_fn``: the completion NLL with the LM head applied only
    at the positions that predict completion tokens) and its length-sorted batching; ``full_logits`` swaps in the
    previous loss (``sequence_nll``: the head at every position) to measure what the restriction saves.
    """
    from llm_unlearn.attacks.gaussian import clean_embeddings, gus_loss_fn
    from llm_unlearn.canaries import batch_prompt_noise
    from llm_unlearn.tasks.causal_lm import length_sorted_batches
    from llm_unlearn.tasks.causal_lm import CompletionCollator, sequence_nll, tokenize_example

    tok, model = tiny_llm()
    model.set_attn_implementation(attn)  # eager: what the tiny recipes use, the fastest on CPU at this size
    model.to(device)
    rows = review_rows(n)
    feats = [tokenize_example(tok, r["prompt"], r["completion"], 256) for r in rows]
    for i, f in enumerate(feats):
        f["noise_seed"] = 1000 + i
    collate = CompletionCollator(tok.pad_token_id)
    hidden = model.config.hidden_size
    loss = (lambda b: lambda e: sequence_nll(model, b, e)) if full_logits else (lambda b: gus_loss_fn(model, b))

    def prepare(idx):
        b = {k: v.to(device) for k, v in collate([feats[i] for i in idx]).items()}
        clean = clean_embeddings(model, b)
        width = clean.shape[1]
        plens = b["prompt_len"].cpu()
        noise = batch_prompt_noise(b["noise_seed"].tolist(), plens.tolist(), width, hidden, 1.0).to(device)
        mask = (torch.arange(width)[None, :] < plens[:, None])[..., None].float().to(device)
        return idx, b, clean, noise, mask

    # Inputs are built once, outside the timed region: both sides then time the audit only. The batched side groups
    # poisons of similar lengths (as attacks.gaussian.gus_scores does), so little compute goes to padding.
    batched_inputs = [prepare(idx) for idx in length_sorted_batches([len(f["input_ids"]) for f in feats], batch)]
    single_inputs = [prepare([i]) for i in range(n)]

    def score(inputs):
        out = torch.zeros(n, dtype=torch.float64)
        for idx, b, clean, noise, mask in inputs:
            out[idx] = gaussian_scores(loss(b), clean, noise, 1.0, mask).cpu()
        sync(device)
        return out

    return (lambda: score(batched_inputs)), (lambda: score(single_inputs))


def cnn_case(n: int, batch: int, device="cpu"):
    """The same comparison on the image track's tiny CNN (its evaluate stage's audit loss), if that package is
    installed; None otherwise."""
    try:
        from image_track.attacks import batch_pixel_noise
        from image_track.models import ModelConfig, build_model
        from image_track.attacks.gaussian import gus_loss_fn
    except ImportError:
        return None

    shape = (3, 32, 32)
    model = build_model(ModelConfig(arch="cnn"), shape, 10, [0.5] * 3, [0.25] * 3, seed=0).eval().to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((n, *shape), generator=g).to(device)
    y = torch.randint(0, 10, (n,), generator=g).to(device)
    noise = batch_pixel_noise(list(range(n)), shape, 0).to(device)

    def score(step):
        out = []
        for i in range(0, n, step):
            sl = slice(i, i + step)
            out.append(gaussian_scores(gus_loss_fn(model, y[sl]), x[sl], noise[sl], 1.0))
        scores = torch.cat(out).cpu()
        sync(device)
        return scores

    return (lambda: score(batch)), (lambda: score(1))


def agreement(name: str, a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    """Max |diff| of the two sides' scores and how many differ by more than 1e-4; exits when they disagree.

    Same poisons, same noises: the scores agree up to float32 summation order (batch size and padding change the
    kernels' blocking). A ReLU/max-pool network has kinks, though: a pre-activation or a pooling tie within
    round-off of its switch point moves one score by ~1e-2 (seen on the CNN: 1 poison in 1,024, and a float64
    reference sides with one of the two), so a few such outliers are tolerated, a systematic difference is not.
    """
    diff = (a - b).abs()
    err, outliers = float(diff.max()), int((diff > 1e-4).sum())
    if float(diff.median()) > 1e-5 or int((diff > 1e-3).sum()) > max(1, a.numel() // 100):
        raise SystemExit(f"{name}: batched and per-sample scores differ (max {err:.2e}, {outliers} over 1e-4)")
    return err, outliers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1024, help="poisons scored (>= 1000 for the issue's target)")
    parser.add_argument("--batch", type=int, default=128, help="poisons per backward pass on the batched side")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per side (the median is reported)")
    parser.add_argument(
        "--full_logits",
        action="store_true",
        help="LLM: the previous audit loss (LM head at every position), to measure what the restriction saves",
    )
    parser.add_argument("--skip_cnn", action="store_true", help="the LLM case only")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N: where the models and inputs live")
    parser.add_argument("--attn_implementation", default="eager", help="LLM attention: eager | sdpa")
    parser.add_argument(
        "--keep_going",
        action="store_true",
        help="when the two sides disagree, report it, time them anyway and exit with status 1 at the end",
    )
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    device = device_arg(args.device)
    print(f"machine: {machine()}; device: {device}")
    results, records, failures = [], [], []
    meta = dict(machine=machine(), device=str(device), batch=args.batch, repeats=args.repeats, target=20.0)
    llm_name = "tiny LLM (Llama 128x2" + (", full logits)" if args.full_logits else ")")
    cases = [(llm_name, lambda n, b: llm_case(n, b, args.full_logits, device, args.attn_implementation))]
    if not args.skip_cnn:
        cases.append(("tiny CNN (image_track, 3x32x32)", lambda n, b: cnn_case(n, b, device)))
    for name, make in cases:
        case = make(args.n, args.batch)
        if case is None:
            print(f"{name}: skipped (image_track is not importable)")
            continue
        batched, loop = case
        a, b = batched(), loop()
        try:
            err, outliers = agreement(name, a, b)
        except SystemExit as e:
            if not args.keep_going:
                raise
            print(f"DISAGREEMENT: {e}")
            failures.append(str(e))
            diff = (a - b).abs()
            err, outliers = float(diff.max()), int((diff > 1e-4).sum())
        t_batched, times_b = timeit(batched, args.repeats)
        t_loop, times_l = timeit(loop, args.repeats, warmup=0)
        print(f"{name}: batched {[round(t, 3) for t in times_b]} s, per-sample {[round(t, 3) for t in times_l]} s")
        row = (name, args.n, f"{t_batched:.3f}", f"{t_loop:.3f}", f"{t_loop / t_batched:.1f}x", f"{err:.1e}", outliers)
        results.append(row)
        records.append(
            dict(
                model=name,
                poisons=args.n,
                batched_s=t_batched,
                per_sample_s=t_loop,
                speedup=t_loop / t_batched,
                max_abs_diff=err,
                diffs_over_1e4=outliers,
                batched_times=times_b,
                per_sample_times=times_l,
            )
        )
        write_json(args.json, dict(meta, cases=records, failures=failures))  # after each case: a timeout keeps it
    print_table(
        f"GUS scores of {args.n} poisons: batched (one backward per {args.batch}) vs one backward per poison "
        f"(medians of {args.repeats})",
        results,
        ("model", "poisons", "batched s", "per-sample s", "speed-up", "max abs diff", "diffs > 1e-4"),
    )
    print(f"{load()} at the end")
    write_json(args.json, dict(meta, cases=records, failures=failures))
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
