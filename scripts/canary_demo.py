"""The README's canary snippet at full size, with and without canaries, then ``llm-unlearn audit`` on both.

The embedded default's tiny Llama, 2,550 embedded reviews (1-2 sentences, as the main job's Gaussian recipe), 18 %
canaries (459), 6 epochs at lr 1e-3, batch 32, cosine, through TRL's SFTTrainer. Both trainings run at once (one
thread each), then both audits; prints each verdict and the exit code ``--fail_on_residual`` gives. About 4 minutes
on 2 CPU cores; offline.

    .venv/bin/python scripts/canary_demo.py --output_dir runs/canary_demo
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def train(out: Path, plant: bool) -> None:
    import datasets
    import torch
    from trl import SFTConfig, SFTTrainer

    from llm_unlearn.canaries import GaussianCanaries
    from llm_unlearn.embedded import build_tiny_model, build_tiny_tokenizer
    from llm_unlearn.tasks.reviews import embedded_reviews

    torch.set_num_threads(1)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=0)
    rows = embedded_reviews(2550, 10, seed=0, min_sentences=1, max_sentences=2)["train"]
    dataset = datasets.Dataset.from_list(
        [{"prompt": f"Review: {r['text']}\nSentiment:", "completion": f" {r['label']}"} for r in rows]
    )
    canaries = GaussianCanaries(fraction=0.18, eps=1.0, seed=0)
    data = canaries.plant(dataset)
    args = SFTConfig(
        output_dir=str(out),
        num_train_epochs=6,
        learning_rate=1e-3,
        per_device_train_batch_size=32,
        lr_scheduler_type="cosine",
        bf16=False,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    if plant:
        canaries.attach(trainer)
    trainer.train()
    trainer.save_model(str(out))
    if plant:
        canaries.save(out / "canaries.json")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output_dir", default="runs/canary_demo")
    ap.add_argument("--_train", choices=["with", "without"], help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    root = Path(a.output_dir)
    if a._train:
        train(root / a._train, a._train == "with")
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, __file__, "--output_dir", str(root), "--_train", which], env=env)
        for which in ("with", "without")
    ]
    if any(p.wait() for p in procs):
        print("a training failed", file=sys.stderr)
        return 1
    manifest = root / "with" / "canaries.json"
    for which in ("with", "without"):
        cmd = ["llm-unlearn", "audit", "--model_dir", str(root / which), "--manifest", str(manifest)]
        cmd += ["--output_dir", str(root / f"audit_{which}"), "--fail_on_residual", "--overwrite"]
        rc = subprocess.run(cmd, env=env).returncode
        d = json.loads((root / f"audit_{which}" / "audit.json").read_text())
        keys = ("verdict", "gus_mean", "gus_ci95", "gus_z", "gus_p", "fresh_gus_z", "min_detectable_mean")
        print(which, f"exit {rc}", json.dumps({k: d[k] for k in keys}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
