"""``thrifty calibrate``: the cheapest fitted policy that meets an accuracy target under
cross-validation.

Targets: ``accuracy>=0.95*baseline`` (relative to always using the baseline model) or
``accuracy>=0.83`` (absolute). For each budget in a sweep, ``fit_policy`` is fitted on k-1
folds and replayed on the held-out fold (routing/simulate.py); the smallest budget whose
cross-validated accuracy meets the target is then fitted on all the data and returned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from thrifty.errors import DataError, InvalidRequestError
from thrifty.evaluation.dataset import OutcomeSet
from thrifty.routing.fit import fit_frontier
from thrifty.routing.simulate import simulate

DEFAULT_BUDGETS = (0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7, 1.0)
_TARGET_RE = re.compile(r"^\s*accuracy\s*>=\s*([0-9]*\.?[0-9]+)\s*(\*\s*baseline)?\s*$", re.I)


@dataclass
class Target:
    value: float
    relative: bool

    def threshold(self, baseline_accuracy: float) -> float:
        return self.value * baseline_accuracy if self.relative else self.value

    def __str__(self) -> str:
        return f"accuracy>={self.value:g}" + ("*baseline" if self.relative else "")


def parse_target(text: str) -> Target:
    m = _TARGET_RE.match(text)
    if not m:
        raise InvalidRequestError(f"bad target {text!r}: expected 'accuracy>=0.95*baseline' or 'accuracy>=0.83'",
                                  param="target")
    value = float(m.group(1))
    if not m.group(2) and value > 1:
        # Accuracy is a mean score in [0, 1]: such a target can never be met, so it is refused
        # now rather than after the cross-validation (and a config written for nothing).
        raise InvalidRequestError(f"bad target {text!r}: an absolute accuracy is at most 1", param="target")
    return Target(value, bool(m.group(2)))


@dataclass
class Calibration:
    target: Target
    required_accuracy: float
    baseline_accuracy: float
    chosen_budget: float | None
    cv: list[dict[str, float]] = field(default_factory=list)  # per budget: accuracy, cost_share
    section: dict[str, Any] = field(default_factory=dict)


def kfold_indices(data: OutcomeSet, k: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Folds stratified by task label (so each fold has every task)."""
    rng = np.random.default_rng(seed)
    by_task: dict[str, list[int]] = {}
    for i, item in enumerate(data):
        by_task.setdefault(item.task or "", []).append(i)
    fold_of = np.zeros(len(data), dtype=int)
    # The same prompt text twice shares a fold (else one copy is judged by a fit on the other).
    fold_of_text: dict[str, int] = {}
    for idx in by_task.values():
        perm = rng.permutation(idx)
        j = 0
        for i in perm:
            text = " ".join(data.items[int(i)].prompt.split())
            if text not in fold_of_text:
                fold_of_text[text] = j % k
                j += 1
            fold_of[i] = fold_of_text[text]
    return [([i for i in range(len(data)) if fold_of[i] != f], [i for i in range(len(data)) if fold_of[i] == f])
            for f in range(k)]


def calibrate(data: OutcomeSet, target: Target, *, baseline: str, spec: dict[str, Any] | None = None,
              folds: int = 5, seed: int = 0, budgets: tuple[float, ...] = DEFAULT_BUDGETS) -> Calibration:
    if baseline not in data.models:
        raise DataError(f"baseline {baseline!r} is not in the data")
    # k = 0 divides by zero below, k above the prompt count only repeats fits on empty folds.
    if not 2 <= folds <= len(data):
        raise InvalidRequestError(f"folds: expected a whole number between 2 and {len(data)} (the prompts), "
                                  f"got {folds}", param="folds")
    base_acc = float(np.mean([i.scores.get(baseline, 0.0) for i in data]))
    need = target.threshold(base_acc)
    splits = kfold_indices(data, folds, seed)
    cal = Calibration(target, need, base_acc, None)
    # One frontier per fold serves every budget (fitting is the slow part).
    fronts = [(fit_frontier(data.subset(tr), baseline=baseline, spec=spec), data.subset(te)) for tr, te in splits]
    for b in sorted(budgets):
        correct = cost = base_cost = 0.0
        for front, test in fronts:
            r = simulate(front.section(b), test, baseline)
            correct, cost, base_cost = correct + r.correct, cost + r.cost, base_cost + r.baseline_cost
        acc, share = correct / len(data), cost / base_cost if base_cost else 0.0
        cal.cv.append({"max_cost_share": b, "accuracy": round(acc, 4), "cost_share": round(share, 4)})
        if acc >= need:
            cal.chosen_budget = b
            break
    # A missed target writes the most accurate budget tried (the cheapest of equals), as the
    # command says: CV accuracy is not monotonic in the budget, so the largest one can be worse.
    budget = cal.chosen_budget if cal.chosen_budget is not None else max(
        cal.cv, key=lambda row: (row["accuracy"], -row["max_cost_share"]))["max_cost_share"]
    cal.section = fit_frontier(data, baseline=baseline, spec=spec).section(budget)
    cal.section.setdefault("fitted", {})["calibration"] = {
        "target": str(target), "required_accuracy": round(need, 4), "cv": cal.cv, "met": cal.chosen_budget is not None,
    }
    return cal
