"""Cross-validation folds of labelled question pairs that never split a question between folds.

Quora Question Pairs repeat questions: about 3,357 of the 20,000 dev pairs share a question text
with another pair. Folds drawn pair by pair put such a question in the calibration folds and in
the judged fold, so the verifier (its difference-word model, its IDF, its threshold) is judged
on a question it was fitted on. Here pairs are grouped by the connected components of their
questions (two pairs sharing a question are one group, transitively) and whole groups are dealt
to folds, so no question text is on both sides of a split.

Questions are compared by ``question_key``: whitespace- and case-normalised text. The cache
itself only strips the question (keys.semantic_query); the looser key groups at least every pair
the cache would treat as sharing a question.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pairs.py imports the cache, whose verifier imports these folds
    from thrifty.cache.pairs import Pair


def question_key(text: str) -> str:
    """A question as folds and overlap checks compare it: case-folded, whitespace collapsed."""
    return " ".join(text.casefold().split())


def question_groups(pairs: Sequence[Pair]) -> np.ndarray:
    """Per pair, the id (0..groups-1, in order of first appearance) of its connected component of
    shared questions."""
    slot: dict[str, int] = {}
    parent: list[int] = []

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the chains short
            i = parent[i]
        return i

    def node(text: str) -> int:
        key = question_key(text)
        if key not in slot:
            slot[key] = len(parent)
            parent.append(len(parent))
        return slot[key]

    ends = [(node(p.text_a), node(p.text_b)) for p in pairs]
    for a, b in ends:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    ids: dict[int, int] = {}
    return np.array([ids.setdefault(find(a), len(ids)) for a, _ in ends], dtype=np.int64)


def grouped_folds(pairs: Sequence[Pair], k: int, seed: int) -> list[np.ndarray]:
    """``k`` folds (sorted pair indices) of whole question groups, stratified by label."""
    labels = np.array([-1 if p.label is None else p.label for p in pairs])
    return folds_of_groups(question_groups(pairs), labels, k, seed)


def group_split(groups: np.ndarray, labels: np.ndarray, k: int,
                seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds_of_groups`` as (training rows, held-out rows) per fold, the shape sklearn splitters give."""
    folds = folds_of_groups(groups, labels, k, seed)
    every = np.arange(len(groups))
    return [(np.setdiff1d(every, te, assume_unique=True), te) for te in folds]


def folds_of_groups(groups: np.ndarray, labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """``k`` folds (sorted row indices) of whole groups (``groups[i]``: row i's group id), stratified
    by ``labels``.

    Groups are dealt largest first (ties in an order drawn from ``seed``), each to the fold that
    holds the smallest share of the group's labels so far: the folds' sizes and duplicate rates
    stay within a group's size of one another, and the same seed gives the same folds.
    """
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    _, groups = np.unique(groups, return_inverse=True)  # ids 0..n-1 whatever the caller numbered
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    if n_groups < k:
        raise ValueError(f"{n_groups} question groups cannot fill {k} folds")
    classes, cls = np.unique(labels, return_inverse=True)
    counts = np.zeros((n_groups, len(classes)), dtype=np.int64)
    np.add.at(counts, (groups, cls), 1)
    weight = 1.0 / counts.sum(axis=0)  # a class's rows count as shares of that class
    order = np.random.default_rng(seed).permutation(n_groups)
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    filled = np.zeros((k, len(classes)))
    fold_of = np.empty(n_groups, dtype=np.int64)
    for g in order:
        f = int(np.argmin(filled @ (counts[g] * weight)))
        fold_of[g] = f
        filled[f] += counts[g] * weight
    row_fold = fold_of[groups]
    return [np.flatnonzero(row_fold == f) for f in range(k)]
