"""Registries of the things a user can add without editing this package: unlearning methods and poisoning attacks,
each registered by a decorator on the class in its own file, and plugins that hold more of them.

A method is a trainer class (a subclass of ``llm_unlearn.UnlearnTrainer``) plus its config dataclass of knobs::

    @register_method("half_gd", config=HalfGDConfig)
    class HalfGDTrainer(UnlearnTrainer):
        reads_forget = False
        def unlearn_loss(self, model, forget, retain):
            return self.method_cfg.scale * self.nll(model, retain)

Its spec gives the trainer (``trainer_cls``), the knob dataclass (``knobs_cls``: what ``method_args`` is checked
against) and, derived from it on first use, the TRL-shaped ``config_cls`` (``HalfGDConfig``: ``TrainingArguments`` plus
the knobs, the trainer's ``args``).

An attack is a class with its config dataclass, registered for a track (``llm`` or ``image``); see
``llm_unlearn/attacks/`` and ``image_track/attacks/``.

Plugins are modules imported before a config is read, so what they register can be named in it: the
``llm_unlearn.plugins`` entry-point group (loaded whenever the registries are used) and the modules a config lists
under ``plugins`` / the ``--plugins`` flag. The loaded module names are exported in ``LLM_UNLEARN_PLUGINS`` so that
every process a run starts (scheduler workers, ``accelerate launch`` ranks) loads them too.

This module sits in the lowest layers: it imports nothing but the config errors, so the built-in methods, attacks
and plugins all import it, never the reverse (the built-ins are loaded by name, like entry points).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

from .configs import ConfigError

PLUGIN_GROUP = "llm_unlearn.plugins"
PLUGIN_ENV = "LLM_UNLEARN_PLUGINS"
# The packages whose modules register the built-ins (loaded on first use of a registry).
BUILTIN_METHODS = "llm_unlearn.methods"  # method <name> is its module <name> (BUILTIN_METHOD_NAMES)
BUILTIN_ATTACKS = {"llm": "llm_unlearn.attacks"}  # other tracks register theirs when they load


@dataclass(frozen=True)
class MethodSpec:
    name: str
    knobs_cls: type  # the knob dataclass (a recipe's method_args; the trainer's method_cfg)
    trainer_cls: type
    summary: str
    # Full-parameter runs load a frozen copy of the initial model as the trainer's reference (KL/NPO/SCRUB teachers).
    needs_reference: bool = False
    # Optional hook ``prepare_model(model, method_cfg, ctx) -> model`` the trainer runs before LoRA wrapping, e.g. to
    # re-initialise or freeze blocks (EU-k, CF-k); ``ctx`` (``methods.inputs.PrepareContext``) gives ``seed``,
    # ``use_peft`` and ``peft_config``. It may return a peft model itself to choose which layers adapt.
    prepare_model: Callable | None = None
    # False for methods that must edit the base weights themselves (SSD, EU-k): they run full-parameter whatever
    # ``use_peft`` says, and their output is a full model rather than an adapter.
    supports_peft: bool = True
    module: str = ""  # where it was registered (error messages name it)

    @property
    def config_cls(self) -> type:
        """The method's TRL-shaped config, ``<Name>Config``: ``transformers.TrainingArguments`` plus the knobs of
        ``knobs_cls`` and a compute budget, derived on first use (transformers loads then; found by name, like the
        built-ins, so this module stays below the methods)."""
        return importlib.import_module(BUILTIN_METHODS).args_class(self.name)


@dataclass(frozen=True)
class AttackSpec:
    name: str
    track: str
    config_cls: type
    attack_cls: type
    summary: str
    module: str = ""


METHODS: dict[str, MethodSpec] = {}
ATTACKS: dict[str, dict[str, AttackSpec]] = {}


def _empty_config(name: str) -> type:
    return dataclasses.make_dataclass(f"{name}_config", [])


def _summary(cls: type, given: str | None) -> str:
    if given:
        return given
    return ((cls.__doc__ or "").strip().splitlines() or [cls.__name__])[0]


def _check_name(kind: str, name) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"register_{kind}: the name must be an identifier-like string, got {name!r}")


def _check_config(kind: str, name: str, config) -> type:
    if config is None:
        return _empty_config(name)
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise ConfigError(f"register_{kind}({name!r}): config must be a dataclass class, got {config!r}")
    return config


def _same_definition(a, b) -> bool:
    # A module imported twice (once as a script, once as a plugin; or reloaded) registers a new class of the same
    # qualified name: that is the same definition, not a clash.
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def register_method(
    name: str,
    config: type | None = None,
    *,
    summary: str | None = None,
    needs_reference: bool | None = None,
    prepare_model: Callable | None = None,
    supports_peft: bool | None = None,
):
    """Class decorator: register an ``UnlearnTrainer`` subclass as the method ``name`` with its ``config`` dataclass.

    ``needs_reference``/``supports_peft`` default to the trainer's class attributes of the same names (False/True);
    ``summary`` to the first line of the trainer's docstring. Registering another class under a taken name is an
    error naming both.
    """
    _check_name("method", name)
    config_cls = _check_config("method", name, config)

    def decorate(cls: type) -> type:
        if not isinstance(cls, type) or not callable(getattr(cls, "unlearn_loss", None)):
            raise ConfigError(f"register_method({name!r}): decorate a trainer class with an unlearn_loss method")
        old = METHODS.get(name)
        if old is not None and not _same_definition(old.trainer_cls, cls):
            raise ConfigError(
                f"method {name!r} is registered twice: by {old.module}.{old.trainer_cls.__qualname__} and by "
                f"{cls.__module__}.{cls.__qualname__}; give one of them another name"
            )
        cls.method_name = name
        cls.method_config_cls = config_cls
        METHODS[name] = MethodSpec(
            name=name,
            knobs_cls=config_cls,
            trainer_cls=cls,
            summary=_summary(cls, summary),
            needs_reference=bool(
                getattr(cls, "needs_reference", False) if needs_reference is None else needs_reference
            ),
            prepare_model=prepare_model if prepare_model is not None else getattr(cls, "prepare_model_hook", None),
            supports_peft=bool(getattr(cls, "supports_peft", True) if supports_peft is None else supports_peft),
            module=cls.__module__,
        )
        return cls

    return decorate


def register_attack(name: str, config: type | None = None, *, track: str = "llm", summary: str | None = None):
    """Class decorator: register an attack class for ``track`` under ``name`` with its ``config`` dataclass (what a
    recipe gives as ``poison: {attack: name, attack_args: {...}}``). The class implements the hooks of
    ``llm_unlearn.attacks.base.Attack`` (subclassing it is the easy way); ``summary`` defaults to the first line of
    its docstring. Registering another class under a taken name of the same track is an error naming both."""
    _check_name("attack", name)
    config_cls = _check_config("attack", name, config)
    if not isinstance(track, str) or not track.isidentifier():
        raise ConfigError(f"register_attack({name!r}): track must be a track name such as 'llm', got {track!r}")

    def decorate(cls: type) -> type:
        if not isinstance(cls, type) or not callable(getattr(cls, "poison", None)):
            raise ConfigError(f"register_attack({name!r}): decorate an attack class with a poison method")
        table = ATTACKS.setdefault(track, {})
        old = table.get(name)
        if old is not None and not _same_definition(old.attack_cls, cls):
            raise ConfigError(
                f"attack {name!r} of track {track!r} is registered twice: by "
                f"{old.module}.{old.attack_cls.__qualname__} and by {cls.__module__}.{cls.__qualname__}; "
                "give one of them another name"
            )
        cls.attack_name = name
        cls.attack_config_cls = config_cls
        table[name] = AttackSpec(name, track, config_cls, cls, _summary(cls, summary), cls.__module__)
        return cls

    return decorate


# --- lookups (they load the built-ins and the entry-point plugins first) ---


def methods() -> dict[str, MethodSpec]:
    """Every registered method, built-ins and plugins."""
    for name in BUILTIN_METHOD_NAMES:  # each built-in is llm_unlearn/methods/<name>.py
        importlib.import_module(f"{BUILTIN_METHODS}.{name}")
    load_plugins()
    return METHODS


# The built-in methods' names, each the module llm_unlearn/methods/<name>.py: a config naming another one is refused
# before the methods (and with them transformers' Trainer, seconds to import) are loaded, and a built-in's method_args
# are checked against the knob class read from its file (methods/knobs.py). tests/test_plugins.py keeps it equal to
# what the methods register.
BUILTIN_METHOD_NAMES = (
    *("cf_k", "eu_k", "ga", "gd", "graddiff", "neggrad_plus"),
    *("ngd", "npo", "rmu", "scrub", "simnpo", "ssd"),
)


def check_method_names(names) -> None:
    """Every name is a built-in or a registered (plugin) method, checked without loading the built-ins."""
    load_plugins()
    known = set(BUILTIN_METHOD_NAMES) | set(METHODS)
    for name in names:
        if name not in known:
            raise ConfigError(f"unknown method {name!r}; choose from {sorted(known)} (add one with --plugins)")


def get_method(name: str) -> MethodSpec:
    table = methods()
    if name not in table:
        raise ConfigError(f"unknown method {name!r}; choose from {sorted(table)} (add one with --plugins)")
    return table[name]


def attacks(track: str = "llm") -> dict[str, AttackSpec]:
    """Every registered attack of ``track``."""
    if track in BUILTIN_ATTACKS:
        importlib.import_module(BUILTIN_ATTACKS[track])
    load_plugins()
    return ATTACKS.get(track, {})


def get_attack(name: str, track: str = "llm") -> AttackSpec:
    table = attacks(track)
    if name not in table:
        raise ConfigError(f"unknown attack {name!r} for the {track} track; choose from {sorted(table)}")
    return table[name]


# --- plugins ---

_LOADED: list[str] = []
_ENTRY_POINTS_LOADED = False


def load_plugins(modules: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Import the ``llm_unlearn.plugins`` entry points (once), the modules named in ``LLM_UNLEARN_PLUGINS`` (set by
    the process that started this one) and ``modules``; returns the names loaded from the last two, which are added
    to ``LLM_UNLEARN_PLUGINS`` for the processes this one starts. A module that cannot be imported is a ConfigError
    naming it (before any work starts)."""
    global _ENTRY_POINTS_LOADED
    if not _ENTRY_POINTS_LOADED:
        _ENTRY_POINTS_LOADED = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=PLUGIN_GROUP):
            try:
                ep.load()
            except Exception as e:  # a broken installed plugin must say which one it is
                raise ConfigError(f"plugin entry point {ep.name!r} ({ep.value}) failed to load: {e}") from e
    wanted = [*_env_plugins(), *(modules or [])]
    for name in wanted:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"plugins: expected module names, got {name!r}")
        if name in _LOADED:
            continue
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(
                f"plugins: cannot import {name!r} ({e}); a plugin is a module on PYTHONPATH or an installed package"
            ) from e
        _LOADED.append(name)
    if _LOADED:
        os.environ[PLUGIN_ENV] = json.dumps(_LOADED)
    return list(_LOADED)


def _env_plugins() -> list[str]:
    raw = os.environ.get(PLUGIN_ENV)
    if not raw:
        return []
    try:
        names = json.loads(raw)
    except json.JSONDecodeError:
        names = None
    if not isinstance(names, list):
        raise ConfigError(f"{PLUGIN_ENV} must be a JSON list of module names, got {raw!r}")
    return names
