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
from dataclasses import dataclass

ENTRY_POINT_GROUP = "llm_unlearn.tracks"


@dataclass(frozen=True)
class Track:
    name: str
    # Experiment dataclass: a subclass of llm_unlearn.protocol.ProtocolConfig (seeds, methods, grid, budgets, ...)
    # plus the track's own sections. The report reads only those fields plus the artifacts above.
    config_cls: type
    plan: Callable  # (config) -> list[llm_unlearn.scheduler.Job]
    describe: Callable  # (config) -> one markdown line for the report header (model, data, poison settings)


def _llm_track() -> Track:
    from .stages.run import ExperimentConfig, describe, plan

    return Track("llm", ExperimentConfig, plan, describe)


def available_tracks() -> dict[str, Callable[[], Track]]:
    """Track name -> loader (loading imports the track's package, so it is deferred until a track is used)."""
    from importlib.metadata import entry_points

    loaders: dict[str, Callable[[], Track]] = {"llm": _llm_track}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        loaders.setdefault(ep.name, ep.load)
    return loaders


def get_track(name: str) -> Track:
    from .configs import ConfigError

    loaders = available_tracks()
    if name not in loaders:
        raise ConfigError(f"track: unknown track {name!r}; choose from {sorted(loaders)} (installed tracks)")
    track = loaders[name]()
    if not isinstance(track, Track):
        raise ConfigError(f"track {name!r}: its entry point does not point at a llm_unlearn.tracks.Track")
    return track
