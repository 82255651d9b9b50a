"""The built-in unlearning methods: one small file per method (config dataclass, pure loss, trainer class registered
with ``@register_method`` where it is defined).

Adding a method = one file with ``@register_method(name, config=...)`` on its trainer: inside this package, as
``<name>.py`` with ``name`` in ``registry.BUILTIN_METHOD_NAMES``; outside it, a plugin module (``--plugins
[my_module]`` or the ``llm_unlearn.plugins`` entry point). The tests parametrize over ``METHODS``, so a new built-in
is tested on both tracks automatically.

Importing this package imports none of the method files: each imports transformers' ``Trainer`` (seconds), and a
config's ``method_args`` is checked before that (:func:`build_method_config` reads a built-in's knob class from its
file, ``knobs.py``). ``METHODS``, ``get_method`` and ``methods()`` load them all (``registry.methods``).
"""

from __future__ import annotations

from ..registry import MethodSpec, get_method, methods  # noqa: F401 (the public API; METHODS: see __getattr__)


def knobs_class(name: str) -> type:
    """The knob dataclass of method ``name`` (``METHODS[name].knobs_cls``), without importing a built-in method that
    is not loaded yet: its class is read from its file (:func:`knobs.read_knobs`), the same definition. A plugin's
    is its registered class (the plugin was imported to register it); an unknown name is a ConfigError."""
    from ..registry import BUILTIN_METHOD_NAMES, METHODS, load_plugins

    load_plugins()
    if name in METHODS:
        return METHODS[name].knobs_cls
    if name in BUILTIN_METHOD_NAMES:
        from .knobs import NotReadable, read_knobs

        try:
            return read_knobs(name)
        except NotReadable:  # tests/test_fast_config_errors.py keeps every built-in readable; this is only slower
            pass
    return get_method(name).knobs_cls


def uses_adapter(method: str, use_peft: bool) -> bool:
    """Whether an unlearning run of ``method`` trains (and saves) a LoRA adapter."""
    return use_peft and get_method(method).supports_peft


def build_method_config(name: str, args: dict | None):
    """The method's config dataclass from ``method_args``, strictly (unknown keys are errors, with did-you-mean)."""
    from ..configs import build_config

    cls = knobs_class(name)
    try:
        return build_config(cls, args or {})
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
    if attr == "METHODS":  # every registered method, the built-ins loaded first
        return methods()
    # ``llm_unlearn.methods.NPOConfig``: the exported name, and where pickle finds a saved training_args.bin's class.
    if attr.endswith("Config") or "Config_" in attr:
        for name, cls_name in _args_names().items():
            if cls_name == attr:
                return args_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
