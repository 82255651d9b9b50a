"""Unlearning-step overhead: the project's Trainer-based method (``build_trainer`` of the unlearn stage, method ``gd``
with a LoRA adapter) vs a bare PyTorch loop doing the same LoRA update on the same model and the same batches.

The bare loop replays the exact example order the Trainer drew, uses the same optimizer (AdamW, same lr, betas, eps,
no weight decay, the same fused kernel), the same gradient clipping and the same loss, so after the same number of
steps both adapters must be (nearly) identical: the script checks that before printing the ratio. The sides are timed
in turns (trainer, bare, trainer, ...) so that load from other jobs on a shared machine hits both alike.
Target: overhead <= 1.10x.

    python bench/unlearn_step.py [--steps 60] [--repeats 3] [--batch 32] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import load, machine, print_table


def setup(tmp: Path, batch: int):
    from llm_unlearn.modeling import load_dataset_dir, load_model, load_tokenizer, tokenize_split
    from llm_unlearn.stages.poison import PoisonConfig
    from llm_unlearn.stages.poison import main as poison
    from llm_unlearn.stages.unlearn import UnlearnConfig
    from llm_unlearn.embedded import TinyModelConfig, save_tiny

    save_tiny(tmp / "model", TinyModelConfig(), seed=0)
    pc = PoisonConfig(output_dir=str(tmp / "poison"), poison_fraction=0.1, embedded_n_train=1200, embedded_n_test=20)
    pc.validate()
    poison(pc)
    cfg = UnlearnConfig(
        model_dir=str(tmp / "model"),
        dataset_dir=str(tmp / "poison"),
        output_dir=str(tmp / "unlearn"),
        method="gd",
        per_device_train_batch_size=batch,
        attn_implementation="eager",
        progress=False,
        reference_compute_tokens=1e12,
    )
    cfg.validate()
    dd, _ = load_dataset_dir(cfg.dataset_dir)
    tok = load_tokenizer(cfg.model_dir)
    base = load_model(cfg.model_dir, attn_implementation="eager")
    forget = tokenize_split(dd["forget"], tok, cfg.max_length)
    retain = tokenize_split(dd["retain"], tok, cfg.max_length)
    return cfg, tok, base, forget, retain


class Recording(torch.utils.data.Dataset):
    """Wraps the paired dataset and records the indices the Trainer asks for, so the bare loop can replay them."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.seen.append(i)
        return self.inner[i]


def trainer_run(cfg, tok, base, forget, retain, steps: int):
    """Build the project's trainer for ``steps`` steps; returns (train_fn, trainer, recorder)."""
    from llm_unlearn.stages.unlearn import build_trainer

    torch.manual_seed(0)  # LoRA's A matrices are drawn from the global RNG: same seed on both sides
    # the trainer adds the LoRA adapter (use_peft) in its constructor
    trainer = build_trainer(cfg, copy.deepcopy(base), tok, forget, retain, budget_tokens=1e12)  # budget never binds
    trainer.args.max_steps = steps
    rec = Recording(trainer.train_dataset)
    trainer.train_dataset = rec
    return trainer.train, trainer, rec


def bare_run(cfg, tok, base, dataset, order: list[int], steps: int, fused: bool):
    """The same update in plain PyTorch: LoRA via peft, AdamW, clip, GD loss on the retain half of each batch."""
    from peft import get_peft_model

    from llm_unlearn.training import peft_config
    from llm_unlearn.tasks.causal_lm import CompletionCollator, mean_token_nll

    torch.manual_seed(0)
    model = get_peft_model(copy.deepcopy(base), peft_config(cfg))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # HF's defaults for the Trainer side: AdamW (``adamw_torch_fused`` with torch >= 2.8: ``fused``, also on CPU; the
    # unfused one is ~1.4 ms a step slower at batch 8), betas (0.9, 0.999), eps 1e-8, constant lr, no weight decay.
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=fused)
    collate = CompletionCollator(tok.pad_token_id)
    b, n = cfg.per_device_train_batch_size, len(dataset)
    # The Trainer's batches: consecutive slices of each epoch's order, the last one of an epoch shorter.
    epochs = [order[i : i + n] for i in range(0, len(order), n)]
    batches = [ep[i : i + b] for ep in epochs for i in range(0, len(ep), b)][:steps]

    def run():
        for idx in batches:
            # Only the retain half: GD never looks at the forget examples the paired dataset also yields.
            retain = collate([dataset[i]["retain"] for i in idx])
            batch = {k: retain[k] for k in ("input_ids", "attention_mask", "labels")}
            loss = mean_token_nll(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return model

    return run, model


def timed_in_turns(sides: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each side's function, run in turns (one untimed warm-up round first)."""
    for fn in sides.values():
        fn()
    times = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def lora_state(model) -> dict:
    return {k.split("base_model.model.")[-1]: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as d:
        cfg, tok, base, forget, retain = setup(Path(d), args.batch)
        # Correctness first: one Trainer run records its batches, the bare loop replays them, the adapters match.
        train, trainer, rec = trainer_run(cfg, tok, base, forget, retain, args.steps)
        train()
        order = list(rec.seen)
        fused = trainer.args.optim == "adamw_torch_fused"  # the same AdamW kernel as the Trainer's
        run, bare_model = bare_run(cfg, tok, base, rec.inner, order, args.steps, fused)
        run()
        a, b = lora_state(trainer.model), lora_state(bare_model)
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        scale = max(float(v.abs().max()) for v in a.values())
        if a.keys() != b.keys() or diff > 1e-3 * scale:
            raise SystemExit(f"the bare loop does not reproduce the Trainer's update (max diff {diff:.2e})")

        def trainer_side():
            fn, _, _ = trainer_run(cfg, tok, base, forget, retain, args.steps)
            fn()

        def trainer_build():
            trainer_run(cfg, tok, base, forget, retain, args.steps)

        def bare_side():
            fn, _ = bare_run(cfg, tok, base, rec.inner, order, args.steps, fused)
            fn()

        t = timed_in_turns({"trainer": trainer_side, "bare": bare_side, "build": trainer_build}, args.repeats)
        t_build, t_trainer, t_bare = t["build"], t["trainer"], t["bare"]
    per = lambda t: f"{1000 * t / args.steps:.1f}"  # noqa: E731
    print_table(
        f"{args.steps} LoRA GD steps, batch {args.batch} (medians of {args.repeats}; build: the trainer set-up)",
        [
            ("project Trainer (build + train)", f"{t_trainer:.2f}", per(t_trainer)),
            ("  of which building the trainer", f"{t_build:.2f}", per(t_build)),
            ("bare PyTorch loop", f"{t_bare:.2f}", per(t_bare)),
        ],
        ("side", "seconds", "ms / step"),
    )
    print(
        f"\noverhead: {t_trainer / t_bare:.2f}x (train only: {(t_trainer - t_build) / t_bare:.2f}x); "
        f"adapters agree to {diff:.1e} (max |w| {scale:.2f}); {load()} at the end"
    )


if __name__ == "__main__":
    main()
