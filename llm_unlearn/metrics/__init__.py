"""Metrics: Gaussian Unlearning Score, membership inference, utility and attack success."""

from .gus import gaussian_scores, gus_summary, input_gradients, scores_from_gradients, stouffer_z
from .mia import loss_mia, tpr_at_fpr
from .utility import accuracy, attack_success_rate, gap_closed, normalize_label

__all__ = [
    "accuracy",
    "attack_success_rate",
    "gap_closed",
    "gaussian_scores",
    "gus_summary",
    "input_gradients",
    "loss_mia",
    "normalize_label",
    "scores_from_gradients",
    "stouffer_z",
    "tpr_at_fpr",
]
