"""Typed dataclass configs: YAML files and CLI flags in, strict validation, resolved YAML out.

Every stage config is a plain ``@dataclass``. ``load_config`` builds one from a mapping and rejects unknown keys and
wrong types with a :class:`ConfigError` that names the key and what is allowed. ``make_parser`` turns a dataclass into
an ``argparse`` parser with ``--config file.yaml`` (defaults) plus one flag per field (overrides); nested dataclass
fields take dotted flags (``--train.learning_rate 1e-3``). Values on the command line are read as YAML scalars/lists so
``--seeds "[0, 1]"`` works. We do not use ``HfArgumentParser`` because it neither type-checks YAML values nor nests.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A user-facing configuration problem (bad key, type, value, path). The CLI prints it and exits with code 2."""


# numpy's seed range: every seed ends up in ``np.random.seed`` (HF's ``set_seed`` too), which takes [0, 2**32 - 1].
SEED_MAX = 2**32 - 1


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping names one key twice (PyYAML would silently keep the last value)."""

    def __init__(self, key, first_line: int, second_line: int):
        super().__init__(f"key {key!r} appears twice (lines {first_line} and {second_line})")
        self.key, self.first_line, self.second_line = key, first_line, second_line


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys in a mapping (merge keys ``<<`` may still override)."""


def _strict_mapping(loader: StrictLoader, node: yaml.MappingNode):
    lines: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = lines.get(key)
        except TypeError:  # an unhashable key: the default constructor reports it
            continue
        if first is not None:
            raise DuplicateKeyError(key, first, key_node.start_mark.line + 1)
        lines[key] = key_node.start_mark.line + 1
    return (yield from yaml.SafeLoader.construct_yaml_map(loader, node))


StrictLoader.add_constructor("tag:yaml.org,2002:map", _strict_mapping)


def load_yaml(text: str):
    """``yaml.safe_load`` that raises :class:`DuplicateKeyError` on a key given twice."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} fields"
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, key: str):
    """Check ``value`` against the annotation ``tp`` and return it (lists copied, nested dataclasses built)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose from {list(choices)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return load_config(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        # YAML 1.1 reads "1e-3" (no dot) as a string: accept numeric strings for float fields.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")  # a bug in a config class, not user input


def load_config(cls: type[T], data: dict | None, prefix: str = "") -> T:
    """Build ``cls`` from ``data``; unknown keys, wrong types and failed ``validate()`` raise :class:`ConfigError`."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: expected a mapping, got {data!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            _refuse_moved(cls, str(key), prefix)
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(
                f"unknown key {prefix + str(key)!r} for {cls.__name__}{hint}; allowed keys: {sorted(names)}"
            )
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init
        and f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing required key(s) {[prefix + m for m in missing]} for {cls.__name__}")
    try:
        cfg = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cls.__name__}: {e}") from e
    return cfg


def _refuse_moved(cls, key: str, prefix: str) -> None:
    """A key a config class lists in ``MOVED_KEYS`` (old name -> new dotted name, relative to the class) is refused
    with one line naming the new spelling, rather than as an unknown key."""
    moved = getattr(cls, "MOVED_KEYS", {})
    if key in moved:
        raise ConfigError(f"{prefix}{key} moved: write {prefix}{moved[key]}")


def _moved_flag(cls, dotted: str) -> None:
    """``--a.b.old`` on the command line, where ``old`` is in the ``MOVED_KEYS`` of section ``a.b``."""
    *parents, leaf = dotted.split(".")
    tp = cls
    for part in parents:
        tp = _hints(tp).get(part) if dataclasses.is_dataclass(tp) else None
        if tp is None:
            return
    if dataclasses.is_dataclass(tp):
        _refuse_moved(tp, leaf, "".join(p + "." for p in parents))


def validate_config(cfg, prefix: str = "") -> None:
    """Run ``validate()`` on ``cfg`` and every nested dataclass config (errors name the section), and check that an
    ``output_dir`` could be written, so a bad value fails before any work starts."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate_config(value, f"{prefix}{f.name}.")
    try:
        if hasattr(cfg, "validate"):
            cfg.validate()
    except ConfigError as e:
        if not prefix:
            raise
        raise ConfigError(f"{prefix.rstrip('.')}: {e}") from e
    except (TypeError, ValueError, ArithmeticError) as e:
        # A validate() tripping over a value it did not expect is still the user's input: report it as such.
        raise ConfigError(f"{prefix.rstrip('.') or type(cfg).__name__}: invalid value ({e})") from e
    check_seeds(cfg, prefix)
    out = getattr(cfg, "output_dir", None)
    if isinstance(out, str):
        check_writable_dir(out, f"{prefix}output_dir")


def check_regex(name: str, pattern: str) -> None:
    """``validate()`` helper: ``pattern`` must compile as a Python regex."""
    import re

    try:
        re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"{name} {pattern!r} is not a regex: {e}") from e


def check_positive(cfg, positive: tuple[str, ...] = (), at_least_one: tuple[str, ...] = ()) -> None:
    """``validate()`` helper: the ``positive`` fields of ``cfg`` must be > 0, the ``at_least_one`` ones >= 1."""
    for name in positive:
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{name} must be > 0, got {getattr(cfg, name)}")
    for name in at_least_one:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")


def check_seeds(cfg, prefix: str = "") -> None:
    """Every ``seed``, ``seeds`` and ``*_seed`` field of ``cfg`` (not nested) must be in numpy's range, so a bad seed
    fails here and not inside the Trainer after the poison stage already ran."""
    for f in dataclasses.fields(cfg):
        if not (f.name in ("seed", "seeds") or f.name.endswith("_seed")):
            continue
        value = getattr(cfg, f.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for i, v in enumerate(values):
            if isinstance(v, int) and not isinstance(v, bool) and not 0 <= v <= SEED_MAX:
                key = f"{prefix}{f.name}" + (f"[{i}]" if isinstance(value, (list, tuple)) else "")
                raise ConfigError(f"{key}: {v} is outside the seed range [0, 2**32 - 1] (numpy's)")


# Room left under an output dir for the longest path a stage writes inside it (checkpoint dirs, temporary names).
PATH_RESERVE = 160


def check_writable_dir(path: str, key: str = "output_dir") -> None:
    """Refuse an output dir that could not be created or written, or whose name the filesystem would refuse (a
    component longer than its NAME_MAX, a path too long for the files a stage writes inside): a pure check, nothing is
    created here."""
    if not path.strip() or "\x00" in path:
        raise ConfigError(f"{key}: {path!r} is not a usable directory path")
    try:
        p = Path(path).expanduser()
    except RuntimeError as e:  # "~user" of a user this machine does not know
        raise ConfigError(f"{key}: {path!r}: {e}") from e
    probe = p
    while not _exists(probe):
        if probe.parent == probe:
            break
        probe = probe.parent
    name_max, path_max = _fs_limits(probe if probe.is_dir() else probe.parent)
    for part in p.absolute().parts:
        if len(os.fsencode(part)) > name_max:
            raise ConfigError(
                f"{key}: {path!r} holds a name of {len(os.fsencode(part))} bytes ({part[:24]}...); this "
                f"filesystem allows at most {name_max}"
            )
    if len(os.fsencode(str(p.absolute()))) + PATH_RESERVE > path_max:
        raise ConfigError(
            f"{key}: {path!r} is too long ({len(os.fsencode(str(p.absolute())))} bytes; with the files a stage "
            f"writes inside it, paths must stay under {path_max})"
        )
    if _exists(p) and not p.is_dir():
        raise ConfigError(f"{key}: {path!r} exists and is not a directory")
    if not probe.is_dir():
        raise ConfigError(f"{key}: {path!r} cannot be created: {str(probe)!r} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {path!r} is not writable (no write permission on {str(probe)!r})")


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except OSError:  # a component too long: it does not exist either
        return False


def _fs_limits(directory: Path) -> tuple[int, int]:
    """(NAME_MAX, PATH_MAX) of the filesystem holding ``directory`` (255 and 4096 where it cannot be asked)."""
    try:
        return os.pathconf(directory, "PC_NAME_MAX"), os.pathconf(directory, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        return 255, 4096


def read_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = load_yaml(p.read_text())
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text ({e.reason})") from e
    except DuplicateKeyError as e:
        raise ConfigError(f"config file {str(p)!r}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {_yaml_problem(e)}") from e
    if data is None:  # an empty file (or only comments) would silently start every default: a mistake, not a recipe
        raise ConfigError(f"config file {str(p)!r} is empty (it sets no keys)")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


def _yaml_problem(e: Exception) -> str:
    """PyYAML's multi-line error as one line: the problem and where (the CLI prints one line per error)."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, output_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the fully resolved config next to a stage's artifact (atomically)."""
    from .files import atomic_write_text

    path = Path(output_dir) / name
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


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


def build_config(cls: type[T], data: dict | None = None, **overrides) -> T:
    """Python-API twin of ``parse_config``: a mapping (e.g. from YAML) plus keyword overrides, validated."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping of keys to values, got {data!r}")
    merged = dict(data or {})
    merged.update(overrides)
    cfg = load_config(cls, merged)
    validate_config(cfg)
    return cfg
