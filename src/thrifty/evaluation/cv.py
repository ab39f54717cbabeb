"""Cross-validation splits, so a learned policy is never judged on the prompts it was fitted on.

Splits are stratified by task label (each task is spread evenly over the folds) and seeded, so a
run is reproducible. They return index lists into an ``OutcomeSet``; ``folds`` gives, for each
fold, (train indices, test indices) with the two disjoint and the test folds covering every item
exactly once. Items with the same prompt text always share a fold.
"""

from __future__ import annotations

import random

from thrifty.errors import DataError
from thrifty.evaluation.dataset import OutcomeSet


def _by_task(data: OutcomeSet, seed: int) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(data.items):
        groups.setdefault(item.task or "", []).append(i)
    rng = random.Random(seed)
    out = []
    for task in sorted(groups):
        idx = groups[task]
        rng.shuffle(idx)
        out.append(idx)
    return out


def kfold(data: OutcomeSet, k: int = 5, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """``k`` (train, test) index pairs; every item is in exactly one test fold."""
    if k < 2:
        raise DataError(f"k-fold needs at least 2 folds, got {k}")
    if len(data) < k:
        raise DataError(f"cannot split {len(data)} prompts into {k} folds")
    assignment = [0] * len(data)
    # Rows with the same prompt text (held-out files may repeat one) share a fold: split apart,
    # one would be judged by a policy fitted on its twin.
    fold_of_text: dict[str, int] = {}
    n = 0
    for idx in _by_task(data, seed):
        for i in idx:
            text = " ".join(data.items[i].prompt.split())
            if text not in fold_of_text:
                # Continue the round-robin across tasks so small tasks do not all land in fold 0.
                fold_of_text[text] = n % k
                n += 1
            assignment[i] = fold_of_text[text]
    out = []
    for f in range(k):
        test = [i for i, a in enumerate(assignment) if a == f]
        train = [i for i, a in enumerate(assignment) if a != f]
        out.append((train, test))
    return out


def train_test_split(data: OutcomeSet, test_fraction: float = 0.3, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train indices, test indices), stratified by task, both non-empty."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test fraction must be between 0 and 1, got {test_fraction}")
    if len(data) < 2:
        raise DataError("need at least 2 prompts to split")
    train: list[int] = []
    test: list[int] = []
    for idx in _by_task(data, seed):
        n_test = round(len(idx) * test_fraction)
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    if not test:
        test.append(train.pop())
    if not train:
        train.append(test.pop())
    return sorted(train), sorted(test)
