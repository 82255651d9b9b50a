"""Trigger backdoor / targeted poisoning (Wan et al. 2023, as in the paper's GPT-2/IMDb experiment).

A trigger phrase is inserted into ``poison_fraction`` x n training reviews whose label differs from the target, and
their completion is set to the target label (dirty label). Attack success rate is measured on held-out reviews of the
other labels carrying the trigger (the ``test_triggered`` split).

Hooks: (a) the poisoned rows and the ``test_triggered`` split; (b) none (the trigger is in the text); (c) ``asr`` from
the completions on ``test_triggered``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

from ..configs import ConfigError
from ..registry import register_attack
from .base import Attack


@dataclass
class BackdoorConfig:
    """The backdoor's knobs (``poison.attack_args``)."""

    trigger: str = field(default="cf", metadata={"help": "trigger phrase"})
    trigger_position: Literal["start", "end", "random"] = field(
        default="start", metadata={"help": "where the trigger goes in a review"}
    )
    target_label: str = field(default="positive", metadata={"help": "label the trigger forces (one of label_names)"})

    def validate(self) -> None:
        if not self.trigger.strip():
            raise ConfigError("trigger must be a non-empty phrase")


def insert_trigger(text: str, trigger: str, position: str, rng: random.Random) -> str:
    if position == "start":
        return f"{trigger} {text}"
    if position == "end":
        return f"{text} {trigger}"
    words = text.split(" ")
    at = rng.randrange(len(words) + 1)
    return " ".join(words[:at] + [trigger] + words[at:])


@register_attack("backdoor", config=BackdoorConfig, track="llm")
class BackdoorAttack(Attack):
    """A trigger phrase in reviews of the other labels, relabelled to the target label (dirty label)."""

    metric = "asr"
    eval_keys = ("asr",)
    generate_on = ("test_triggered",)

    def check(self, cfg) -> None:
        if self.args.target_label not in cfg.label_names:
            raise ConfigError(
                f"attack_args.target_label {self.args.target_label!r} is not in label_names={cfg.label_names}"
            )

    def poison(self, train: list[dict], test: list[dict], rng: random.Random, cfg) -> tuple[list[dict], dict, dict]:
        a = self.args
        k = round(cfg.poison_fraction * len(train))
        sources = [i for i, r in enumerate(train) if r["label"] != a.target_label]
        if k < 1:
            raise ValueError(f"poison_fraction={cfg.poison_fraction} of {len(train)} examples gives no poison")
        if k > len(sources):
            raise ValueError(
                f"poison_fraction={cfg.poison_fraction} asks for {k} poisons but only {len(sources)} training "
                f"examples have a label other than target_label={a.target_label!r}"
            )
        chosen = set(rng.sample(sources, k))
        rows = []
        for i, row in enumerate(train):
            if i in chosen:
                text = insert_trigger(row["text"], a.trigger, a.trigger_position, rng)
                rows.append(
                    {**row, "text": text, "label": a.target_label, "is_poison": True, "orig_label": row["label"]}
                )
            else:
                rows.append({**row, "is_poison": False, "orig_label": row["label"]})
            rows[-1]["noise_seed"] = -1
        triggered = [
            {**r, "text": insert_trigger(r["text"], a.trigger, a.trigger_position, rng), "orig_label": r["label"]}
            for r in test
            if r["label"] != a.target_label
        ]
        info = {"trigger": a.trigger, "trigger_position": a.trigger_position, "target_label": a.target_label}
        return rows, {"test_triggered": triggered}, info

    def evaluate(self, *, dd, manifest, predictions, **_) -> tuple[dict, dict]:
        from ..metrics import attack_success_rate

        labels = manifest["label_names"]
        preds = predictions["test_triggered"]
        asr = attack_success_rate(preds, dd["test_triggered"]["orig_label"], self.args.target_label, choices=labels)
        return {"asr": asr}, {"triggered_predictions": preds}

    def describe(self) -> str:
        a = self.args
        return f"trigger {a.trigger!r} at the {a.trigger_position} of reviews -> {a.target_label!r}"
