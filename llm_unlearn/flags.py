"""The command line of every config: a dataclass config's fields as ``--dotted.flags`` (help from the fields'
metadata), ``--config FILE`` as the base, flag values parsed as YAML, and the result loaded and validated by
:mod:`llm_unlearn.configs` (which knows nothing of argparse)."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from typing import TypeVar, Union

import yaml

from .configs import (
    ConfigError,
    DuplicateKeyError,
    _hints,
    _moved_flag,
    load_config,
    load_yaml,
    read_yaml,
    validate_config,
)

T = TypeVar("T")


def _flags(cls, prefix: str = "", exclude: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """(dotted name, help text with the key's default) of every leaf field of ``cls``, nested sections included."""
    out = []
    for f in dataclasses.fields(cls):
        if prefix + f.name in exclude:
            continue
        tp = _hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            out += _flags(tp, f"{prefix}{f.name}.", exclude)
        else:
            text = " ".join(part for part in (f.metadata.get("help", ""), _default_text(f)) if part)
            out.append((prefix + f.name, text.replace("%", "%%")))
    return out


def _default_text(f: dataclasses.Field) -> str:
    """``(default: VALUE)`` as a YAML file or flag would write VALUE; empty for a required key."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        if dataclasses.is_dataclass(value):
            return ""
    else:
        return "(required)"
    shown = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    shown = shown.removesuffix("\n...").removesuffix("...").strip()
    return f"(default: {shown})"


BOOL_EPILOG = (
    "A true/false key KEY takes `--KEY true|false`, `--KEY` alone (true) or `--no_KEY` (false); a nested one the same "
    "with its dotted name: `--unlearn.use_peft`, `--no_unlearn.use_peft`."
)


def _is_bool(tp) -> bool:
    """``bool`` or ``bool | None``: a key a flag alone can set."""
    if tp is bool:
        return True
    args = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else ()
    return bool(args) and set(args) == {bool, type(None)}


def _add_bool(parser: argparse.ArgumentParser, name: str, dest: str, help_text: str) -> None:
    """``--name [true|false]`` (alone: true, as HF's and argparse's users type it) and ``--no_name`` (false). Both
    store the text, which is then read like any other value (so ``--name maybe`` is the usual one-line error)."""
    parser.add_argument(
        f"--{name}", dest=dest, default=argparse.SUPPRESS, nargs="?", const="true", metavar="BOOL", help=help_text
    )
    parser.add_argument(
        f"--no_{name}",
        dest=dest,
        default=argparse.SUPPRESS,
        action="store_const",
        const="false",
        help=argparse.SUPPRESS,
    )


def make_parser(
    cls,
    prog: str | None = None,
    description: str | None = None,
    flags: dict[str, str] | None = None,
    bool_flags: tuple[str, ...] = (),
) -> argparse.ArgumentParser:
    """An ``argparse`` parser for ``cls``: ``--config YAML`` plus one ``--field`` flag per (nested) field, plus
    ``flags`` (name -> help): options of the command that are not config keys (a stage's ``--overwrite``; those
    named in ``bool_flags`` are true/false). A true/false key also takes ``--key`` alone (true) and ``--no_key``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description=description or (cls.__doc__ or "").strip().split("\n")[0],
    )
    parser.add_argument("--config", help="YAML file whose keys are this command's fields (flags override it)")
    for name, help_text in (flags or {}).items():
        if name in bool_flags:
            help_text += "" if "default" in help_text else " (default: false)"
            _add_bool(parser, name, f"__flag__{name}", help_text.replace("%", "%%"))
        else:
            parser.add_argument(
                f"--{name}", dest=f"__flag__{name}", metavar="VALUE", help=help_text.replace("%", "%%")
            )
    # What the parser reads into, so a caller holding only a command's parser (the docs test) can parse like it.
    parser.config_cls, parser.extra_flags, parser.bool_flags = cls, dict(flags or {}), tuple(bool_flags)
    # A top-level config may hide nested keys another component sets (``run`` sets every stage's paths and seeds).
    for name, help_text in _flags(cls, exclude=frozenset(getattr(cls, "CLI_EXCLUDE", ()))):
        if _is_bool(_leaf_type(cls, name)):
            _add_bool(parser, name, name, help_text)
            parser.epilog = BOOL_EPILOG
        else:
            parser.add_argument(f"--{name}", dest=name, default=argparse.SUPPRESS, metavar="VALUE", help=help_text)
    return parser


def _set_dotted(data: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for p in parents:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{p}: expected a mapping, got {child!r}")
        node = child
    node[leaf] = value


# What YAML reads as null. On the command line these mean None for every field, strings included: `--dataset_name
# null` must not arrive as the four-letter string 'null' (a type error for a field that cannot be null).
_NULLS = ("null", "Null", "NULL", "~")


def flag_value(raw: str, key: str, leaf_type=None):
    """A command-line value read as YAML (``--seeds "[0, 1]"``); a string field keeps its text as given, except a
    YAML null, which is None everywhere; a key given twice in a mapping is an error."""
    if raw.strip() in _NULLS:
        return None
    if leaf_type is str:  # "--trigger yes" must stay a string even if YAML reads it otherwise
        return raw
    try:
        return load_yaml(raw)
    except DuplicateKeyError as e:
        raise ConfigError(f"--{key}: {str(e).split(' (lines')[0]}") from e
    except yaml.YAMLError:
        return raw


def parse_config(cls: type[T], argv: list[str] | None = None, prog: str | None = None) -> T:
    """Parse ``argv`` (YAML file + flag overrides) into a validated ``cls``."""
    return parse_config_and_flags(cls, argv, prog)[0]


def parse_config_and_flags(
    cls: type[T],
    argv: list[str] | None = None,
    prog: str | None = None,
    flags: dict[str, str] | None = None,
    bool_flags: tuple[str, ...] = (),
) -> tuple[T, dict]:
    """:func:`parse_config` for a command that also takes ``flags`` (name -> help) which are not config keys (those
    in ``bool_flags`` true/false, ``--name`` alone meaning true); returns the config and ``{name: value}`` (values
    read as YAML; None where not given)."""
    data, extra = argv_data(cls, argv, prog, flags, bool_flags)
    cfg = load_config(cls, data)
    validate_config(cfg)
    return cfg, extra


def argv_data(
    cls,
    argv: list[str] | None = None,
    prog: str | None = None,
    flags: dict[str, str] | None = None,
    bool_flags: tuple[str, ...] = (),
) -> tuple[dict, dict]:
    """What ``argv`` says, before it is checked against ``cls``: the config mapping (the ``--config`` YAML with the
    flags' values set over it, read as YAML) and ``{flag name: value}`` for ``flags``. Unknown flags are errors."""
    parser = make_parser(cls, prog=prog, flags=flags, bool_flags=bool_flags)
    known, unknown = parser.parse_known_args(argv)
    if unknown:
        flags_given = [a for a in unknown if a.startswith("--")] or unknown
        if flags_given[0].startswith("--"):
            _moved_flag(cls, flags_given[0][2:].split("=")[0])
        allowed = [o[2:] for o in parser._option_string_actions if o.startswith("--") and o != "--help"]
        given = flags_given[0].lstrip("-").split("=")[0]
        *parents, leaf = given.split(".")
        negated = "no_" + ".".join([*parents, leaf[3:]])  # --unlearn.no_use_peft: the one spelling is --no_<key>
        near = [negated] if leaf.startswith("no_") and negated in allowed else None
        near = near or difflib.get_close_matches(given, allowed, n=1)
        hint = f" (did you mean --{near[0]}?)" if near else ""
        raise ConfigError(f"unknown argument {flags_given[0]!r}{hint}; `--help` lists the allowed keys")
    ns = vars(known)
    extra = {}
    for name in flags or {}:
        raw = ns.pop(f"__flag__{name}", None)
        extra[name] = None if raw is None else flag_value(raw, name)
    data = read_yaml(ns.pop("config")) if ns.get("config") else {}
    ns.pop("config", None)
    for dotted, raw in ns.items():
        value = flag_value(raw, dotted, _leaf_type(cls, dotted)) if isinstance(raw, str) else raw
        _set_dotted(data, dotted, value)
    return data, extra


def _leaf_type(cls, dotted: str):
    tp = cls
    for part in dotted.split("."):
        tp = _hints(tp)[part]
    return tp
