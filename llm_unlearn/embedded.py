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


def save_tiny(output_dir: str | os.PathLike, cfg: TinyModelConfig | None = None, seed: int = 0) -> Path:
    """Build the tokenizer and model and save both (safetensors) into ``output_dir``."""
    cfg = cfg or TinyModelConfig()
    cfg.validate()
    out = Path(output_dir)
    tokenizer = build_tiny_tokenizer(cfg.vocab_size, cfg.corpus_reviews)
    model = build_tiny_model(tokenizer, cfg, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
