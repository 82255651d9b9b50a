"""The built-in unlearning methods: one small file per method (config dataclass, pure loss, trainer class registered
with ``@register_method`` where it is defined). Importing this package registers them all.

Adding a method = one file with ``@register_method(name, config=...)`` on its trainer: inside this package, plus an
import line below; outside it, a plugin module (``--plugins [my_module]`` or the ``llm_unlearn.plugins`` entry
point). The tests parametrize over ``METHODS``, so a new built-in is tested on both tracks automatically.
"""

from __future__ import annotations

from ..registry import METHODS, MethodSpec, get_method, methods  # noqa: F401 (the public API)
from . import cf_k, eu_k, ga, gd, graddiff, neggrad_plus, ngd, npo, rmu, scrub, simnpo, ssd  # noqa: F401 (register)


def uses_adapter(method: str, use_peft: bool) -> bool:
    """Whether an unlearning run of ``method`` trains (and saves) a LoRA adapter."""
    return use_peft and get_method(method).supports_peft


def build_method_config(name: str, args: dict | None):
    """The method's config dataclass from ``method_args``, strictly (unknown keys are errors, with did-you-mean)."""
    from ..configs import build_config

    spec = get_method(name)
    try:
        return build_config(spec.knobs_cls, args or {})
    except ValueError as e:
        raise type(e)(f"method {name!r}: {e}") from e


# --- the TRL-shaped configs (``<Name>Config``), derived from the knob dataclasses on first use ---

_ARGS: dict[str, type] = {}  # method name -> its <Name>Config


def _args_names() -> dict[str, str]:
    """Method name -> the name of its ``<Name>Config``: the trainer's name with ``Config`` for ``Trainer``
    (``NPOTrainer`` -> ``NPOConfig``, a plugin's ``HalfGDTrainer`` -> ``HalfGDConfig``); a name two methods would
    share gets the method's name appended for the later one."""
    out: dict[str, str] = {}
    for name, spec in methods().items():
        stem = spec.trainer_cls.__name__.removesuffix("Trainer") or name
        candidate = f"{stem}Config"
        if candidate in out.values():
            candidate = f"{candidate}_{name}"
        out[name] = candidate
    return out


def args_class(name: str) -> type:
    """The ``<Name>Config`` of method ``name`` (``METHODS[name].config_cls``): ``TrainingArguments`` plus its knobs."""
    spec = get_method(name)
    cls = _ARGS.get(name)
    if cls is None or cls.knobs_cls is not spec.knobs_cls:  # a re-registered method gets a fresh class
        from .arguments import derive_args_class

        cls = _ARGS[name] = derive_args_class(name, spec.knobs_cls, _args_names()[name])
    return cls


def __getattr__(attr: str):
    # ``llm_unlearn.methods.NPOConfig``: the exported name, and where pickle finds a saved training_args.bin's class.
    if attr.endswith("Config") or "Config_" in attr:
        for name, cls_name in _args_names().items():
            if cls_name == attr:
                return args_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
