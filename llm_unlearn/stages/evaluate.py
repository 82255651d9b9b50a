"""Stage 4: evaluate one model (a full model dir, or a base model plus a LoRA adapter).

Metrics (see ``metrics/``): clean accuracy from greedy generations on the clean test split; ASR on triggered test
reviews (backdoor); the Gaussian Unlearning Score of the poisons with its fresh-noise control (gaussian); loss-based
MIA (forget-set loss vs held-out loss). Writes ``eval_results.json``, ``per_sample.json`` and ``config.yaml``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ..configs import ConfigError
from ..harness import run_stage, stage_commands


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


def eval_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def on_device(batch: dict, model) -> dict:
    """The batch's tensors on the model's device (other values as they are)."""
    device = next(model.parameters()).device
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def length_sorted_batches(lengths: list[int], size: int) -> list[list[int]]:
    """Indices ``0..n-1`` grouped into batches of ``size`` by increasing length (stable), so a right-padded batch
    wastes little compute on padding. Callers put per-example results back with the indices."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + size] for i in range(0, len(order), size)]


def per_sequence_losses(model, tokenizer, ds, max_length: int, batch_size: int) -> list[float]:
    """Mean completion-token NLL of each example (clean inputs), in the order of ``ds``."""
    from ..modeling import tokenize_split
    from ..tasks.causal_lm import CompletionCollator, completion_token_logps

    toks = list(tokenize_split(ds, tokenizer, max_length))
    collate = CompletionCollator(tokenizer.pad_token_id)
    out = [0.0] * len(toks)
    with torch.no_grad():
        for idx in length_sorted_batches([len(t["input_ids"]) for t in toks], batch_size):
            logps, mask = completion_token_logps(model, on_device(collate([toks[i] for i in idx]), model))
            for i, v in zip(idx, (-logps.sum(-1) / mask.sum(-1).clamp_min(1)).tolist()):
                out[i] = v
    return out


def gus_loss_fn(model, batch: dict):
    """The audit's per-poison loss of a collated (right-padded) batch, as a function of its input embeddings
    ``(n, L, hidden) -> (n,)``: the completion NLL, with the LM head applied only at the positions that predict a
    completion token (:func:`~llm_unlearn.tasks.causal_lm.completion_nll`; equal to ``sequence_nll`` up to float
    round-off, without the vocab-sized logits of every prompt position)."""
    from ..tasks.causal_lm import completion_nll

    return lambda e: completion_nll(model, batch, e)


def clean_embeddings(model, batch: dict) -> torch.Tensor:
    """The batch's clean input embeddings (float32, no graph): the point where the audit takes its gradient."""
    from ..tasks.causal_lm import embed

    with torch.no_grad():
        return embed(model, batch["input_ids"]).float()


def gus_scores(model, tokenizer, forget_ds, max_length: int, batch_size: int, draws: int):
    """I_z of every poison under its training noise (draw 0) and under ``draws`` fresh noises, one backward a batch.

    The noise is regenerated in unit scale: I_z = <xi, g> / (eps ||g||) does not depend on eps, so the audit needs
    only the seeds. The mask keeps the sum to the prompt positions, the only coordinates the noise ever touched.
    Poisons are batched by length (less padding) and the scores returned in the order of ``forget_ds``: a list of
    ``n`` floats and a ``draws`` x ``n`` nested list.

    Autograd is asked for the input gradient only, so no weight gradient is computed (checked by profiling: the
    backward runs one matmul per forward matmul, the same count as with the parameters frozen).
    """
    from ..attacks.gaussian import batch_prompt_noise
    from ..metrics import input_gradients, scores_from_gradients
    from ..modeling import tokenize_split
    from ..tasks.causal_lm import CompletionCollator

    toks = list(tokenize_split(forget_ds, tokenizer, max_length))
    collate = CompletionCollator(tokenizer.pad_token_id)
    n = len(toks)
    poison = torch.zeros(n, dtype=torch.float64)
    fresh = torch.zeros(draws, n, dtype=torch.float64)
    for idx in length_sorted_batches([len(t["input_ids"]) for t in toks], batch_size):
        batch = on_device(collate([toks[i] for i in idx]), model)
        clean = clean_embeddings(model, batch)
        _, width, hidden = clean.shape
        grads = input_gradients(gus_loss_fn(model, batch), clean)
        pos = torch.arange(width, device=clean.device)[None, :] < batch["prompt_len"][:, None]
        mask = pos[..., None].to(grads.dtype)
        seeds, plens = batch["noise_seed"].tolist(), batch["prompt_len"].tolist()
        noise0 = batch_prompt_noise(seeds, plens, width, hidden, 1.0, draw=0)
        poison[idx] = scores_from_gradients(grads, noise0, 1.0, mask).cpu()
        fresh_noise = torch.stack(
            [batch_prompt_noise(seeds, plens, width, hidden, 1.0, draw=d) for d in range(1, draws + 1)]
        )
        fresh[:, idx] = scores_from_gradients(grads, fresh_noise, 1.0, mask).cpu()
    return poison.tolist(), fresh.tolist()


def prompts_for(tokenizer, ds, max_length: int, label_names: list[str]) -> list[list[int]]:
    from ..tasks.causal_lm import completion_ids, tokenize_prompt

    budget = max_length - max(len(completion_ids(tokenizer, f" {label}")) for label in label_names)
    return [tokenize_prompt(tokenizer, p, budget) for p in ds["prompt"]]


def generation_splits(cfg: EvalConfig, dd) -> dict:
    """The splits evaluated by generation: the clean test split (``max_test_samples``) and, for the backdoor, the
    triggered test reviews."""
    test = dd["test"]
    if cfg.max_test_samples and cfg.max_test_samples < len(test):
        test = test.select(range(cfg.max_test_samples))
    splits = {"test": test}
    if "test_triggered" in dd:
        splits["test_triggered"] = dd["test_triggered"]
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
    from ..metrics import accuracy, attack_success_rate, gus_summary, loss_mia

    labels = manifest["label_names"]
    splits = generation_splits(cfg, dd)
    test = splits["test"]
    predictions = predictions or predict_splits(cfg, model, tokenizer, splits, labels)
    preds = predictions["test"]
    metrics = {"clean_accuracy": accuracy(preds, test["label"], choices=labels)}
    per_sample: dict = {"test_predictions": preds}
    metrics["asr"] = None
    if "test_triggered" in dd:
        trig = dd["test_triggered"]
        tpreds = predictions["test_triggered"]
        metrics["asr"] = attack_success_rate(tpreds, trig["orig_label"], manifest["target_label"], choices=labels)
        per_sample["triggered_predictions"] = tpreds
    forget = dd["forget"]
    if manifest["attack"] == "gaussian":
        poison, fresh = gus_scores(model, tokenizer, forget, cfg.max_length, cfg.gus_batch_size, cfg.fresh_noise_draws)
        metrics.update(gus_summary(poison, fresh))
        per_sample.update(gus_poison=poison, gus_fresh=fresh)
    else:
        for key in (
            "gus_mean",
            "gus_std",
            "gus_z",
            "gus_p",
            "gus_auc",
            "gus_tpr_at_1pct_fpr",
            "fresh_gus_mean",
            "fresh_gus_z",
        ):
            metrics[key] = None
    forget_loss = per_sequence_losses(model, tokenizer, forget, cfg.max_length, cfg.batch_size)
    test_loss = per_sequence_losses(model, tokenizer, test, cfg.max_length, cfg.batch_size)
    metrics.update(loss_mia(forget_loss, test_loss))
    metrics["test_loss"] = float(sum(test_loss) / len(test_loss))
    metrics["forget_loss"] = float(sum(forget_loss) / len(forget_loss))
    per_sample.update(forget_loss=forget_loss, test_loss=test_loss)
    return metrics, per_sample


def main(cfg: EvalConfig, overwrite: bool = False) -> Path:
    """Run the stage through the harness (:mod:`llm_unlearn.harness`); returns ``output_dir``."""
    return run_stage(
        cfg,
        _evaluate,
        name="eval",
        required=("model_dir", "dataset_dir", "output_dir"),
        check=_check,
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

        splits = generation_splits(cfg, dd)
        tok = load_tokenizer(cfg.model_dir, cfg.trust_remote_code)
        predictions = predict_splits(cfg, None, tok, splits, manifest["label_names"])
    model, tokenizer = load_eval_model(cfg)
    metrics, per_sample = compute_metrics(cfg, model, tokenizer, dd, manifest, predictions)
    metrics["eval_seconds"] = time.perf_counter() - start
    return {"per_sample.json": per_sample, "eval_results.json": metrics}


make_parser, cli = stage_commands(EvalConfig, main, "llm-unlearn eval")
