"""Tracks: the modalities `llm-unlearn run` can orchestrate. ``llm`` is built in; others (``image`` from the
``image_track`` package) register themselves as entry points, so this package never imports them::

    [project.entry-points."llm_unlearn.tracks"]
    image = "image_track.track:TRACK"

A track is an experiment config class and a planner. The planner returns stage jobs (dotted module paths whose
``main(config)`` writes one output dir) laid out as the shared report reads them::

    seed_<s>/poison/manifest.json                    attack, metric (the eval key of the poison metric)
    seed_<s>/{initial,retrain}/training_info.json    wall_seconds, diverged, compute_tokens
    seed_<s>/unlearn/<model_id>/unlearn_info.json    method, method_args, overrides, budget, compute_fraction, ...
    seed_<s>/eval/<initial|retrain|model_id>/eval_results.json  (+ per_sample.json)
    seed_<s>/diag/<model_id>/diagnostics.json        optional: parameter-shift diagnostics
"""

from __future__ import annotations

from collections.abc import Callable
import os
from dataclasses import dataclass
from pathlib import Path

from .configs import ConfigError, load_config

ENTRY_POINT_GROUP = "llm_unlearn.tracks"


@dataclass(frozen=True)
class Track:
    name: str
    # Experiment dataclass: a subclass of llm_unlearn.protocol.ProtocolConfig (seeds, methods, grid, budgets, ...)
    # plus the track's own sections. The report reads only those fields plus the artifacts above.
    config_cls: type
    plan: Callable  # (config) -> list[llm_unlearn.scheduler.Job]
    describe: Callable  # (config) -> one markdown line for the report header (model, data, poison settings)


# The built-in track, named the way an entry point names one ("module:attribute") and loaded the same way on use, so
# that this registry (below the stages) never imports the stages that define it.
BUILTIN = {"llm": "llm_unlearn.stages.run:TRACK"}


def _load(spec: str) -> Callable[[], Track]:
    def load() -> Track:
        import importlib

        module, attr = spec.split(":")
        return getattr(importlib.import_module(module), attr)

    return load


def available_tracks() -> dict[str, Callable[[], Track]]:
    """Track name -> loader (loading imports the track's package, so it is deferred until a track is used)."""
    from importlib.metadata import entry_points

    loaders: dict[str, Callable[[], Track]] = {name: _load(spec) for name, spec in BUILTIN.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        loaders.setdefault(ep.name, ep.load)
    return loaders


def get_track(name: str) -> Track:
    loaders = available_tracks()
    if name not in loaders:
        raise ConfigError(f"track: unknown track {name!r}; choose from {sorted(loaders)} (installed tracks)")
    track = loaders[name]()
    if not isinstance(track, Track):
        raise ConfigError(f"track {name!r}: its entry point does not point at a llm_unlearn.tracks.Track")
    return track


def track_name(data: dict | None) -> str:
    """The ``track`` key of an experiment mapping (default llm), checked to be a string."""
    name = (data or {}).get("track", "llm") if isinstance(data, dict) else "llm"
    if not isinstance(name, str):
        raise ConfigError(f"track: expected a string, got {name!r}")
    return name


def load_experiment(run_dir: str | os.PathLike):
    """The experiment config a run directory was made with (of its track's class)."""
    import yaml

    p = Path(run_dir) / "experiment.yaml"
    if not p.is_file():
        raise ConfigError(f"run_dir {str(run_dir)!r} holds no experiment.yaml (not a `llm-unlearn run` directory)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} does not parse ({str(e).splitlines()[0]})") from e
    if isinstance(data, dict) and isinstance(data.get("plugins"), list):
        from .registry import load_plugins

        load_plugins(data["plugins"])  # the run's own methods/attacks, before its config names them
    return load_config(get_track(track_name(data)).config_cls, data)
