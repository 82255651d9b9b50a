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
