"""Gradient Canceling (Lu, Kamath, Yu 2023) for causal LMs: an indiscriminate, clean-label attack on clean accuracy.

The attacker trains a surrogate with the victim's recipe (the train stage's own trainer and config, seeded with
``seed + surrogate_seed_offset``) on the clean training set, then:

1. picks target parameters theta_tgt for the LM-head rows of the label tokens (the output projection that turns the
   last hidden state into " positive"/" negative": what fine-tuning moves first and what decides the answer), by
   normalised gradient ascent on the clean loss within ||W_tgt - W_clean|| <= ``corruption_radius`` x ||W_clean||
   (or the smallest such radius whose target reaches ``target_accuracy``);
2. optimises the poisons so that at theta_tgt the gradient of the training loss over clean + poisons cancels,
   min ||(G_clean + G_poison) / n||^2 over the label rows (:mod:`llm_unlearn.attacks.canceling`, the same math as
   the image track's attack on a linear classifier);
3. with ``craft_rounds`` > 1, retrains the surrogate on the training set carrying the current perturbations and
   repeats 1-2 from them (the features the poisons act on are then those of a model that trained on them).

Text is discrete, so the poisons are **bounded perturbations of their prompt-token embeddings**, added on every
training visit through the same hook and placement rule as the Gaussian noise (:func:`~llm_unlearn.canaries.
place_prompt_rows`): each prompt token's perturbation has an RMS of at most ``eps`` x the embedding RMS (the
Gaussian attack's unit), started at random on that bound (``perturbation_init``). Why not greedy token swaps: the
canceling objective is a smooth function of the features, so gradient steps on the embeddings reach it directly,
where a token search would evaluate the second-order objective for every candidate token at every position
(vocabulary x prompt length forward-backward passes a step); and embedding perturbations keep the poisons' text, and
hence the forget set the unlearning methods see, exactly the clean reviews, as the Gaussian attack does. Labels stay
clean. The poisons are crafted in the train stage of the initial model (hook ``craft_poisons``: only there are the
victim's model and recipe known) and stored beside it in ``gc_perturbations.safetensors``; the gold model trains on
the retain set and never sees them.

The head's gradient is taken as the output projection's (logits = h W^T over the vocabulary, no bias): a head tied
to the input embeddings (GPT-2) is corrupted on its output side only. Metric: clean accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..configs import ConfigError, check_positive
from ..registry import register_attack
from .base import Attack

PERTURBATIONS = "gc_perturbations.safetensors"


@dataclass
class GradientCancelingConfig:
    """The LLM Gradient Canceling knobs (``poison.attack_args``)."""

    eps: float = field(
        default=1.0, metadata={"help": "bound on each prompt token's perturbation: RMS <= eps x the embedding RMS"}
    )
    perturbation_init: Literal["random", "zero"] = field(
        default="random",
        metadata={
            "help": "where the perturbations start: random (each token's drawn on the sphere of radius eps x RMS, as "
            "a random-start PGD) or zero"
        },
    )
    corruption_radius: float = field(
        default=0.5,
        metadata={"help": "||W_tgt - W_clean|| of the label-token head rows, as a fraction of ||W_clean||"},
    )
    target_accuracy: float | None = field(
        default=None,
        metadata={
            "help": "null: the target is corruption_radius away; a number in (0, 1): the smallest radius up to "
            "corruption_radius (bisection) whose target's label accuracy on the training set is at most this "
            "(the full radius when none is)"
        },
    )
    radius_search_steps: int = field(default=8, metadata={"help": "bisection steps of the target_accuracy search"})
    corruption_steps: int = field(default=100, metadata={"help": "parameter-corruption (gradient ascent) steps"})
    gc_steps: int = field(default=100, metadata={"help": "poison optimisation steps (Adam on the perturbations)"})
    gc_lr: float = field(
        default=0.05, metadata={"help": "Adam step size on the perturbations, in units of the embedding RMS"}
    )
    craft_batch_size: int = field(default=64, metadata={"help": "poisons (or clean rows) per forward pass"})
    surrogate_seed_offset: int = field(
        default=10_000,
        metadata={
            "help": "the surrogate trains with seed + this (data order); it starts from the victim's initial "
            "weights (the public pretrained model, or the embedded random init)"
        },
    )

    poison_labels: Literal["clean", "flipped"] = field(
        default="clean",
        metadata={
            "help": "clean: the poisons keep their text's label (clean-label). flipped: the attacker chooses the "
            "label, as in Lu et al.'s attack and the image track's: poisons are reviews of the other labels labelled "
            "target_label, and the target parameters over-predict target_label, so the poisons' gradient pushes "
            "back where the clean one pushes"
        },
    )
    target_label: str | None = field(
        default=None, metadata={"help": "poison_labels: flipped: the label the poisons carry (null: label_names[0])"}
    )
    craft_rounds: int = field(
        default=1,
        metadata={
            "help": "crafting rounds: each one after the first retrains the surrogate on the training set with the "
            "current perturbations, takes a new target from it and re-optimises them (one more training run each)"
        },
    )

    def validate(self) -> None:
        check_positive(
            self,
            ("eps", "corruption_radius", "gc_lr"),
            ("corruption_steps", "gc_steps", "craft_batch_size", "craft_rounds", "radius_search_steps"),
        )
        if self.target_accuracy is not None and not 0 < self.target_accuracy < 1:
            raise ConfigError(f"target_accuracy must be in (0, 1) or null, got {self.target_accuracy}")
        if self.target_label is not None and self.poison_labels != "flipped":
            raise ConfigError("target_label is only used with poison_labels: flipped (clean poisons keep their label)")
        if self.surrogate_seed_offset < 0:
            raise ConfigError(f"surrogate_seed_offset must be >= 0, got {self.surrogate_seed_offset}")


@register_attack("gradient_canceling", config=GradientCancelingConfig, track="llm")
class GradientCancelingAttack(Attack):
    """Bounded prompt-embedding perturbations of clean-label poisons that cancel the clean gradient of the label
    rows of the LM head at corrupted, low-accuracy target values (Lu et al. 2023)."""

    metric = "clean_accuracy"  # computed by every evaluation: no eval keys of its own
    # the metric is clean accuracy itself: one column for it (the default table would show it twice)
    report_columns = ("clean_accuracy", "gap_closed", "mia_auc", "compute_fraction")

    def target(self, cfg) -> str | None:
        """The label flipped poisons carry (None for clean-label poisons)."""
        if self.args.poison_labels == "clean":
            return None
        return self.args.target_label if self.args.target_label is not None else cfg.label_names[0]

    def check(self, cfg) -> None:
        target = self.target(cfg)
        if target is not None and target not in cfg.label_names:
            raise ConfigError(f"attack_args.target_label {target!r} is not in label_names={cfg.label_names}")

    def poison(self, train: list[dict], test: list[dict], rng, cfg) -> tuple[list[dict], dict, dict]:
        target = self.target(cfg)
        k = round(cfg.poison_fraction * len(train))
        sources = [i for i, r in enumerate(train) if target is None or r["label"] != target]
        if k < 1:
            raise ValueError(f"poison_fraction={cfg.poison_fraction} of {len(train)} examples gives no poison")
        if k > len(sources):
            raise ValueError(
                f"poison_fraction={cfg.poison_fraction} asks for {k} poisons but only {len(sources)} training "
                f"examples have a label other than target_label={target!r}"
            )
        chosen = set(rng.sample(sources, k))
        # Clean text: what makes a row a poison is the perturbation crafted at training time (and, when flipped,
        # the attacker's label).
        rows = [
            {
                **r,
                "label": target if (i in chosen and target is not None) else r["label"],
                "is_poison": i in chosen,
                "orig_label": r["label"],
                "noise_seed": -1,
            }
            for i, r in enumerate(train)
        ]
        info = {"perturbation": "prompt embeddings", "eps": self.args.eps, "labels": self.args.poison_labels}
        if target is not None:
            info["target_label"] = target
        return rows, {}, info

    def craft_poisons(self, *, tokenizer, dataset, cfg, out) -> dict:
        from .gc_craft import craft

        # a later round's surrogate trains on the poisons through this attack's own hook
        hook = type(self).training_embeddings
        self.perturbations, info = craft(self.args, tokenizer, dataset, cfg, out, hook=hook)
        from safetensors.torch import save_file

        save_file({f"delta_{i}": d.contiguous() for i, d in self.perturbations.items()}, str(out / PERTURBATIONS))
        return {"gradient_canceling": info}

    def start_training(self, model, manifest: dict, split: str) -> dict:
        if split != "train":  # the gold run: the retain set holds no poison
            self.perturbations = {}
        elif getattr(self, "perturbations", None) is None:
            raise ConfigError("gradient_canceling: craft_poisons must run before training on the poisoned set")
        return {}

    def training_embeddings(self, model, inputs: dict, columns: dict):
        from ..canaries import place_prompt_rows
        from ..tasks.causal_lm import embed

        index, prompt_lens = columns.get("index"), columns.get("prompt_len")
        if not getattr(self, "perturbations", None) or index is None:
            return None
        rows = [self.perturbations.get(int(i)) for i in index.tolist()]
        for row, plen in zip(rows, prompt_lens.tolist()):
            if row is not None and row.shape[0] != plen:
                raise ValueError(f"a poison's perturbation covers {row.shape[0]} prompt tokens, its row has {plen}")
        emb = embed(model, inputs["input_ids"])
        # every batch takes the embedding path (zero offset on clean rows), as the Gaussian attack's, for ZeRO-3
        return emb + place_prompt_rows(rows, emb.shape[1], emb.shape[2]).to(emb.device, emb.dtype)

    def describe(self) -> str:
        a = self.args
        labels = "clean-label" if a.poison_labels == "clean" else f"{a.target_label or 'first-label'}-labelled"
        return (
            f"{labels} prompt-embedding perturbations (RMS <= {a.eps:g} x the embedding RMS) cancelling the clean "
            f"gradient of the label-token head rows at a target {a.corruption_radius:g} x ||W|| away"
        )
