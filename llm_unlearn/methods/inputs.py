"""What an unlearning trainer's constructor makes of its TRL-shaped inputs before HF's ``Trainer`` sees them: rows in
TRL's prompt/completion format tokenized, the method's own model preparation and the LoRA adapter of a
``peft_config``, and where the frozen reference model comes from. Used by ``UnlearnTrainer.__init__`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..configs import ConfigError

# Columns of a prompt/completion row kept through tokenization: the Gaussian attack's noise seeds and row indices.
SIDE_COLUMNS = ("noise_seed", "index")


@dataclass(frozen=True)
class PrepareContext:
    """What a method's ``prepare_model(model, method_cfg, ctx)`` hook gets besides the model and its knobs: the run's
    seed (EU-k's re-initialisation) and the LoRA config when the run trains an adapter (CF-k and RMU restrict it to
    their layers and wrap the model themselves)."""

    seed: int
    peft_config: object | None = None

    @property
    def use_peft(self) -> bool:
        return self.peft_config is not None


def pad_token_id(tokenizer) -> int | None:
    """The id padding uses (labels and attention mask hide it): the tokenizer's pad token, else its EOS (GPT-2's
    tokenizer has no pad token)."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)  # a processor holds its tokenizer
    pad = getattr(tok, "pad_token_id", None)
    return pad if pad is not None else getattr(tok, "eos_token_id", None)


def as_examples(data, tokenizer, max_length: int, which: str):
    """``data`` as items the paired dataset can index: a ``datasets.Dataset`` or a list of dicts in TRL's
    prompt/completion format is tokenized (``input_ids``, ``labels`` with the prompt masked, ``prompt_len``; the
    ``noise_seed``/``index`` columns kept); anything else (already tokenized rows, a task's own items such as image
    tensors) is returned as it is, for the collator."""
    from ..modeling import tokenize_split
    from ..tasks.causal_lm import tokenize_example

    if data is None:
        raise ConfigError(f"{which} is required: rows to forget or to retain, e.g. a Dataset of prompt/completion")
    if len(data) == 0:
        raise ConfigError(f"{which} is empty")
    if isinstance(data, (list, tuple)):
        first = data[0]
        columns = set(first) if isinstance(first, dict) else set()
    else:
        columns = set(getattr(data, "column_names", None) or ())
    if not {"prompt", "completion"} <= columns or "input_ids" in columns:
        return data
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    if tok is None or pad_token_id(tok) is None:
        raise ConfigError(
            f"{which} holds prompt/completion rows: pass processing_class (the model's tokenizer, with a pad or EOS "
            "token) to tokenize them"
        )
    if isinstance(data, (list, tuple)):
        return [
            {
                **tokenize_example(tok, row["prompt"], row["completion"], max_length),
                **{k: row[k] for k in SIDE_COLUMNS if k in row},
            }
            for row in data
        ]
    return tokenize_split(data, tok, max_length)


def prepared_model(model, spec, method_cfg, seed: int, peft_config):
    """The method's own preparation (``spec.prepare_model``: freezing, re-initialisation, its own LoRA placement),
    then the LoRA adapter of ``peft_config`` (peft ``get_peft_model``) unless the hook already added one."""
    name = spec.name if spec is not None else "this method"
    if peft_config is not None:
        from peft import PeftModel

        if spec is not None and not spec.supports_peft:
            raise ConfigError(
                f"method {name!r} cannot train a LoRA adapter (it edits the base weights itself); pass "
                "peft_config=None to run it full-parameter"
            )
        if isinstance(model, PeftModel):
            raise ConfigError(
                "the model already carries a peft adapter: pass the base model with peft_config, or this PeftModel "
                "without it (its adapter is then trained)"
            )
    if spec is not None and spec.prepare_model is not None:
        model = spec.prepare_model(model, method_cfg, PrepareContext(seed, peft_config))
    if peft_config is not None and not has_adapter(model):
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    return model


def has_adapter(model) -> bool:
    # What UnlearnTrainer.reference switches off instead of using a separate reference model.
    return hasattr(model, "disable_adapter")


def reference_source(model, method: str):
    """Where a full-parameter run's frozen reference comes from when the caller gives none: a loader of
    ``model.name_or_path`` when that is a local dir (called once the Trainer exists, so ZeRO-3 creates it sharded),
    else a copy made now through ``type(model)(model.config)`` and ``load_state_dict`` (never ``copy.deepcopy``).
    Call it before the method's preparation changes the weights (EU-k re-initialises some)."""
    path = str(getattr(model, "name_or_path", "") or "")
    if path and Path(path).is_dir():
        cls, dtype = type(model), getattr(model, "dtype", None)
        task = getattr(model, "unlearn_task", None)

        def load():
            ref = cls.from_pretrained(path, dtype=dtype)
            if task is not None:
                ref.unlearn_task = task
            return ref

        return load
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        raise ConfigError(
            f"method {method!r} needs a frozen reference model and under ZeRO-3 none can be copied from the model "
            "being trained: pass ref_model (a model, or a zero-argument loader called once the Trainer exists), or a "
            "model whose name_or_path is a local directory, or a peft_config (the adapter is then switched off)"
        )
    config = getattr(model, "config", None)
    if config is None:
        raise ConfigError(
            f"method {method!r} needs a frozen reference model and {type(model).__name__} has no config to build a "
            "copy from: pass ref_model"
        )
    ref = type(model)(config)
    dtype = getattr(model, "dtype", None)
    if dtype is not None:
        ref.to(dtype)
    ref.load_state_dict(model.state_dict())
    if hasattr(model, "unlearn_task"):
        ref.unlearn_task = model.unlearn_task
    return ref
