"""Fitting a routing policy from outcome data: ``fit_policy(train, ...)`` -> a ``routing:`` section.

The policy family is the state-table cascade (routing/policies.py): per task family, detected
from the prompt's format, cheap models are called in a fixed order and the agreement pattern
of their answers decides whether to serve one of them or the strong model. Per family, two
kinds of candidates compete:

- learned tables: for each call order and each price of accuracy ``lam``, the table that
  maximises ``accuracy - lam x cost`` (routing/tables.py). Their training accuracy is optimistic
  (the table was fitted on it), so each (order, lam) recipe is valued by *inner* k-fold
  cross-validation on the training rows; its cost estimate is the larger of the inner-CV and
  the in-sample cost, so the fitted policy stays within budget on its own training data too;
- fixed-structure cascades (routing/candidates.py: one model, two-model agreement, 2-of-3 and
  3-of-3 votes), which are not fitted, so their training figures are honest as they are.

The per-family Pareto sets of these estimates are combined into a frontier of whole policies and
the budget picks the most accurate one whose estimated cost is within ``max_cost_share`` times
the baseline's, or (``mix``) the frontier's convex hull at exactly that cost (routing/frontier.py). A chosen learned recipe is re-fitted on all of the family's training rows.
``spec["fit"]`` tunes it:

    fit:
      depth: 3                 # at most this many cheap models per prompt
      shrink: 5                # pseudo-prompts of smoothing for rare agreement patterns
      cheap_max_cost_ratio: 0.3  # a model is "cheap" if it costs <= this share of the baseline
      top_k: 5                 # per family, orders are drawn from its k most accurate cheap models
      inner_folds: 5           # folds valuing learned tables (0: in-sample, optimistic)
      fixed: true              # also consider the fixed-structure cascades
      budget_margin: 0.97      # use at most this share of the budget: held-out cost came out 0.8%
                               # above the estimate under CV (selection favours low estimates)
      raw_letters: []          # families whose table keys keep option letters (position bias);
                               # off by default: it learns benchmark-specific biases, no CV gain
      max_cost_share: 0.25     # budget when none is given
      max_cheap: 8             # at most this many cheap models (the cheapest) are considered at all
      min_family_prompts: 30   # smaller families are sent to the baseline (too little to learn from)
      by_task: true            # also a policy per task label with at least min_family_prompts prompts
      mix: true                # spend the whole budget: split a group between the two hull policies
                               # either side of it (routing/frontier.py); false: the best policy within it
      lams: [0, 1, ..., 3000]  # prices of accuracy tried for learned tables (default: 0 and 40 log-spaced)

Unknown keys and bad values are refused (``ConfigError`` naming ``routing.fit.<key>``;
routing/config.py ``FitConfig``).

Nothing here runs at request time; decisions made by the fitted config never read scores.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from thrifty.errors import ConfigError, DataError
from thrifty.evaluation.dataset import Item, OutcomeSet
from thrifty.routing.candidates import FIXED_TABLES
from thrifty.routing.config import parse_fit
from thrifty.routing.formats import FAMILIES, detect_family, extract_answer
from thrifty.routing.frontier import STRONG_ROUTE, Candidate, Frontier, combine, pareto_points
from thrifty.routing.tables import FamilyData, OrderModel

DEFAULT_LAMS = [0.0, *np.geomspace(1.0, 3000.0, 40).tolist()]
DEFAULTS: dict[str, Any] = {"depth": 3, "shrink": 5.0, "cheap_max_cost_ratio": 0.3, "raw_letters": [],
                            "max_cost_share": 0.25, "max_cheap": 8, "top_k": 5, "min_family_prompts": 30,
                            "inner_folds": 5, "fixed": True, "budget_margin": 0.97, "by_task": True, "mix": True}


def fit_options(spec: dict[str, Any] | None) -> dict[str, Any]:
    """``DEFAULTS`` overridden by the spec's ``fit`` mapping, validated (``FitConfig``)."""
    opts = dict(DEFAULTS)
    opts.update(parse_fit((spec or {}).get("fit")).options())
    return opts


def read_answers(train: OutcomeSet, models: list[str]) -> dict[int, dict[str, str | None]]:
    """Every item's normalised answer per model (by ``id`` of the item), each read in its own
    prompt's format: read once, shared by the item's format group and its task group."""
    out: dict[int, dict[str, str | None]] = {}
    for i in train:
        family = detect_family(i.prompt)
        out[id(i)] = {m: extract_answer(family, i.outcomes[m].response if m in i.outcomes else "") for m in models}
    return out


def group_data(items: list[Item], models: list[str], answers: dict[int, dict[str, str | None]]) -> FamilyData:
    """The outcomes of ``items`` for ``models``, their answers taken from ``read_answers``."""
    return FamilyData(
        answers={m: [answers[id(i)][m] for i in items] for m in models},
        scores={m: np.array([i.scores.get(m, 0.0) for i in items], dtype=float) for m in models},
        costs={m: np.array([i.cost(m) for i in items], dtype=float) for m in models},
    )


def task_route(label: str) -> str:
    """The route a task label's fitted policy is written under: the label itself (a client may
    name it, ``route:<label>``), unless a format family's route or the baseline's has that name."""
    return f"task:{label}" if label in FAMILIES or label == STRONG_ROUTE else label


def cheap_models(train: OutcomeSet, baseline: str, ratio: float, limit: int) -> list[str]:
    """Models whose mean cost per prompt is at most ``ratio`` of the baseline's, cheapest first."""
    mean = {m: float(np.mean([i.cost(m) for i in train])) for m in train.models}
    base = mean.get(baseline) or 0.0
    cheap = [m for m in train.models if m != baseline and (base == 0.0 or mean[m] <= ratio * base)]
    return sorted(cheap, key=lambda m: mean[m])[:limit]


def inner_folds(n: int, k: int) -> np.ndarray:
    """A fixed (seeded) fold number per row, so a refit gives the same policy."""
    fold = np.zeros(n, dtype=np.int64)
    fold[np.random.RandomState(12345).permutation(n)] = np.arange(n) % max(k, 1)
    return fold


def _estimates(om: OrderModel, lams: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Actions fitted on all rows, then per lam: in-sample (correct, cost), estimated (correct, cost)."""
    act = om.solve(lams)
    ins_correct, ins_cost = om.run(act)
    n = om.ids.shape[0]
    if k < 2 or n < 2 * k:
        return act, ins_correct, ins_cost, ins_correct, ins_cost
    fold = inner_folds(n, k)
    cv_correct, cv_cost = np.zeros(len(lams)), np.zeros(len(lams))
    for f in range(k):
        held = fold == f
        c, d = om.run(om.solve(lams, (~held).astype(float)), held)
        cv_correct += c
        cv_cost += d
    return act, ins_correct, ins_cost, cv_correct, np.maximum(cv_cost, ins_cost)


def family_candidates(data: FamilyData, family: str, baseline: str, cheap: list[str], opts: dict[str, Any],
                      lams: list[float]) -> list[Candidate]:
    """The family's Pareto set of learned and fixed-structure candidates (by honest estimates)."""
    raw = family in set(opts["raw_letters"])
    # The family's most accurate cheap models (CV: top-5 matches all 8 in accuracy, 5x faster).
    cheap = sorted(cheap, key=lambda m: -float(data.scores[m].mean()))[: int(opts["top_k"])]
    depth = max(1, min(int(opts["depth"]), len(cheap)))
    lam_arr = np.asarray(lams, dtype=float)
    shrink, k = float(opts["shrink"]), int(opts["inner_folds"])
    models: dict[tuple[str, ...], OrderModel] = {}

    def model(order: tuple[str, ...]) -> OrderModel:
        if order not in models:
            models[order] = OrderModel(list(order), data, baseline, raw=raw, shrink=shrink)
        return models[order]

    # (estimated correct, estimated cost, builder of the Candidate): tables are built for survivors only.
    points: list[tuple[float, float, Any]] = []
    for order in itertools.permutations(cheap, depth) if cheap else [()]:
        om = model(order)
        act, ins_correct, ins_cost, est_correct, est_cost = _estimates(om, lam_arr, k)
        for li, lam in enumerate(lams):
            points.append((float(est_correct[li]), float(est_cost[li]),
                           (om, act[:, li], lam, "learned", float(ins_correct[li]), float(ins_cost[li]))))
    if opts["fixed"] and not raw:
        for size, tables in FIXED_TABLES.items():
            for order in itertools.permutations(cheap, size) if size <= len(cheap) else []:
                om = model(order)
                for name, table in tables.items():
                    codes = om.codes(table)
                    c, d = om.run(codes)
                    points.append((float(c[0]), float(d[0]), (om, codes[:, 0], 0.0, name, float(c[0]), float(d[0]))))
    out = []
    for correct, cost, (om, column, lam, kind, tc, tk) in pareto_points(points):
        out.append(Candidate(family, correct, cost, lam, om.order, om.table(column), raw, kind, tc, tk))
    return out


def fit_frontier(train: OutcomeSet, *, baseline: str, spec: dict[str, Any] | None = None) -> Frontier:
    if baseline not in train.models:
        raise DataError(f"baseline {baseline!r} is not in the training data (models: {', '.join(train.models)})")
    if len(train) == 0:
        raise DataError("no training prompts to fit a policy on")
    opts = fit_options(spec)
    cheap = cheap_models(train, baseline, float(opts["cheap_max_cost_ratio"]), int(opts["max_cheap"]))
    lams = [float(x) for x in opts.get("lams", DEFAULT_LAMS)]
    least = int(opts["min_family_prompts"])

    answers = read_answers(train, [*cheap, baseline])

    def candidates(name: str, items: list[Item]) -> list[Candidate]:
        data = group_data(items, [*cheap, baseline], answers)
        if data.n < least:
            correct, cost = float(data.scores[baseline].sum()), float(data.costs[baseline].sum())
            return [Candidate(name, correct, cost, 0.0, [], {"": "strong"}, False, "baseline", correct, cost)]
        return family_candidates(data, name, baseline, cheap, opts, lams)

    families: dict[str, list[Item]] = {}
    for i in train:
        families.setdefault(detect_family(i.prompt), []).append(i)
    families = dict(sorted(families.items()))
    per_family = {f: candidates(f, items) for f, items in families.items()}
    base_cost = sum(i.cost(baseline) for i in train) or 1.0
    front = Frontier(combine(per_family), baseline, base_cost, len(train), cheap, dict(spec or {}), opts)
    # Per task label: a task's prompts may share a format with other tasks and still want other
    # models (a cheap model good at support questions, bad at invoices), so each label with
    # enough prompts gets a policy of its own; the rest of the prompts stay in their format's group.
    # A label named like a format family is left to its format's routes: the gateway (and
    # simulate) look a prompt's format up in the same `tasks:` map as a client's label, so a
    # `tasks: {code: task:code}` entry would also take every unlabelled prompt of that format.
    # Grouped in one pass (not a scan of the data per label: calibration fits once per fold).
    by_label: dict[str, list[Item]] = {}
    for i in train:
        if i.task and i.task not in FAMILIES:
            by_label.setdefault(i.task, []).append(i)
    labels = {t: items for t, items in sorted(by_label.items()) if len(items) >= least}
    if opts["by_task"] and labels:
        per_group = {task_route(t): candidates(task_route(t), items) for t, items in labels.items()}
        for f, items in families.items():
            rest = [i for i in items if i.task not in labels]
            if rest:
                per_group[f] = candidates(f, rest)
        front.by_task = combine(per_group)
        front.task_routes = {t: task_route(t) for t in labels}
    return front


def budget(max_cost_share: float | None, spec: dict[str, Any] | None) -> float:
    """The budget to fit for: the one asked, else the spec's ``max_cost_share``, else
    ``fit.max_cost_share`` (default 0.25, "budget when none is given"). ``ConfigError`` when the
    spec's value is not a positive finite number, so a typo fails before any fitting."""
    if max_cost_share is not None:
        return float(max_cost_share)
    value = (spec or {}).get("max_cost_share")
    if value is not None:
        return check_share(value, "routing.max_cost_share")
    return check_share(fit_options(spec)["max_cost_share"], "routing.fit.max_cost_share")


def check_share(value: Any, key: str) -> float:
    """``value`` as a budget (a finite number above 0), else ``ConfigError`` naming ``key``."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key}: expected a number above 0, got {value!r}")
    return float(value)


def fit_policy(train: OutcomeSet, *, max_cost_share: float | None, baseline: str,
               spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """A fitted ``routing:`` section (JSON-serialisable, loadable by ``build_router``)."""
    return fit_frontier(train, baseline=baseline, spec=spec).section(budget(max_cost_share, spec))


def fit_many(train: OutcomeSet, *, max_cost_shares: list[float | None], baseline: str,
             spec: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``fit_policy`` for several budgets at once (one frontier serves them all). A None budget
    is resolved as ``fit_policy`` does (``thrifty eval`` passes None when neither the flag nor the
    policy sets one)."""
    shares = [budget(s, spec) for s in max_cost_shares]  # before the (slow) frontier
    front = fit_frontier(train, baseline=baseline, spec=spec)
    return [front.section(s) for s in shares]


__all__ = ["FAMILIES", "Frontier", "budget", "check_share", "fit_frontier", "fit_many", "fit_policy"]
