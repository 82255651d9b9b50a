"""Deterministic synthetic movie-review sentiment corpus (the embedded default dataset).

A review is 3-5 short, lower-case, ASCII sentences on one line, e.g.::

    the plot was certainly not gripping. i watched it with my sister on a friday
    evening. the acting felt dull, but in the end the soundtrack was truly superb.
    overall, this film was never boring.

Labeling rule (mechanical, applied per sentence, then aggregated):

1. Every adjective has a fixed polarity (lists in ``review_words.json``).
2. A negator directly before the adjective ("not", "never", "simply not", ...; all end
   in "not"/"never") flips it: "was not good" is negative, "was never boring" positive.
3. A contrast sentence "<clause A>, but <clause B>" takes the polarity of clause B,
   the clause AFTER "but"; clause A always has the opposite polarity.
4. Filler sentences (runtime, cinema, who we watched it with, ...) carry none.
5. The review label is the MAJORITY polarity of its opinion sentences. The generator
   draws the label first and builds sentences so that the majority is strict (at most
   one minority sentence, and only when at least two sentences outvote it), so ties
   never occur.

Why this shape: a tiny from-scratch transformer can learn word polarity, a local
negation window and "after but" dominance, yet no single word decides the label
(adjectives are spread over ~100 words, and every minority sentence, negated clause
and pre-"but" clause points the wrong way).  All randomness flows through one
``random.Random`` per call, so outputs are reproducible across runs and platforms.
"""

from __future__ import annotations

import json
import random
from functools import lru_cache
from importlib import resources

LABELS = ("negative", "positive")

# Sentence-shape probabilities. 8% of clauses are negated and 4% of opinion sentences are contrasts: enough that no
# single word decides a label (the best one-word rule scores ~0.53), few enough that the embedded 2-layer Llama,
# trained from scratch for ~1 CPU-minute, reaches >= 90% test accuracy. At 15-33% negation / 10-20% contrast it stayed
# at 60-85% within that budget (measured while tuning the embedded default).
_P_CONTRAST = 0.04  # opinion sentence is "A, but B"
_P_NEGATE = 0.08  # a clause is written as "<negator> <opposite adjective>"
_P_INTENSIFY = 0.4  # a plain clause gets "very"/"truly"/... (no polarity effect)
_P_MINORITY = 0.3  # review contains one sentence of the opposite polarity
_N_ADJECTIVES = None  # use the first N adjectives of each polarity (None: all)
_P_EXCLAIM = 0.15  # sentence ends with "!" instead of "."
_FILLER_WEIGHTS = (0.4, 0.45, 0.15)  # P(0, 1, 2 filler sentences), capped by length
# Duplicate texts are re-drawn; give up (ValueError) after this many draws per review,
# which only happens when the requested size exceeds what the templates can produce.
_ATTEMPTS_PER_REVIEW = 50


@lru_cache(maxsize=1)
def _words() -> dict:
    """Word lists and templates, shipped as package data (not hard-coded here)."""
    path = resources.files("llm_unlearn.tasks").joinpath("review_words.json")
    return json.loads(path.read_text(encoding="utf-8"))


def _check_int(name: str, value, minimum: int | None) -> None:
    # bool is an int subclass, but generate_reviews(True, ...) is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_lengths(min_sentences: int, max_sentences: int) -> None:
    _check_int("min_sentences", min_sentences, 1)
    _check_int("max_sentences", max_sentences, 1)
    if max_sentences < min_sentences:
        raise ValueError(f"max_sentences ({max_sentences}) must be >= min_sentences ({min_sentences})")


def _clause(rng: random.Random, polarity: int, negated: bool) -> str:
    """One opinion clause whose effective polarity (+1 / -1) is `polarity`."""
    w = _words()
    # A negated clause uses an adjective of the opposite polarity, so the surface
    # adjective alone is misleading; the negator restores the intended polarity.
    adj_polarity = -polarity if negated else polarity
    adjs = w["positive_adjectives"] if adj_polarity > 0 else w["negative_adjectives"]
    adjs = adjs[:_N_ADJECTIVES]
    adj = rng.choice(adjs)
    if negated:
        pred = f"{rng.choice(w['negators'])} {adj}"
    elif rng.random() < _P_INTENSIFY:
        pred = f"{rng.choice(w['intensifiers'])} {adj}"
    else:
        pred = adj
    # Plural aspects ("characters") need "were"; templates use {was} for agreement.
    plural = rng.random() < len(w["aspects_plural"]) / (len(w["aspects_plural"]) + len(w["aspects_singular"]))
    aspect = rng.choice(w["aspects_plural"] if plural else w["aspects_singular"])
    return rng.choice(w["opinion_templates"]).format(
        aspect=aspect,
        was="were" if plural else "was",
        pred=pred,
        movie=rng.choice(w["movie_nouns"]),
        genre=rng.choice(w["genres"]),
    )


def _opinion_sentence(rng: random.Random, polarity: int) -> str:
    if rng.random() < _P_CONTRAST:
        # Rule 3: the clause after "but" decides; the first clause is the opposite.
        first = _clause(rng, -polarity, rng.random() < _P_NEGATE)
        second = _clause(rng, polarity, rng.random() < _P_NEGATE)
        return f"{first}{rng.choice(_words()['contrast_connectors'])} {second}"
    return _clause(rng, polarity, rng.random() < _P_NEGATE)


def _filler_sentence(rng: random.Random) -> str:
    w = _words()
    slots = {name: rng.choice(options) for name, options in w["filler_slots"].items()}
    slots.update(movie=rng.choice(w["movie_nouns"]), genre=rng.choice(w["genres"]))
    return rng.choice(w["filler_templates"]).format(**slots)


def _review_text(rng: random.Random, label: str, min_s: int, max_s: int) -> str:
    polarity = 1 if label == "positive" else -1
    n_sentences = rng.randint(min_s, max_s)
    # At least one opinion sentence, otherwise the label would be undefined.
    n_filler = min(rng.choices((0, 1, 2), weights=_FILLER_WEIGHTS)[0], n_sentences - 1)
    n_opinion = n_sentences - n_filler
    # One minority sentence is allowed only if the rest still form a strict majority.
    n_minority = 1 if n_opinion >= 3 and rng.random() < _P_MINORITY else 0
    kinds = [polarity] * (n_opinion - n_minority) + [-polarity] * n_minority + [0] * n_filler
    rng.shuffle(kinds)
    sentences = [_opinion_sentence(rng, kind) if kind else _filler_sentence(rng) for kind in kinds]
    return " ".join(s + ("!" if rng.random() < _P_EXCLAIM else ".") for s in sentences)


def _generate(
    n: int,
    rng: random.Random,
    min_sentences: int,
    max_sentences: int,
    exclude: frozenset[str] | set[str],
    n_name: str,
) -> list[dict]:
    """Balanced, duplicate-free reviews whose texts avoid `exclude`."""
    # Exactly n//2 per label; an odd n gets one extra review of a random label.
    labels = [LABELS[0]] * (n // 2) + [LABELS[1]] * (n // 2)
    if n % 2:
        labels.append(rng.choice(LABELS))
    rng.shuffle(labels)
    seen: set[str] = set()
    budget = _ATTEMPTS_PER_REVIEW * n
    reviews = []
    for label in labels:
        while True:
            if budget == 0:
                raise ValueError(
                    f"{n_name}={n} is too large: cannot produce that many distinct reviews "
                    f"with min_sentences={min_sentences}, max_sentences={max_sentences}"
                )
            budget -= 1
            text = _review_text(rng, label, min_sentences, max_sentences)
            if text not in seen and text not in exclude:
                break
        seen.add(text)
        reviews.append({"text": text, "label": label})
    return reviews


def generate_reviews(n: int, seed: int, min_sentences: int = 3, max_sentences: int = 5) -> list[dict]:
    """n reviews, each {"text": str, "label": "positive"|"negative"}; balanced labels
    (exactly n//2 of each when n is even, shuffled); no duplicate texts; deterministic
    in (n, seed, min_sentences, max_sentences); uses random.Random(seed) only."""
    _check_int("n", n, 1)
    _check_int("seed", seed, None)
    _check_lengths(min_sentences, max_sentences)
    return _generate(n, random.Random(seed), min_sentences, max_sentences, frozenset(), "n")


def embedded_reviews(
    n_train: int = 3000,
    n_test: int = 600,
    seed: int = 0,
    min_sentences: int = 3,
    max_sentences: int = 5,
) -> dict[str, list[dict]]:
    """{"train": [...], "test": [...]}: the splits come from two seeds derived from
    `seed`, each is balanced and duplicate-free, and no test text appears in train."""
    _check_int("n_train", n_train, 1)
    _check_int("n_test", n_test, 1)
    _check_int("seed", seed, None)
    _check_lengths(min_sentences, max_sentences)
    # Derive independent split seeds so that train for seed s is not test for seed s+1.
    master = random.Random(seed)
    train_seed, test_seed = master.getrandbits(63), master.getrandbits(63)
    train = _generate(n_train, random.Random(train_seed), min_sentences, max_sentences, frozenset(), "n_train")
    train_texts = frozenset(r["text"] for r in train)
    test = _generate(n_test, random.Random(test_seed), min_sentences, max_sentences, train_texts, "n_test")
    return {"train": train, "test": test}
