"""Utility and attack metrics on generated labels: accuracy, attack success rate, gap closed."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

__all__ = ["accuracy", "attack_success_rate", "gap_closed", "normalize_label"]


def _norm(text: str) -> str:
    return text.strip().lower()


def _check_choices(choices: Sequence[str]) -> list[str]:
    if isinstance(choices, str):
        raise ValueError("`choices` must be a sequence of strings, not a single string")  # noqa: TRY004
    normalized = [_norm(choice) for choice in choices]
    if not normalized:
        raise ValueError("`choices` must not be empty")
    if any(not choice for choice in normalized):
        raise ValueError("`choices` must not contain empty or whitespace-only strings")
    return normalized


def _default_choices(*groups: Sequence[str]) -> list[str]:
    """Distinct normalized labels, longest first so that "positive" wins over a "pos" prefix."""
    seen: dict[str, None] = {}
    for group in groups:
        for label in group:
            seen.setdefault(_norm(label), None)
    return sorted(seen, key=len, reverse=True)


def normalize_label(text: str, choices: Sequence[str]) -> str | None:
    """Maps a generated completion to the first choice it starts with.

    Both the text and the choices are compared after stripping whitespace and lower-casing, so
    `normalize_label("  Positive.", ["positive", "negative"]) == "positive"`.

    Args:
        text (`str`): The generated completion.
        choices (`Sequence[str]`): The candidate labels, tried in order.

    Returns:
        `str | None`: The matched choice in normalized (stripped, lower-case) form, or `None` if none matches.

    Raises:
        ValueError: If `text` is not a string or `choices` is empty or contains an empty string.
    """
    if not isinstance(text, str):
        raise ValueError(f"`text` must be a str, got {type(text).__name__}")  # noqa: TRY004
    normalized_choices = _check_choices(choices)
    normalized_text = _norm(text)
    for choice in normalized_choices:
        if normalized_text.startswith(choice):
            return choice
    return None


def _check_pair(predictions: Sequence[str], labels: Sequence[str], labels_name: str) -> None:
    if len(predictions) == 0:
        raise ValueError("`predictions` must not be empty")
    if len(predictions) != len(labels):
        raise ValueError(
            f"`predictions` and `{labels_name}` must have the same length, got {len(predictions)} and {len(labels)}"
        )


def accuracy(predictions: list[str], labels: list[str], choices: Sequence[str] | None = None) -> float:
    """Fraction of predictions equal to their label after [`normalize_label`].

    Args:
        predictions (`list[str]`): Generated completions.
        labels (`list[str]`): Gold labels (compared stripped and lower-cased).
        choices (`Sequence[str]`, *optional*): The label set used to normalize the predictions. Defaults to the
            distinct labels, longest first.

    Returns:
        `float`: Accuracy in [0, 1]; an unparseable prediction counts as wrong.

    Raises:
        ValueError: If `predictions` is empty or the lengths differ.
    """
    _check_pair(predictions, labels, "labels")
    choices = _default_choices(labels) if choices is None else choices
    correct = sum(normalize_label(pred, choices) == _norm(label) for pred, label in zip(predictions, labels))
    return correct / len(predictions)


def attack_success_rate(
    predictions: list[str], true_labels: list[str], target: str, choices: Sequence[str] | None = None
) -> float:
    """Attack success rate of a backdoor / targeted attack.

    ASR = fraction of the triggered inputs whose *true* label differs from `target` that are predicted as `target`.
    Inputs whose true label equals the target are excluded (predicting the target there is no success).

    Args:
        predictions (`list[str]`): Completions on the triggered inputs.
        true_labels (`list[str]`): True labels of those inputs.
        target (`str`): The adversary's target label.
        choices (`Sequence[str]`, *optional*): Label set used to normalize the predictions. Defaults to the distinct
            true labels and the target, longest first.

    Returns:
        `float`: ASR in [0, 1].

    Raises:
        ValueError: If `predictions` is empty, the lengths differ, `target` is empty, or no input has a true label
            different from `target`.
    """
    _check_pair(predictions, true_labels, "true_labels")
    if not isinstance(target, str) or not _norm(target):
        raise ValueError(f"`target` must be a non-empty string, got {target!r}")
    target_norm = _norm(target)
    choices = _default_choices(true_labels, [target]) if choices is None else choices
    kept = [pred for pred, label in zip(predictions, true_labels) if _norm(label) != target_norm]
    if not kept:
        raise ValueError(f"`true_labels` has no input whose true label differs from `target` ({target!r})")
    hits = sum(normalize_label(pred, choices) == target_norm for pred in kept)
    return hits / len(kept)


def gap_closed(m_initial: float, m_updated: float, m_retrain: float) -> float | None:
    """Fraction of the initial-vs-retrain gap of a poison metric that unlearning closed.

    `(M(initial) - M(updated)) / (M(initial) - M(retrain))`: 1 = as good as retraining, 0 = no effect, < 0 = the
    poison got stronger, > 1 = overshoot.

    Args:
        m_initial (`float`): Metric of the poisoned model.
        m_updated (`float`): Metric after unlearning.
        m_retrain (`float`): Metric of the model retrained without the poisons.

    Returns:
        `float | None`: The closed fraction, or `None` if `|M(initial) - M(retrain)| < 1e-12` (undefined).

    Raises:
        ValueError: If an argument is not a finite number.
    """
    values = {"m_initial": m_initial, "m_updated": m_updated, "m_retrain": m_retrain}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    denominator = float(m_initial) - float(m_retrain)
    if abs(denominator) < 1e-12:
        return None
    return (float(m_initial) - float(m_updated)) / denominator
