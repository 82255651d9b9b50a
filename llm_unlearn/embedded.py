"""Offline builders for the embedded default: a byte-level BPE tokenizer trained on the synthetic corpus and a
random-init tiny ``LlamaForCausalLM``. Tests, recipes and ``llm-unlearn tiny`` all use these, so nothing is ever
downloaded. head_dim is 64 because vLLM's CPU backend rejects smaller heads (the vLLM evaluation backend uses it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .configs import ConfigError

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


@dataclass
class TinyModelConfig:
    """Shape of the embedded tiny Llama (random init)."""

    vocab_size: int = field(default=1024, metadata={"help": "BPE vocabulary budget (the corpus saturates below it)"})
    hidden_size: int = field(default=128, metadata={"help": "model width; 2 heads x head_dim 64"})
    num_hidden_layers: int = field(default=2, metadata={"help": "decoder layers"})
    num_attention_heads: int = field(default=2, metadata={"help": "heads; head_dim = hidden_size / heads must be 64"})
    intermediate_size: int = field(default=512, metadata={"help": "MLP width"})
    max_position_embeddings: int = field(default=512, metadata={"help": "longest sequence"})
    embedding_init_std: float = field(
        default=1.0,
        metadata={
            "help": "std of the token-embedding init; 1.0 makes the embedding RMS ~1 so noise eps is in RMS units"
        },
    )
    corpus_reviews: int = field(default=4000, metadata={"help": "synthetic reviews the tokenizer is trained on"})
    pretrain_reviews: int = field(
        default=0,
        metadata={
            "help": "0: the random init. N > 0: the model is first trained on the sentiment task over N embedded "
            "reviews of another seed than any experiment's, as a public pretrained sentiment model the victim "
            "fine-tunes (what the gradient-canceling recipe attacks: a head over frozen features)"
        },
    )
    pretrain_epochs: float = field(default=6.0, metadata={"help": "epochs of that pretraining"})
    pretrain_min_sentences: int = field(default=1, metadata={"help": "shortest pretraining review, in sentences"})
    pretrain_max_sentences: int = field(default=2, metadata={"help": "longest pretraining review, in sentences"})

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError("tiny.hidden_size must be divisible by tiny.num_attention_heads")
        if self.hidden_size // self.num_attention_heads != 64:
            raise ConfigError(
                "tiny.hidden_size / tiny.num_attention_heads must be 64 (vLLM's CPU backend rejects other head dims)"
            )
        for name in ("vocab_size", "num_hidden_layers", "intermediate_size", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ConfigError(f"tiny.{name} must be >= 1")
        if self.pretrain_reviews < 0 or (self.pretrain_reviews and self.pretrain_reviews < 64):
            raise ConfigError(
                f"tiny.pretrain_reviews must be 0 (no pretraining) or >= 64, got {self.pretrain_reviews}"
            )
        if self.pretrain_epochs <= 0:
            raise ConfigError(f"tiny.pretrain_epochs must be > 0, got {self.pretrain_epochs}")
        if not 1 <= self.pretrain_min_sentences <= self.pretrain_max_sentences:
            raise ConfigError("tiny.pretrain_min_sentences must be >= 1 and <= tiny.pretrain_max_sentences")
        if self.vocab_size < 300:
            raise ConfigError("tiny.vocab_size must be >= 300 (256 byte symbols + special tokens + merges)")


def build_tiny_tokenizer(vocab_size: int = 1024, corpus_reviews: int = 4000, seed: int = 0):
    """Train a byte-level BPE on the synthetic reviews and prompt template; wrap it as ``PreTrainedTokenizerFast``.

    The post-processor prepends ``<s>`` so ``tokenizer(prompt)`` yields the same ids for HF and vLLM generation.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from .tasks.reviews import LABELS, generate_reviews

    # Train on whole formatted examples so the prompt cue and the label words become single tokens.
    texts = [
        f"Review: {r['text']}\nSentiment: {r['label']}" for r in generate_reviews(corpus_reviews, seed=10_000 + seed)
    ]
    texts += [f" {label}" for label in LABELS]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(SPECIAL_TOKENS["bos_token"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, padding_side="right", **SPECIAL_TOKENS)


def build_tiny_model(tokenizer, cfg: TinyModelConfig | None = None, seed: int = 0):
    """A random-init ``LlamaForCausalLM`` sized by ``cfg``; the seed fixes the initialisation."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = cfg or TinyModelConfig()
    cfg.validate()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        head_dim=cfg.hidden_size // cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, cfg.embedding_init_std)
    return model


PRETRAIN_SEED = 20_000  # + the model seed: reviews no experiment draws (experiments derive theirs from seeds < 2**31)


def pretrain_tiny(model, tokenizer, cfg: TinyModelConfig, seed: int = 0) -> dict:
    """Train ``model`` in place on the embedded sentiment task (prompt "Review: ...\nSentiment:", loss on the label
    and eos only), over ``cfg.pretrain_reviews`` reviews drawn with seed PRETRAIN_SEED + ``seed``: AdamW 1e-3, batch
    32, 10 % warmup then cosine. A stand-in for the public pretrained model a victim fine-tunes; deterministic in
    (cfg, seed). Returns its final loss and step count."""
    import math

    import torch

    from .tasks.causal_lm import CompletionCollator, tokenize_example
    from .tasks.reviews import generate_reviews

    reviews = generate_reviews(
        cfg.pretrain_reviews, PRETRAIN_SEED + seed, cfg.pretrain_min_sentences, cfg.pretrain_max_sentences
    )
    rows = [tokenize_example(tokenizer, f"Review: {r['text']}\nSentiment:", f" {r['label']}", 512) for r in reviews]
    collate = CompletionCollator(tokenizer.pad_token_id)
    batch_size = 32
    steps = math.ceil(math.ceil(len(rows) / batch_size) * cfg.pretrain_epochs)
    warmup = max(1, int(0.1 * steps))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    gen = torch.Generator().manual_seed(seed)
    model.train()
    step, loss = 0, float("nan")
    while step < steps:
        for idx in torch.randperm(len(rows), generator=gen).split(batch_size):
            if step == steps:
                break
            batch = collate([rows[i] for i in idx.tolist()])
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
            opt.zero_grad()
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step, loss = step + 1, float(out.loss.detach())
    if not math.isfinite(loss):
        raise RuntimeError(f"pretraining the embedded model diverged (loss {loss})")
    return {"pretrain_steps": step, "pretrain_loss": loss}


def save_tiny(output_dir: str | os.PathLike, cfg: TinyModelConfig | None = None, seed: int = 0) -> Path:
    """Build the tokenizer and model and save both (safetensors) into ``output_dir``."""
    cfg = cfg or TinyModelConfig()
    cfg.validate()
    out = Path(output_dir)
    tokenizer = build_tiny_tokenizer(cfg.vocab_size, cfg.corpus_reviews)
    model = build_tiny_model(tokenizer, cfg, seed=seed)
    if cfg.pretrain_reviews:
        pretrain_tiny(model, tokenizer, cfg, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
