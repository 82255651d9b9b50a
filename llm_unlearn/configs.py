"""Typed dataclass configs: YAML files and CLI flags in, strict validation, resolved YAML out.

Every stage config is a plain ``@dataclass``. ``load_config`` builds one from a mapping and rejects unknown keys and
wrong types with a :class:`ConfigError` that names the key and what is allowed. ``make_parser`` turns a dataclass into
an ``argparse`` parser with ``--config file.yaml`` (defaults) plus one flag per field (overrides); nested dataclass
fields take dotted flags (``--train.learning_rate 1e-3``). Values on the command line are read as YAML scalars/lists so
``--seeds "[0, 1]"`` works. We do not use ``HfArgumentParser`` because it neither type-checks YAML values nor nests.
"""

from __future__ import annotations

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


def build_config(cls: type[T], data: dict | None = None, **overrides) -> T:
    """Python-API twin of ``parse_config``: a mapping (e.g. from YAML) plus keyword overrides, validated."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping of keys to values, got {data!r}")
    merged = dict(data or {})
    merged.update(overrides)
    cfg = load_config(cls, merged)
    validate_config(cfg)
    return cfg
