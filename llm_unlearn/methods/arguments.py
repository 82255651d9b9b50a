"""The TRL-shaped configs of the methods: ``<Name>Config``, a ``transformers.TrainingArguments`` subclass carrying the
method's own knobs, the argument ``args`` of ``<Name>Trainer`` (``llm_unlearn.NPOConfig``/``NPOTrainer``...).

A method registers a plain dataclass of its knobs (``MethodSpec.knobs_cls``: what a recipe's ``method_args`` is
checked against); its ``<Name>Config`` (``MethodSpec.config_cls``) is derived from it here on first use, so a plugin
author writes the knobs once: the knob fields (types resolved, defaults and help kept) on top of
:class:`UnlearnArguments`. The derived classes live in ``llm_unlearn.methods`` (its ``__getattr__``), where pickle
finds them again: ``Trainer.save_model`` and every checkpoint pickle the arguments (``training_args.bin``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..configs import ConfigError

# Where the derived classes are found by name (pickle looks them up as ``<module>.<qualname>``).
ARGS_MODULE = "llm_unlearn.methods"


class UnknownArgumentError(ConfigError, TypeError):
    """An unknown keyword for a ``<Name>Config``: a ConfigError naming the method's knobs, and still the TypeError a
    dataclass raises for an unexpected keyword, for callers that catch that."""


@dataclass
class UnlearnArguments(TrainingArguments):
    """``TrainingArguments`` of every unlearning trainer: HF's, a compute budget, and the tokenization of
    prompt/completion rows. The defaults that differ from HF's are the ones paired forget/retain batches need."""

    budget_tokens: float | None = field(
        default=None,
        metadata={
            "help": "compute budget in tokens through forward+backward (a forward-only pass counts 1/3); training "
            "stops after the step that spends it and budget-following schedules (linear, cosine...) end there. "
            "None: max_steps / num_train_epochs rule"
        },
    )
    max_length: int = field(
        default=256, metadata={"help": "tokens kept of each prompt+completion row the trainer tokenizes"}
    )
    # Items are {"retain": ..., "forget": ...} pairs: HF's column removal would strip both keys from every item.
    remove_unused_columns: bool = field(default=False, metadata={"help": "keep False: items are forget/retain pairs"})
    # compute_loss raises DivergedError on a non-finite loss first, so HF's filter would only cost a check per step.
    logging_nan_inf_filter: bool = field(default=False, metadata={"help": "see TrainingArguments"})
    # compute_loss returns a per-batch mean and ignores num_items_in_batch: gathering it would be a collective for
    # nothing.
    average_tokens_across_devices: bool = field(default=False, metadata={"help": "see TrainingArguments"})

    def __post_init__(self):
        super().__post_init__()
        if self.budget_tokens is not None and not self.budget_tokens > 0:
            raise ConfigError(f"budget_tokens must be > 0 (or None: no budget), got {self.budget_tokens}")
        if self.max_length < 1:
            raise ConfigError(f"max_length must be >= 1, got {self.max_length}")
        knobs = getattr(type(self), "knobs_cls", None)
        if knobs is not None:
            knobs_of(self, knobs)  # a knob out of range fails here, with the method's own message


def knobs_of(args, knobs_cls: type | None):
    """The method's knob dataclass (``UnlearnTrainer.method_cfg``) from ``args``: its fields read from ``args`` where
    ``args`` has them (a ``<Name>Config``), its defaults otherwise (plain ``TrainingArguments``); then validated."""
    if knobs_cls is None:
        return None
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(knobs_cls) if f.init and hasattr(args, f.name)}
    knobs = knobs_cls(**values)
    if callable(getattr(knobs, "validate", None)):
        knobs.validate()
    return knobs


def knob_values(knobs) -> dict:
    """The knobs of a knob-dataclass instance as ``<Name>Config`` keyword arguments (no deep copy, unlike asdict)."""
    return {f.name: getattr(knobs, f.name) for f in dataclasses.fields(knobs) if f.init}


def derive_args_class(method: str, knobs_cls: type, class_name: str) -> type:
    """``class_name``, a dataclass subclass of :class:`UnlearnArguments` with the fields of ``knobs_cls`` (resolved
    types, same defaults and help), placed in ``llm_unlearn.methods``; unknown keywords raise
    :class:`UnknownArgumentError` naming the method's knobs."""
    base = {f.name for f in dataclasses.fields(UnlearnArguments)}
    knob_fields = [f for f in dataclasses.fields(knobs_cls) if f.init]
    clash = sorted(f.name for f in knob_fields if f.name in base)
    if clash:
        raise ConfigError(
            f"method {method!r}: knobs {clash} have the names of TrainingArguments/UnlearnArguments fields; rename "
            "them (a <Name>Config holds both)"
        )
    # Resolved types, not the strings of ``from __future__ import annotations``: HfArgumentParser and get_type_hints
    # would evaluate those in llm_unlearn.methods, where the knob module's names (Literal...) are not defined.
    hints = typing.get_type_hints(knobs_cls)
    fields = []
    for f in knob_fields:
        kw = {"metadata": f.metadata}
        if f.default is not dataclasses.MISSING:
            kw["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kw["default_factory"] = f.default_factory
        else:  # TrainingArguments' fields all have defaults, so a required knob cannot follow them
            raise ConfigError(f"method {method!r}: knob {f.name!r} needs a default to become a {class_name} field")
        fields.append((f.name, hints[f.name], field(**kw)))
    doc = (knobs_cls.__doc__ or "").strip()
    if doc.startswith(knobs_cls.__name__ + "("):  # the signature dataclass writes when there is no docstring
        doc = ""
    knob_list = ", ".join(f.name for f in knob_fields)
    cls = dataclasses.make_dataclass(
        class_name,
        fields,
        bases=(UnlearnArguments,),
        namespace={
            "__doc__": f"TrainingArguments of method {method!r} with its knobs ({knob_list})"
            + (f": {doc}" if doc else ""),
            "knobs_cls": knobs_cls,
            "method_name": method,
        },
    )
    cls.__module__ = ARGS_MODULE
    _strict_init(cls, method, [f.name for f in knob_fields])
    return cls


def _strict_init(cls: type, method: str, knobs: list[str]) -> None:
    init = cls.__init__
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    allowed = set(names)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        unknown = [k for k in kwargs if k not in allowed]
        if unknown:
            near = difflib.get_close_matches(unknown[0], names, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise UnknownArgumentError(
                f"{cls.__name__}: unknown argument {unknown[0]!r}{hint}; method {method!r}'s own knobs are {knobs}, "
                "the rest are TrainingArguments fields"
            )
        init(self, *args, **kwargs)

    cls.__init__ = __init__
