"""Stage 4: evaluate one model (a full model dir, or a base model plus a LoRA adapter).

Metrics (see ``metrics/``): clean accuracy from greedy generations on the clean test split; the attack's own metrics
from its ``evaluate`` hook (``llm_unlearn/attacks/``: ASR on triggered test reviews for the backdoor, the Gaussian
Unlearning Score of the poisons with its fresh-noise control for gaussian); loss-based MIA (forget-set loss vs
held-out loss). Writes ``eval_results.json``, ``per_sample.json`` and ``config.yaml``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..configs import ConfigError
from ..harness import run_stage, stage_commands

# torch is imported where it is used: `llm-unlearn run` imports this module for its config class, and a config error
# must show before seconds of torch (and transformers) imports.


@dataclass
class EvalConfig:
    """Evaluate a model: utility, attack success, Gaussian Unlearning Score, loss MIA."""

    model_dir: str | None = field(default=None, metadata={"help": "full model dir (or the base of adapter_dir)"})
    adapter_dir: str | None = field(default=None, metadata={"help": "optional LoRA adapter on top of model_dir"})
    dataset_dir: str | None = field(default=None, metadata={"help": "output_dir of the poison stage"})
    output_dir: str | None = field(default=None, metadata={"help": "where eval_results.json goes"})
    backend: str = field(default="hf", metadata={"help": "generation backend: hf | vllm (the vllm extra)"})
    vllm_adapter: Literal["lora", "merge"] = field(
        default="lora",
        metadata={"help": "vllm: serve adapter_dir per request (lora) or a merged safetensors copy (merge)"},
    )
    vllm_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "vllm: extra vllm.LLM engine arguments, e.g. {gpu_memory_utilization: 0.5}"},
    )
    vllm_python: str | None = field(
        default=None,
        metadata={
            "help": "vllm: python of another environment that has vllm (GPU vllm pins its own torch); null: this"
        },
    )
    batch_size: int = field(default=64, metadata={"help": "generation / loss batch size"})
    gus_batch_size: int = field(default=32, metadata={"help": "poisons per input-gradient backward pass"})
    max_new_tokens: int = field(default=3, metadata={"help": "tokens generated per prompt"})
    max_length: int = field(default=256, metadata={"help": "as in training (prompts are cut the same way)"})
    fresh_noise_draws: int = field(
        default=10, metadata={"help": "fresh (never trained) noises per poison for the null control"}
    )
    max_test_samples: int | None = field(default=None, metadata={"help": "evaluate on a subsample of the test split"})
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={"help": "weights dtype"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the Hub"})
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "eager | sdpa | flash_attention_2 (null: transformers picks; eager is fastest for tiny CPU models)"
        },
    )

    def validate(self) -> None:
        from ..generation import check_backend

        check_backend(self.backend, self.vllm_python)
        from ..generation.vllm import RESERVED_ENGINE_ARGS

        if set(self.vllm_args) & set(RESERVED_ENGINE_ARGS):
            raise ConfigError(
                f"vllm_args: {sorted(set(self.vllm_args) & set(RESERVED_ENGINE_ARGS))} are set by llm-unlearn; "
                f"remove them (reserved: {list(RESERVED_ENGINE_ARGS)})"
            )
        for name in ("batch_size", "gus_batch_size", "max_new_tokens", "max_length", "fresh_noise_draws"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


def load_eval_model(cfg: EvalConfig):
    from ..modeling import check_model_path, load_model, load_tokenizer

    model = load_model(cfg.model_dir, cfg.dtype, cfg.trust_remote_code, cfg.attn_implementation)
    tokenizer = load_tokenizer(cfg.model_dir, cfg.trust_remote_code)
    if cfg.adapter_dir:
        from peft import PeftModel

        check_model_path(cfg.adapter_dir, "adapter_dir")
        # Merge so generation and input gradients run on a plain model at full speed.
        model = PeftModel.from_pretrained(model, cfg.adapter_dir).merge_and_unload()
    # On the accelerator when there is one: the audit's input gradients and the losses are the evaluation's cost
    # (the batches follow the model: ``on_device``).
    return model.to(eval_device()).eval(), tokenizer


def eval_device():
    """The accelerator when there is one, else the CPU (a ``torch.device``)."""
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def per_sequence_losses(model, tokenizer, ds, max_length: int, batch_size: int) -> list[float]:
    """Mean completion-token NLL of each example (clean inputs), in the order of ``ds``."""
    import torch

    from ..modeling import tokenize_split
    from ..tasks.causal_lm import CompletionCollator, completion_token_logps, length_sorted_batches, on_device

    toks = list(tokenize_split(ds, tokenizer, max_length))
    collate = CompletionCollator(tokenizer.pad_token_id)
    out = [0.0] * len(toks)
    with torch.no_grad():
        for idx in length_sorted_batches([len(t["input_ids"]) for t in toks], batch_size):
            logps, mask = completion_token_logps(model, on_device(collate([toks[i] for i in idx]), model))
            for i, v in zip(idx, (-logps.sum(-1) / mask.sum(-1).clamp_min(1)).tolist()):
                out[i] = v
    return out


def prompts_for(tokenizer, ds, max_length: int, label_names: list[str]) -> list[list[int]]:
    from ..tasks.causal_lm import completion_ids, tokenize_prompt

    budget = max_length - max(len(completion_ids(tokenizer, f" {label}")) for label in label_names)
    return [tokenize_prompt(tokenizer, p, budget) for p in ds["prompt"]]


def generation_splits(cfg: EvalConfig, dd, manifest: dict) -> dict:
    """The splits evaluated by generation: the clean test split (``max_test_samples``) and the attack's own (e.g. the
    backdoor's triggered test reviews: its ``generate_on``)."""
    from ..attacks import attack_from_manifest

    test = dd["test"]
    if cfg.max_test_samples and cfg.max_test_samples < len(test):
        test = test.select(range(cfg.max_test_samples))
    splits = {"test": test}
    for name in attack_from_manifest(manifest, "llm").generate_on:
        splits[name] = dd[name]
    return splits


def predict_splits(cfg: EvalConfig, model, tokenizer, splits: dict, label_names) -> dict[str, list[str]]:
    """Greedy completions for every split through ``cfg.backend`` (vllm: one engine start for all splits; it reads
    ``model_dir``/``adapter_dir`` from disk, so ``model`` may be None)."""
    prompts = {name: prompts_for(tokenizer, ds, cfg.max_length, label_names) for name, ds in splits.items()}
    if cfg.backend == "vllm":
        from ..generation.vllm import generate as vllm_generate

        texts = vllm_generate(
            cfg.model_dir,
            tokenizer,
            list(prompts.values()),
            cfg.max_new_tokens,
            adapter_dir=cfg.adapter_dir,
            adapter_mode=cfg.vllm_adapter,
            dtype=cfg.dtype,
            trust_remote_code=cfg.trust_remote_code,
            engine_args=cfg.vllm_args,
            python=cfg.vllm_python,
        )
        return dict(zip(prompts, texts))
    from ..generation.hf import generate

    return {name: generate(model, tokenizer, p, cfg.max_new_tokens, cfg.batch_size) for name, p in prompts.items()}


def compute_metrics(cfg: EvalConfig, model, tokenizer, dd, manifest, predictions=None) -> tuple[dict, dict]:
    """All metrics; ``predictions`` (from :func:`predict_splits`) when generation already ran elsewhere."""
    from ..attacks import attack_from_manifest
    from ..metrics import accuracy

    labels = manifest["label_names"]
    splits = generation_splits(cfg, dd, manifest)
    test = splits["test"]
    predictions = predictions or predict_splits(cfg, model, tokenizer, splits, labels)
    preds = predictions["test"]
    attack = attack_from_manifest(manifest, "llm").evaluate(
        model=model, tokenizer=tokenizer, dd=dd, manifest=manifest, predictions=predictions, cfg=cfg
    )
    forget_loss = per_sequence_losses(model, tokenizer, dd["forget"], cfg.max_length, cfg.batch_size)
    test_loss = per_sequence_losses(model, tokenizer, test, cfg.max_length, cfg.batch_size)
    return eval_record("llm", accuracy(preds, test["label"], choices=labels), preds, attack, forget_loss, test_loss)


def eval_record(
    track: str, clean_accuracy: float, predictions: list, attack: tuple[dict, dict], forget_loss: list, test_loss: list
) -> tuple[dict, dict]:
    """``eval_results.json`` and ``per_sample.json`` of any task: clean accuracy, every attack's keys of the track
    (null here) then this attack's metrics (``attack``: its ``evaluate`` hook's result), so results of all attacks
    share one schema, the loss MIA of the forget set against the test set, and the two sets' mean losses."""
    from ..attacks import eval_keys
    from ..metrics import loss_mia

    metrics = {"clean_accuracy": clean_accuracy, **dict.fromkeys(eval_keys(track)), **attack[0]}
    metrics.update(loss_mia(forget_loss, test_loss))
    metrics.update(
        test_loss=float(sum(test_loss) / len(test_loss)), forget_loss=float(sum(forget_loss) / len(forget_loss))
    )
    per_sample = {"test_predictions": predictions, **attack[1], "forget_loss": forget_loss, "test_loss": test_loss}
    return metrics, per_sample


def main(cfg: EvalConfig, overwrite: bool = False) -> Path:
    """Run the stage through the harness (:mod:`llm_unlearn.harness`); returns ``output_dir``.

    The one evaluate stage of every task: a config of another task (its ``task`` names it, e.g. the image track's
    ``image_classification``) is evaluated by that task's ``check_eval``/``evaluate``; the causal LM's evaluation
    is the code below."""
    from ..tasks import stage_task

    task = stage_task(cfg)
    check, evaluate = (_check, _evaluate) if task is None else (task.check_eval, task.evaluate)
    return run_stage(
        cfg,
        evaluate,
        name="eval",
        required=("model_dir", "dataset_dir", "output_dir"),
        check=check,
        overwrite=overwrite,
    )


def _check(cfg: EvalConfig) -> None:
    from ..modeling import check_model_path, read_manifest

    check_model_path(cfg.model_dir, "model_dir")
    if cfg.adapter_dir:
        check_model_path(cfg.adapter_dir, "adapter_dir")
    read_manifest(cfg.dataset_dir)


def _evaluate(cfg: EvalConfig, out: Path) -> dict:
    from ..modeling import load_dataset_dir

    dd, manifest = load_dataset_dir(cfg.dataset_dir)
    start = time.perf_counter()
    predictions = None
    if cfg.backend == "vllm":  # before the HF model is loaded, so the engine has the (accelerator) memory to itself
        from ..modeling import load_tokenizer

        splits = generation_splits(cfg, dd, manifest)
        tok = load_tokenizer(cfg.model_dir, cfg.trust_remote_code)
        predictions = predict_splits(cfg, None, tok, splits, manifest["label_names"])
    model, tokenizer = load_eval_model(cfg)
    metrics, per_sample = compute_metrics(cfg, model, tokenizer, dd, manifest, predictions)
    metrics["eval_seconds"] = time.perf_counter() - start
    return {"per_sample.json": per_sample, "eval_results.json": metrics}


make_parser, cli = stage_commands(EvalConfig, main, "llm-unlearn eval")
