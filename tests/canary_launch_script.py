"""Run under ``accelerate launch`` by tests/test_canaries.py: an SFT run with canaries attached, in several processes.
Each rank writes which canary seeds its embedding hook noised (``noised_<rank>.json``); the main process saves the
manifest. argv: OUT_DIR."""

import json
import sys
from pathlib import Path

import datasets
from trl import SFTConfig, SFTTrainer

import llm_unlearn.canaries as canaries_mod
from llm_unlearn.canaries import GaussianCanaries
from llm_unlearn.embedded import TinyModelConfig, build_tiny_model, build_tiny_tokenizer
from llm_unlearn.tasks.reviews import embedded_reviews

SHAPE = {"hidden_size": 64, "num_attention_heads": 1, "num_hidden_layers": 1, "intermediate_size": 128}

out = Path(sys.argv[1])
tok = build_tiny_tokenizer(400, 300)
rows = embedded_reviews(64, 10, seed=0, min_sentences=1, max_sentences=2)["train"]
ds = datasets.Dataset.from_list(
    [{"prompt": f"Review: {r['text']}\nSentiment:", "completion": f" {r['label']}"} for r in rows]
)
args = SFTConfig(
    output_dir=str(out),
    max_steps=3,
    per_device_train_batch_size=8,
    learning_rate=1e-3,
    report_to=[],
    save_strategy="no",
    disable_tqdm=True,
    ddp_backend="gloo",
    bf16=False,
)
model = build_tiny_model(tok, TinyModelConfig(**SHAPE, vocab_size=400, corpus_reviews=300))
canaries = GaussianCanaries(fraction=0.5, seed=0)
trainer = SFTTrainer(model=model, args=args, train_dataset=canaries.plant(ds), processing_class=tok)
canaries.attach(trainer)
noised = []
real = canaries_mod.add_prompt_noise


def spy(emb, seeds, plens, std, starts=None):
    noised.append([int(s) for s in seeds if int(s) >= 0])
    return real(emb, seeds, plens, std, starts=starts)


canaries_mod.add_prompt_noise = spy  # the hook looks the function up at call time
trainer.train()
rank = trainer.args.process_index
(out / f"noised_{rank}.json").write_text(json.dumps({"world": trainer.args.world_size, "steps": noised}))
canaries.save(out / "canaries.json")
