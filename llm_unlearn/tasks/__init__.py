"""Tasks: the modality seam every stage and method talks to (``causal_lm.CausalLMTask``, ``classification.
ClassificationTask``), plus the embedded task datasets (synthetic corpora shipped with the package).

A model carries its task as ``model.unlearn_task`` (classifiers set it); a model without one is a causal LM.
"""

from __future__ import annotations


def task_of(model):
    """The task a model belongs to: its own ``unlearn_task`` attribute (classifiers set one), else the causal LM."""
    from .causal_lm import CausalLMTask

    unwrapped = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(unwrapped, "unlearn_task", None) or CausalLMTask()


# --- Tasks other packages provide for the stages (the image track's classification task) ---

TASK_GROUP = "llm_unlearn.tasks"


def stage_task(cfg):
    """The task a stage config belongs to, or None for the causal LM (the stages' own code path).

    A config of another task names it in its ``task`` field (e.g. ``image_classification``); the task object,
    found through the ``llm_unlearn.tasks`` entry points (``image_classification = "image_track.task:TASK"``) or
    a plugin's ``register_task``, provides what the shared stages ask of a model and its data: loading and saving
    models, checking model dirs, the training and unlearning data, and the evaluation metrics."""
    name = getattr(cfg, "task", None)
    if name in (None, "causal_lm"):
        return None
    return get_task(name)


_TASKS: dict = {}


def register_task(name: str, task) -> None:
    """Register a task object under ``name`` (what a config's ``task`` field names)."""
    _TASKS[name] = task


def get_task(name: str):
    from ..configs import ConfigError

    if name not in _TASKS:
        from importlib.metadata import entry_points

        for ep in entry_points(group=TASK_GROUP):
            if ep.name == name:
                _TASKS[name] = ep.load()
    if name not in _TASKS:
        known = sorted({"causal_lm", *_TASKS, *(ep.name for ep in _entry_points())})
        raise ConfigError(f"task: unknown task {name!r}; choose from {known} (installed tasks)")
    return _TASKS[name]


def _entry_points():
    from importlib.metadata import entry_points

    return entry_points(group=TASK_GROUP)
