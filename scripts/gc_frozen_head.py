"""Gradient canceling against a head over frozen features, fast: the README's third pass ("What decides it").

A victim whose recipe trains only the LM head (``train.trainable_modules: lm_head``) over a pretrained body solves a
convex problem on fixed features, so its training can be replayed on the features alone: this script crafts the
poisons with the package's own attacker (``gc_craft``: surrogate, GradPC target, canceling), then trains the head on
the precomputed features of the clean rows (gold) and of clean rows + perturbed poisons (initial) with the train
stage's recipe (AdamW 1e-3, 10 % warmup then cosine, 6 epochs, clipping 1), and prints the greedy answer accuracy on
the test set. On the recipe's seed 0 this replay gave the real pipeline's initial accuracy exactly (0.945).

Input: a seed dir of a ``llm-unlearn run`` with an embedded pretrained base (``tiny: {pretrain_reviews: N}``) and a
gradient-canceling poison stage, e.g. ``recipes`` settings plus ``--methods "[gd]" --seeds "[0]"``:

    .venv/bin/python scripts/gc_frozen_head.py runs/gc_frozen/seed_0 \\
        --attack_args '{"poison_labels": "flipped", "perturbation_init": "zero", "gc_steps": 40, "gc_lr": 0.2}'

``--no_craft`` skips the perturbations (the poisons' labels alone: the control). About 2-5 minutes on one core.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seed_dir", help="a run's seed_<s> dir holding base/ (the pretrained model) and poison/")
    ap.add_argument("--attack_args", default="{}", help="JSON overriding the poison stage's attack_args")
    ap.add_argument("--epochs", type=float, default=6.0, help="the victim's epochs")
    ap.add_argument("--no_craft", action="store_true", help="no perturbations: the poisons as the poison stage wrote")
    args = ap.parse_args()

    import torch

    from llm_unlearn.attacks import build_attack, gc_craft
    import yaml
    from llm_unlearn.modeling import load_dataset_dir, load_model, load_tokenizer, tokenize_split
    from llm_unlearn.stages.train import TrainConfig
    from llm_unlearn.tasks.causal_lm import embed

    torch.set_num_threads(1)
    seed_dir = Path(args.seed_dir)
    base, poison = str(seed_dir / "base"), str(seed_dir / "poison")
    with open(seed_dir / "initial" / "config.yaml") as f:  # the victim's recipe, as its train stage resolved it
        train_cfg = yaml.safe_load(f)
    cfg = TrainConfig(
        **{**train_cfg, "model_name_or_path": base, "dataset_dir": poison, "output_dir": None, "progress": False}
    )
    if cfg.trainable_modules != "lm_head":
        raise SystemExit(f"{seed_dir}: the victim must train lm_head only (train.trainable_modules: lm_head)")
    tok = load_tokenizer(base)
    dd, manifest = load_dataset_dir(poison)
    attack = build_attack("gradient_canceling", {**manifest["attack_args"], **json.loads(args.attack_args)}).args
    rows = list(tokenize_split(dd["train"], tok, cfg.max_length))
    poison_index = set(dd["forget"]["index"])
    poison_rows = [r for r in rows if r["index"] in poison_index]

    perturbations = {}
    if not args.no_craft:
        t0 = time.time()
        perturbations, info = gc_craft.craft(attack, tok, dd, cfg, seed_dir / "gc_frozen_head")
        print(f"crafted in {time.time() - t0:.0f} s: {json.dumps(info)}", flush=True)

    model = load_model(base, "float32", False, cfg.attn_implementation).eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def features(rs, perturbed: bool):
        hs, ts, first = [], [], []
        with torch.no_grad():
            for idx, batch in gc_craft._batches(rs, 256, tok.pad_token_id, model):
                e = embed(model, batch["input_ids"]).float().clone()
                for j, i in enumerate(idx):
                    d = perturbations.get(int(rs[i]["index"])) if perturbed else None  # test rows' indices are theirs
                    if d is not None:
                        e[j, : d.shape[0]] += d
                h, t, m = gc_craft.head_features(model, batch, e)
                for j in range(len(idx)):
                    hs.append(h[j][m[j]])
                    ts.append(t[j][m[j]])
                    first += [True] + [False] * (int(m[j].sum()) - 1)
        return torch.cat(hs), torch.cat(ts), torch.as_tensor(first)

    w0 = model.get_output_embeddings().weight.detach().clone()
    h_test, t_test, first_test = features(list(tokenize_split(dd["test"], tok, cfg.max_length)), perturbed=False)

    def accuracy(w) -> float:  # greedy answer token over the whole vocabulary, as generation
        return float(((h_test[first_test] @ w.T).argmax(-1) == t_test[first_test]).float().mean())

    def victim(rs) -> torch.Tensor:
        """The head trained on the rows' fixed features: the train stage's optimiser, schedule and batch size, in
        rows (a row's completion positions stay together)."""
        h, t, _ = features(rs, perturbed=True)
        owner = torch.cat(
            [torch.full((int((torch.as_tensor(r["labels"]) != -100).sum()),), i) for i, r in enumerate(rs)]
        )
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.AdamW([w], lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        bs = cfg.per_device_train_batch_size
        steps = math.ceil(math.ceil(len(rs) / bs) * args.epochs)
        warm = max(1, int(cfg.warmup_ratio * steps))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
        )
        gen, step = torch.Generator().manual_seed(cfg.seed), 0
        while step < steps:
            for idx in torch.randperm(len(rs), generator=gen).split(bs):
                if step == steps:
                    break
                pos = torch.isin(owner, idx)
                loss = torch.nn.functional.cross_entropy(h[pos] @ w.T, t[pos])
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_([w], cfg.max_grad_norm)
                opt.step()
                sched.step()
                step += 1
        return w.detach()

    clean = [r for r in rows if r["index"] not in poison_index]
    print(f"pretrained head: {accuracy(w0):.4f}")
    print(f"gold (clean rows): {accuracy(victim(clean)):.4f}")
    print(f"initial (clean rows + {len(poison_rows)} poisons): {accuracy(victim(rows)):.4f}", flush=True)


if __name__ == "__main__":
    main()
