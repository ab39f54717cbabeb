"""Reference rows computed straight from the data, on the same prompts a policy is judged on.

- every single model ("always M");
- random routing: each prompt sent to a model drawn uniformly (its expected accuracy and cost,
  so no seed makes it look better or worse);
- the best per-task static choice: per task, the most accurate model on these prompts (ties go to
  the cheaper one). It looks at the scores of the very prompts it is judged on, so it is an
  upper bound for any "one model per task" policy, not a policy;
- the oracle: per prompt, the cheapest model with the best score (the cheapest correct one when
  any is correct). No router can beat it; it is the limit. Its curve for AIQ (``oracle_curve``)
  is the best per-prompt assignment at every budget, not that one point: with graded (0-1)
  scores a cheaper model's curve could otherwise rise above the oracle's straight line.
"""

from __future__ import annotations

import numpy as np

from thrifty.evaluation.dataset import Item, OutcomeSet
from thrifty.evaluation.metrics import ItemResult, Row, aggregate, task_of


def baseline_costs(data: OutcomeSet, baseline: str) -> list[float]:
    return [item.cost(baseline) for item in data.items]


def _single(item: Item, model: str) -> ItemResult:
    return ItemResult(task_of(item), item.scores.get(model, 0.0), item.cost(model), 1)


def single_model_rows(data: OutcomeSet, baseline: str) -> list[Row]:
    """One row per model. A model recorded on only some prompts (a folder whose files have
    different model columns) is judged on those prompts, against the baseline on the same ones:
    over all prompts its missing ones read as wrong and free."""
    rows = []
    for m in data.models:
        items = [i for i in data.items if m in i.outcomes]
        note = "" if len(items) == len(data.items) else f"recorded on {len(items)} of {len(data.items)} prompts only"
        rows.append(aggregate(f"always {m}", "model", [_single(i, m) for i in items],
                              [i.cost(baseline) for i in items], note))
    return rows


def random_row(data: OutcomeSet, baseline: str) -> Row:
    results = []
    for item in data.items:
        models = [m for m in data.models if m in item.outcomes]
        n = len(models) or 1
        results.append(ItemResult(task_of(item), sum(item.scores.get(m, 0.0) for m in models) / n,
                                  sum(item.cost(m) for m in models) / n, 1))
    return aggregate("random routing", "reference", results, baseline_costs(data, baseline),
                     "expected value of a uniform random model per prompt")


def best_static_choice(data: OutcomeSet) -> dict[str, str]:
    """Per task, the model with the highest mean score (ties: the lower total cost)."""
    choice: dict[str, str] = {}
    by_task: dict[str, list[Item]] = {}
    for item in data.items:
        by_task.setdefault(task_of(item), []).append(item)
    for task, items in by_task.items():
        def key(m: str, items: list[Item] = items) -> tuple[float, float]:
            return (-sum(i.scores.get(m, 0.0) for i in items), sum(i.cost(m) for i in items))

        # Only a model recorded on every prompt of the task can be chosen for all of them.
        complete = [m for m in data.models if all(m in i.outcomes for i in items)] or data.models
        choice[task] = min(complete, key=key)
    return choice


def best_static_row(data: OutcomeSet, baseline: str) -> Row:
    choice = best_static_choice(data)
    results = [_single(i, choice[task_of(i)]) for i in data.items]
    picks = ", ".join(f"{t}: {m}" for t, m in sorted(choice.items()))
    return aggregate("best per-task model", "reference", results, baseline_costs(data, baseline),
                     f"in-sample: {picks}")


def oracle_model(item: Item, models: list[str]) -> str:
    present = [m for m in models if m in item.outcomes] or models
    best = max(item.scores.get(m, 0.0) for m in present)
    return min((m for m in present if item.scores.get(m, 0.0) >= best), key=item.cost)


def oracle_row(data: OutcomeSet, baseline: str) -> Row:
    results = [_single(i, oracle_model(i, data.models)) for i in data.items]
    return aggregate("oracle", "reference", results, baseline_costs(data, baseline),
                     "cheapest best-scoring model per prompt: the limit")


def oracle_curve(data: OutcomeSet, baseline: str, steps: int = 80) -> list[tuple[float, float]]:
    """(cost share of the baseline, accuracy) of the per-prompt choice maximising score minus
    ``lam`` x cost, for ``lam`` from 0 (the oracle row) up to where the cheapest models win:
    the oracle's frontier, which lies above every single model's point (each is one choice)."""
    if not data.items or not data.models:
        return []
    present = np.array([[m in i.outcomes for m in data.models] for i in data.items])
    scores = np.array([[i.scores.get(m, 0.0) for m in data.models] for i in data.items])
    costs = np.array([[i.cost(m) for m in data.models] for i in data.items])
    base = float(sum(baseline_costs(data, baseline)))
    positive = costs[costs > 0]
    if base <= 0 or positive.size == 0:
        return []
    # lam * cost spans from far below a score step (1e-3) to far above it (1e3) for every call.
    lams = np.concatenate([[0.0], np.geomspace(1e-3 / positive.max(), 1e3 / positive.min(), steps)])
    points = []
    rows = np.arange(len(data.items))
    for lam in lams:
        # Ties (equal value) go to the cheaper model: a hair of cost below any score difference.
        value = np.where(present, scores - lam * costs - 1e-9 * costs / positive.max(), -np.inf)
        pick = value.argmax(axis=1)
        points.append((float(costs[rows, pick].sum()) / base, float(scores[rows, pick].mean())))
    return points


def reference_rows(data: OutcomeSet, baseline: str) -> list[Row]:
    return [oracle_row(data, baseline), best_static_row(data, baseline), random_row(data, baseline),
            *single_model_rows(data, baseline)]
