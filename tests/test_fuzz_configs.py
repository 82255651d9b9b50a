"""Fuzzing the config loader: whatever mapping, YAML file or argv a user hands in, ``build_config``/``load_config``/
``parse_config`` either return a config of the requested class or raise :class:`ConfigError` (the CLI turns that into
one line and exit code 2). Any other exception would reach the user as a traceback."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import types
import typing
from typing import Any, Literal, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_unlearn.configs import ConfigError, build_config, load_config
from llm_unlearn.flags import parse_config
from llm_unlearn.stages.diagnose import DiagnoseConfig
from llm_unlearn.stages.evaluate import EvalConfig
from llm_unlearn.stages.poison import PoisonConfig
from llm_unlearn.stages.report import ReportConfig
from llm_unlearn.stages.run import ExperimentConfig, SuiteConfig
from llm_unlearn.stages.train import TrainConfig
from llm_unlearn.stages.unlearn import UnlearnConfig
from llm_unlearn.embedded import TinyModelConfig

CLASSES = [
    ExperimentConfig,
    PoisonConfig,
    TrainConfig,
    UnlearnConfig,
    EvalConfig,
    TinyModelConfig,
    SuiteConfig,
    ReportConfig,
    DiagnoseConfig,
]


def _image_track_configs() -> list[type]:
    """The image track's configs go through the same loader: fuzz them too when that package is installed."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("image_track") is None:
        return []
    names = [
        ("image_track.track", "ImageExperimentConfig"),
        ("image_track.poisoning", "ImagePoisonConfig"),
        ("image_track.task", "ImageTrainConfig"),
        ("image_track.task", "ImageUnlearnConfig"),
        ("image_track.task", "ImageEvalConfig"),
    ]
    return [getattr(importlib.import_module(m), c) for m, c in names]


CLASSES += _image_track_configs()

SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)

# Anything YAML could produce (and a few things it could not: the Python API takes any mapping).
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "0", "1e-3", ".nan", "[", "{a: 1}", "/", "..", "embedded:tiny-llama", "gd", "hf", "\x00"]),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=4)
    ),
    max_leaves=12,
)


def value_for(tp) -> st.SearchStrategy:
    """A value of (nearly) the annotated type, or junk: the loader must handle both."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return junk
    if origin in (Union, types.UnionType):
        return st.one_of(*(value_for(a) for a in typing.get_args(tp) if a is not type(None)), st.none())
    if origin is Literal:
        return st.one_of(st.sampled_from(typing.get_args(tp)), junk)
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return st.one_of(st.lists(value_for(item), max_size=4), junk)
    if origin is dict:
        return st.one_of(st.dictionaries(st.text(max_size=8), junk, max_size=3), junk)
    if dataclasses.is_dataclass(tp):
        return st.one_of(mapping_for(tp), junk)
    base = {
        bool: st.booleans(),
        int: st.integers(min_value=-3, max_value=100),
        float: st.one_of(st.floats(min_value=-2, max_value=2), st.floats()),
        str: st.text(max_size=12),
    }.get(tp, junk)
    return st.one_of(base, junk)


def mapping_for(cls) -> st.SearchStrategy:
    """Mostly real keys with typed-or-junk values, sometimes unknown keys."""
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    known = st.sampled_from(fields).flatmap(lambda k: st.tuples(st.just(k), value_for(hints[k])))
    unknown = st.tuples(st.one_of(st.text(max_size=10), st.integers(), st.none()), junk)
    return st.lists(st.one_of(known, known, known, unknown), max_size=6).map(dict)


def _is_ok(cfg, cls) -> None:
    assert isinstance(cfg, cls)


def _never_creates_files(fn):
    """Validation must be a pure check: run it in an empty cwd and insist the cwd stays empty."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        try:
            return fn()
        finally:
            os.chdir(old)
            assert not os.listdir(d), f"validation wrote {os.listdir(d)}"


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_build_config_raises_only_config_error(cls):
    @SETTINGS
    @given(data=st.one_of(mapping_for(cls), junk))
    def check(data):
        def go():
            try:
                _is_ok(build_config(cls, data), cls)
            except ConfigError:
                pass

        _never_creates_files(go)

    check()


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_load_config_raises_only_config_error(cls):
    @SETTINGS
    @given(data=st.one_of(mapping_for(cls), junk))
    def check(data):
        try:
            _is_ok(load_config(cls, data), cls)
        except ConfigError:
            pass

    check()


def _flag_names(cls, prefix="") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        out += _flag_names(tp, f"{prefix}{f.name}.") if dataclasses.is_dataclass(tp) else [prefix + f.name]
    return out


def argv_for(cls) -> st.SearchStrategy:
    flags = st.sampled_from(_flag_names(cls)).map(lambda n: f"--{n}")
    values = st.one_of(
        st.text(max_size=10).filter(lambda v: not v.startswith("-")),
        st.sampled_from(["[0, 1]", "[]", "{}", "{a: 1}", "1e-3", "nan", "true", "null", "[1, [2]]", ": :", "'x"]),
    )
    pair = st.tuples(flags, values).map(list)
    other = st.sampled_from(["--bogus", "-x", "--", "--config", "--help=1", "positional"]).map(lambda a: [a])
    return st.lists(st.one_of(pair, pair, pair, other), max_size=5).map(lambda xs: [a for x in xs for a in x])


@pytest.mark.parametrize("cls", [ExperimentConfig, PoisonConfig, UnlearnConfig], ids=lambda c: c.__name__)
def test_parse_config_raises_only_config_error(cls):
    @SETTINGS
    @given(argv=argv_for(cls))
    def check(argv):
        def go():
            try:
                _is_ok(parse_config(cls, argv), cls)
            except ConfigError:
                pass
            except SystemExit as e:  # argparse's own exit (--config without a value): usage error, code 2
                assert e.code == 2

        _never_creates_files(go)

    check()


yaml_text = st.one_of(
    st.text(max_size=60),
    st.lists(
        st.tuples(st.sampled_from(["seeds", "poison", "train", "budgets", "methods", "x", "- a", "track"]), junk),
        max_size=4,
    ).map(lambda kv: "\n".join(f"{k}: {v!r}" for k, v in kv)),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)


def test_config_file_raises_only_config_error():
    @SETTINGS
    @given(text=yaml_text, raw=st.booleans())
    def check(text, raw):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "exp.yaml")
            with open(path, "wb") as f:
                f.write(text.encode("utf-8", "surrogatepass") if not raw else text.encode("latin-1", "replace"))
            try:
                _is_ok(parse_config(ExperimentConfig, ["--config", path]), ExperimentConfig)
            except ConfigError:
                pass

    check()
