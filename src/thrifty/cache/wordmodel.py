"""The difference-word model: which word changes leave a question the same, learned from labelled pairs.

The pair features of features.py measure *how much* two questions differ; they cannot know that
"can" for "do", "good" for "best" or "a" for "the" are harmless while "java" for "python",
"2015" for "2016" or dropping "no" change the question. This model learns exactly that: a
logistic regression over the words only one of the two questions has, and over the substitution
pairs (a word of one question against a word of the other), fitted on labelled pairs. Its score
(log-odds of "same question") is one more feature of the learned verifier, which is fitted on
*out-of-fold* scores of this model so that it does not trust a score that saw the pair.

Stored as plain JSON weights (a word or word pair -> weight): nothing to unpickle, and only tokens
seen in at least ``min_count`` training pairs are kept, which keeps the file small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from thrifty.cache.features import analyze
from thrifty.cache.folds import group_split

# Substitution pairs grow with the product of the two difference sets; long rewrites carry
# little per-pair signal, so only the first few (sorted) are kept.
_MAX_SUBSTITUTIONS = 30


def diff_tokens(a: str, b: str) -> list[str]:
    """The model's input for a pair: symmetric in ``a`` and ``b``, empty-safe."""
    ia, ib = analyze(a), analyze(b)
    wa, wb = ia.words, ib.words
    only_a, only_b = sorted(wa - wb), sorted(wb - wa)
    out = ["d:" + w for w in sorted(wa ^ wb)]
    subs = sorted({f"s:{x}|{y}" if x < y else f"s:{y}|{x}" for x in only_a for y in only_b})
    out += subs[:_MAX_SUBSTITUTIONS]
    # Content-word stems: "learn" vs "learning" is no difference, "learn" vs "teach" is (measured:
    # +0.5 points of duplicates served at the same false-hit rate on the QQP dev pairs).
    out += ["t:" + w for w in sorted(ia.stems ^ ib.stems)]
    return out or ["d:<none>"]


@dataclass
class WordModel:
    weights: dict[str, float]
    intercept: float

    def score(self, a: str, b: str) -> float:
        w = self.weights
        return self.intercept + sum(w.get(t, 0.0) for t in diff_tokens(a, b))

    def scores(self, token_lists: Sequence[Sequence[str]]) -> np.ndarray:
        w = self.weights
        return np.array([self.intercept + sum(w.get(t, 0.0) for t in toks) for toks in token_lists],
                        dtype=np.float64)

    def dump(self) -> dict[str, Any]:
        return {"intercept": self.intercept, "weights": self.weights}

    @classmethod
    def from_dump(cls, data: dict[str, Any]) -> WordModel:
        return cls({str(k): float(v) for k, v in data["weights"].items()}, float(data["intercept"]))


def fit_word_model(token_lists: Sequence[Sequence[str]], y: np.ndarray, *, c: float = 0.3,
                   min_count: int = 2) -> WordModel:
    """Logistic regression on binary token indicators (1 = same question)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = CountVectorizer(analyzer=lambda toks: toks, binary=True, min_df=min_count, lowercase=False)
    try:
        x = vec.fit_transform(token_lists)
    except ValueError:  # no token reaches min_count (tiny calibration sets)
        return WordModel({}, 0.0)
    lr = LogisticRegression(C=c, max_iter=2000).fit(x, y)
    coef = lr.coef_[0]
    weights = {tok: round(float(coef[i]), 5) for tok, i in vec.vocabulary_.items() if abs(coef[i]) >= 1e-5}
    return WordModel(weights, float(lr.intercept_[0]))


def oof_word_scores(token_lists: Sequence[Sequence[str]], y: np.ndarray, folds: int = 5,
                    seed: int = 0, groups: np.ndarray | None = None) -> np.ndarray:
    """Each pair's score from a model fitted without it: the column the verifier is trained on.

    ``groups`` (per pair, its group of shared questions): folds keep a group whole, so a pair is
    never scored by a model fitted on another pair asking one of its questions.
    """
    out = np.zeros(len(y))
    groups = np.arange(len(y)) if groups is None else groups
    n_folds = min(folds, int(y.sum()), int((1 - y).sum()), len(np.unique(groups)))
    if n_folds < 2:
        return out
    for tr, te in group_split(groups, y, n_folds, seed):
        if len(np.unique(y[tr])) < 2:  # a tiny set's fold can hold one label only: nothing to learn
            continue
        model = fit_word_model([token_lists[i] for i in tr], y[tr])
        out[te] = model.scores([token_lists[i] for i in te])
    return out
