"""The canary audit's cost per canary vs one training step's forward+backward per example, side by side.

The audit (``llm_unlearn.canaries.canary_scores``, what ``llm-unlearn audit`` runs) pays one forward and one
input-gradient backward per canary batch, with the LM head only at completion-predicting positions, plus the
regeneration of 1 + ``draws`` noises per canary. A training step on the same rows and batch size pays a full forward
(LM head everywhere), the loss, and a backward into every weight. The floor is about two thirds of a training step.
Target: <= 0.8x.

    OMP_NUM_THREADS=1 python bench/audit.py [--n 256] [--batch 32] [--draws 10] [--repeats 3] [--shape default|small]

Shapes: ``default`` is the embedded tiny Llama (hidden 128, 2 layers); ``small`` a wider one (hidden 512, 4 layers,
8 heads) where matmuls dominate more.
"""

from __future__ import annotations

import argparse

import torch
from _common import load, machine, print_table, review_rows, timeit, tiny_llm, write_json

SHAPES = {
    "default": {},
    "small": {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "intermediate_size": 2048},
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="canaries")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--draws", type=int, default=10, help="fresh noises per canary (the audit's default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="default")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the figures here")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    from llm_unlearn.canaries import audit_rows, canary_scores
    from llm_unlearn.tasks.causal_lm import CompletionCollator, length_sorted_batches, tokenize_example

    tok, model = tiny_llm(**SHAPES[a.shape])
    toks = [tokenize_example(tok, r["prompt"], r["completion"], 256) for r in review_rows(a.n, seed=1)]
    canaries = [
        {"noise_seed": i, "input_ids": t["input_ids"], "prompt_len": t["prompt_len"]} for i, t in enumerate(toks)
    ]
    rows = audit_rows(canaries)
    collate = CompletionCollator(tok.pad_token_id)
    batches = [
        collate([rows[i] for i in idx]) for idx in length_sorted_batches([len(r["input_ids"]) for r in rows], a.batch)
    ]

    def audit():
        model.eval()
        canary_scores(model, rows, tok.pad_token_id, a.batch, a.draws)

    def train_steps():
        # what a training step costs on the same batches: forward (LM head at every position), loss, backward
        model.train()
        for b in batches:
            out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
            out.loss.backward()
        model.zero_grad(set_to_none=True)

    t_audit, _ = timeit(audit, a.repeats)
    t_train, _ = timeit(train_steps, a.repeats)
    ratio = t_audit / t_train
    print_table(
        f"canary audit vs training forward+backward, {a.n} canaries, batch {a.batch}, {a.draws} fresh draws, "
        f"shape {a.shape} ({machine()}, load {load()})",
        [
            ("audit (canary_scores)", f"{t_audit:.3f}", f"{1e3 * t_audit / a.n:.2f}"),
            ("training forward+backward", f"{t_train:.3f}", f"{1e3 * t_train / a.n:.2f}"),
            ("ratio (target <= 0.8x)", f"{ratio:.2f}x", ""),
        ],
        ("side", "seconds (median)", "ms / example"),
    )
    write_json(a.json, {"audit_s": t_audit, "train_s": t_train, "ratio": ratio, **vars(a)})


if __name__ == "__main__":
    main()
