"""Trigger backdoor / targeted poisoning (Wan et al. 2023, as in the paper's GPT-2/IMDb experiment).

A trigger phrase is inserted into ``poison_fraction`` x n training reviews whose label differs from the target, and
their completion is set to the target label (dirty label). Attack success rate is measured on held-out reviews of the
other labels carrying the trigger (the ``test_triggered`` split).
"""

from __future__ import annotations

import random


def insert_trigger(text: str, trigger: str, position: str, rng: random.Random) -> str:
    if position == "start":
        return f"{trigger} {text}"
    if position == "end":
        return f"{text} {trigger}"
    words = text.split(" ")
    at = rng.randrange(len(words) + 1)
    return " ".join(words[:at] + [trigger] + words[at:])


class BackdoorAttack:
    name = "backdoor"
    metric = "asr"

    def __init__(self, cfg):
        self.cfg = cfg

    def apply(self, train: list[dict], test: list[dict], rng: random.Random) -> tuple[list[dict], dict, dict]:
        cfg = self.cfg
        k = round(cfg.poison_fraction * len(train))
        sources = [i for i, r in enumerate(train) if r["label"] != cfg.target_label]
        if k < 1:
            raise ValueError(f"poison_fraction={cfg.poison_fraction} of {len(train)} examples gives no poison")
        if k > len(sources):
            raise ValueError(
                f"poison_fraction={cfg.poison_fraction} asks for {k} poisons but only {len(sources)} training "
                f"examples "
                f"have a label other than target_label={cfg.target_label!r}"
            )
        chosen = set(rng.sample(sources, k))
        rows = []
        for i, row in enumerate(train):
            if i in chosen:
                text = insert_trigger(row["text"], cfg.trigger, cfg.trigger_position, rng)
                rows.append(
                    {**row, "text": text, "label": cfg.target_label, "is_poison": True, "orig_label": row["label"]}
                )
            else:
                rows.append({**row, "is_poison": False, "orig_label": row["label"]})
            rows[-1]["noise_seed"] = -1
        triggered = [
            {**r, "text": insert_trigger(r["text"], cfg.trigger, cfg.trigger_position, rng), "orig_label": r["label"]}
            for r in test
            if r["label"] != cfg.target_label
        ]
        info = {"trigger": cfg.trigger, "trigger_position": cfg.trigger_position, "target_label": cfg.target_label}
        return rows, {"test_triggered": triggered}, info
