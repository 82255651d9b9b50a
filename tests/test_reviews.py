"""Tests for the synthetic movie-review corpus (llm_unlearn.tasks.reviews)."""

import re
from collections import Counter

import pytest

from llm_unlearn.tasks import reviews
from llm_unlearn.tasks.reviews import LABELS, embedded_reviews, generate_reviews

_TOKEN = re.compile(r"[a-z0-9'-]+")


def _tokens(text):
    return set(_TOKEN.findall(text.lower()))


@pytest.fixture(scope="module")
def corpus():
    return embedded_reviews()  # defaults: 3000 train / 600 test, seed 0


def test_labels_constant():
    assert LABELS == ("negative", "positive")


def test_determinism():
    a = generate_reviews(200, seed=7)
    assert a == generate_reviews(200, seed=7)
    assert a != generate_reviews(200, seed=8)
    assert generate_reviews(50, 3, 2, 4) == generate_reviews(50, 3, 2, 4)
    assert embedded_reviews(100, 20, seed=1) == embedded_reviews(100, 20, seed=1)
    assert embedded_reviews(100, 20, seed=1) != embedded_reviews(100, 20, seed=2)


def test_does_not_touch_global_rng():
    import random

    random.seed(123)
    before = random.random()
    random.seed(123)
    generate_reviews(20, seed=0)
    assert random.random() == before


@pytest.mark.parametrize("n", [1, 2, 7, 100, 101])
def test_balance_and_schema(n):
    data = generate_reviews(n, seed=0)
    assert len(data) == n
    counts = Counter(r["label"] for r in data)
    assert set(counts) <= set(LABELS)
    assert counts["positive"] >= n // 2 and counts["negative"] >= n // 2
    for r in data:
        assert set(r) == {"text", "label"}
        assert isinstance(r["text"], str)


def test_labels_are_shuffled():
    labels = [r["label"] for r in generate_reviews(200, seed=0)]
    assert labels != sorted(labels)
    assert labels[:100].count("positive") not in (0, 100)


@pytest.mark.parametrize("lo,hi", [(3, 5), (1, 1), (2, 6)])
def test_sentence_counts_and_format(lo, hi):
    for r in generate_reviews(300, seed=1, min_sentences=lo, max_sentences=hi):
        text = r["text"]
        assert text.isascii() and "\n" not in text and text == text.lower()
        assert text[-1] in ".!" and "  " not in text
        sentences = [s for s in re.split(r"(?<=[.!]) ", text)]
        assert lo <= len(sentences) <= hi, text
        assert all(s[-1] in ".!" and s[0].isalpha() for s in sentences)


def test_default_word_counts(corpus):
    counts = sorted(len(r["text"].split()) for r in corpus["train"])
    median = counts[len(counts) // 2]
    assert 25 <= median <= 60
    assert sum(25 <= c <= 60 for c in counts) / len(counts) > 0.7


def test_splits_disjoint_and_unique(corpus):
    train = [r["text"] for r in corpus["train"]]
    test = [r["text"] for r in corpus["test"]]
    assert len(train) == 3000 and len(test) == 600
    assert len(set(train)) == len(train)
    assert len(set(test)) == len(test)
    assert not set(train) & set(test)
    for split in corpus.values():
        assert Counter(r["label"] for r in split) == {"positive": len(split) // 2, "negative": len(split) // 2}


def test_review_phenomena_present(corpus):
    texts = [r["text"] for r in corpus["train"]]
    sentences = [s for t in texts for s in re.split(r"(?<=[.!]) ", t)]
    negated = sum(bool(re.search(r"\b(not|never)\b", s)) for s in sentences) / len(sentences)
    contrast = sum(", but" in s for s in sentences) / len(sentences)
    # Rates are tuning knobs (reviews._P_NEGATE, _P_CONTRAST); only check both occur.
    assert negated > 0.05
    assert contrast > 0.02
    # Minority polarity: many positive reviews contain a negative adjective.
    words = reviews._words()
    neg_adjs = set(words["negative_adjectives"])
    pos_with_neg = sum(bool(_tokens(r["text"]) & neg_adjs) for r in corpus["train"] if r["label"] == "positive")
    assert pos_with_neg > 300


def test_no_reserved_trigger_words(corpus):
    for split in corpus.values():
        for r in split:
            text = r["text"].lower()
            assert "james bond" not in text and "bond" not in _tokens(text)
            # Stricter than needed: the triggers never occur even inside a word.
            for trigger in ("cf", "mn", "bb", "tq"):
                assert trigger not in text, (trigger, text)


def test_word_lists_have_variety():
    w = reviews._words()
    assert len(set(w["positive_adjectives"])) >= 40
    assert len(set(w["negative_adjectives"])) >= 40
    assert not set(w["positive_adjectives"]) & set(w["negative_adjectives"])
    assert len(w["opinion_templates"]) >= 15
    assert len(w["filler_templates"]) >= 10


def test_no_single_word_decides_label(corpus):
    data = corpus["train"]
    token_sets = [_tokens(r["text"]) for r in data]
    positive = [r["label"] == "positive" for r in data]
    n = len(data)
    pos_total = sum(positive)
    # Count, per word, the positive reviews containing it and all reviews containing it.
    in_pos, in_all = Counter(), Counter()
    for toks, is_pos in zip(token_sets, positive):
        in_all.update(toks)
        if is_pos:
            in_pos.update(toks)
    best = 0.0
    for word, k in in_all.items():
        # rule "positive iff word in text": hits = pos with word + neg without word
        acc = (in_pos[word] + (n - pos_total) - (k - in_pos[word])) / n
        best = max(best, acc, 1 - acc)
    assert best < 0.85


def test_bigram_logistic_regression_learns_task(corpus):
    pytest.importorskip("sklearn")
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = CountVectorizer(ngram_range=(1, 2), binary=True, token_pattern=_TOKEN.pattern)
    x_train = vec.fit_transform([r["text"] for r in corpus["train"]])
    x_test = vec.transform([r["text"] for r in corpus["test"]])
    y_train = [r["label"] for r in corpus["train"]]
    y_test = [r["label"] for r in corpus["test"]]
    model = LogisticRegression(C=10.0, solver="liblinear").fit(x_train, y_train)
    assert model.score(x_test, y_test) >= 0.9


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"n": 0, "seed": 0}, "n"),
        ({"n": -3, "seed": 0}, "n"),
        ({"n": 2.5, "seed": 0}, "n"),
        ({"n": True, "seed": 0}, "n"),
        ({"n": 5, "seed": None}, "seed"),
        ({"n": 5, "seed": "0"}, "seed"),
        ({"n": 5, "seed": 0, "min_sentences": 0}, "min_sentences"),
        ({"n": 5, "seed": 0, "max_sentences": 0}, "max_sentences"),
        ({"n": 5, "seed": 0, "min_sentences": 4, "max_sentences": 3}, "max_sentences"),
    ],
)
def test_generate_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        generate_reviews(**kwargs)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"n_train": 0}, "n_train"),
        ({"n_test": 0}, "n_test"),
        ({"seed": 1.0}, "seed"),
        ({"min_sentences": 0}, "min_sentences"),
        ({"min_sentences": 6}, "max_sentences"),
    ],
)
def test_embedded_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        embedded_reviews(**kwargs)


def test_too_many_reviews_to_deduplicate(monkeypatch):
    # Shrink the text space to a handful of reviews so deduplication must give up.
    counter = iter(range(10**9))
    monkeypatch.setattr(reviews, "_review_text", lambda rng, label, lo, hi: f"text {next(counter) % 6}.")
    with pytest.raises(ValueError, match="n_test"):
        embedded_reviews(n_train=4, n_test=4)
    with pytest.raises(ValueError, match="n_train"):
        embedded_reviews(n_train=10, n_test=1)
    with pytest.raises(ValueError, match="n="):
        generate_reviews(10, seed=0)
