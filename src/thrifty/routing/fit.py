"""Fitting a routing policy from outcome data: ``fit_policy(train, ...)`` -> a ``routing:`` section.

The policy family is the state-table cascade (routing/policies.py): per task family, detected
from the prompt's format, cheap models are called in a learned order and the agreement pattern
of their answers decides whether to serve one of them or the strong model. For each family and
each price of accuracy ``lam`` the best (order, table) is learned (routing/tables.py); the
per-family results are combined into a Pareto frontier of (training cost, training accuracy),
and the budget picks the most accurate combination whose training cost is within
``max_cost_share`` times the baseline's. ``spec["fit"]`` tunes it:

    fit:
      depth: 3                 # at most this many cheap models per prompt
      shrink: 5                # pseudo-prompts of smoothing for rare agreement patterns
      cheap_max_cost_ratio: 0.3  # a model is "cheap" if it costs <= this share of the baseline
      raw_letters: [mc_binary] # families whose table keys keep option letters (position bias)
      max_cost_share: 0.25     # budget when none is given
      min_family_prompts: 30   # smaller families are sent to the baseline (too little to learn from)

Nothing here runs at request time; decisions made by the fitted config never read scores.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from thrifty.errors import DataError
from thrifty.evaluation.dataset import OutcomeSet
from thrifty.routing.formats import FAMILIES, detect_family, extract_answer
from thrifty.routing.tables import FamilyData, OrderModel

DEFAULT_LAMS = [0.0, *np.geomspace(1.0, 3000.0, 40).tolist()]
DEFAULTS: dict[str, Any] = {"depth": 3, "shrink": 5.0, "cheap_max_cost_ratio": 0.3, "raw_letters": ["mc_binary"],
                            "max_cost_share": 0.25, "max_cheap": 8, "min_family_prompts": 30}
STRONG_ROUTE = "strong"


@dataclass
class Candidate:
    family: str
    correct: float
    cost: float
    lam: float
    order: list[str]
    table: dict[str, str]
    raw: bool


def fit_options(spec: dict[str, Any] | None) -> dict[str, Any]:
    opts = dict(DEFAULTS)
    opts.update((spec or {}).get("fit") or {})
    return opts


def family_data(train: OutcomeSet, family: str, models: list[str]) -> FamilyData:
    items = [i for i in train if detect_family(i.prompt) == family]
    return FamilyData(
        answers={m: [extract_answer(family, i.outcomes[m].response if m in i.outcomes else "") for i in items]
                 for m in models},
        scores={m: np.array([i.scores.get(m, 0.0) for i in items], dtype=float) for m in models},
        costs={m: np.array([i.cost(m) for i in items], dtype=float) for m in models},
    )


def cheap_models(train: OutcomeSet, baseline: str, ratio: float, limit: int) -> list[str]:
    """Models whose mean cost per prompt is at most ``ratio`` of the baseline's, cheapest first."""
    mean = {m: float(np.mean([i.cost(m) for i in train])) for m in train.models}
    base = mean.get(baseline) or 0.0
    cheap = [m for m in train.models if m != baseline and (base == 0.0 or mean[m] <= ratio * base)]
    return sorted(cheap, key=lambda m: mean[m])[:limit]


def family_candidates(data: FamilyData, family: str, baseline: str, cheap: list[str], opts: dict[str, Any],
                      lams: list[float]) -> list[Candidate]:
    """Per lam, the best (order, table) for this family; Pareto-filtered."""
    raw = family in set(opts["raw_letters"])
    depth = max(1, min(int(opts["depth"]), len(cheap)))
    orders = [list(o) for o in itertools.permutations(cheap, depth)] if cheap else [[]]
    models = [OrderModel(o, data, baseline, raw=raw, shrink=float(opts["shrink"])) for o in orders]
    found: list[Candidate] = []
    for lam in lams:
        best: tuple[float, Candidate] | None = None
        for om in models:
            table = om.solve(lam)
            correct, cost = om.in_sample(table)
            objective = correct - lam * cost
            if best is None or objective > best[0] + 1e-12:
                best = (objective, Candidate(family, correct, cost, lam, om.order, om.reachable(table), raw))
        assert best is not None
        found.append(best[1])
    return pareto(found)


def pareto(cands: list[Candidate]) -> list[Candidate]:
    """Candidates not beaten by a cheaper one that is at least as accurate."""
    out: list[Candidate] = []
    best = -1.0
    for c in sorted(cands, key=lambda c: (c.cost, -c.correct)):
        if c.correct > best + 1e-9:
            out.append(c)
            best = c.correct
    return out


def combine(per_family: dict[str, list[Candidate]]) -> list[list[Candidate]]:
    """Pareto frontier of whole policies (one candidate per family), cheapest first."""
    combos: list[tuple[float, float, list[Candidate]]] = [(0.0, 0.0, [])]
    for fam in sorted(per_family):
        grown = [(corr + c.correct, cost + c.cost, [*chosen, c])
                 for corr, cost, chosen in combos for c in per_family[fam]]
        grown.sort(key=lambda x: (x[1], -x[0]))
        combos, best = [], -1.0
        for corr, cost, chosen in grown:
            if corr > best + 1e-9:
                combos.append((corr, cost, chosen))
                best = corr
    return [chosen for _, _, chosen in combos]


@dataclass
class Frontier:
    """Every Pareto-optimal policy found on a training set, cheapest first."""

    policies: list[list[Candidate]]
    baseline: str
    base_cost: float
    prompts: int
    cheap: list[str]
    spec: dict[str, Any]

    def select(self, share: float) -> list[Candidate]:
        """The most accurate policy whose training cost is within ``share`` x the baseline's."""
        within = [c for c in self.policies if sum(x.cost for x in c) <= share * self.base_cost + 1e-12]
        return max(within, key=lambda c: sum(x.correct for x in c)) if within else self.policies[0]

    def section(self, share: float) -> dict[str, Any]:
        """The fitted ``routing:`` section for budget ``share``."""
        chosen = self.select(share)
        routes: dict[str, Any] = {STRONG_ROUTE: {"model": self.baseline, "description": "the baseline model"}}
        for c in chosen:
            if not c.order:
                continue  # this family goes to the baseline: the default route
            routes[c.family] = {
                "state_table": {"order": c.order, "table": c.table, "strong": self.baseline, "raw_letters": c.raw},
                "description": f"learned agreement cascade (lam={c.lam:.4g})",
            }
        correct = sum(c.correct for c in chosen)
        cost = sum(c.cost for c in chosen)
        section: dict[str, Any] = {
            # A family never (or hardly) seen in training, e.g. free-form questions, goes to the baseline.
            "default_route": STRONG_ROUTE,
            "classify": {"formats": True},
            "routes": routes,
            "max_cost_share": share,
            "fitted": {"policy": "state_table", "prompts": self.prompts, "baseline": self.baseline,
                       "train_accuracy": round(correct / max(self.prompts, 1), 4),
                       "train_cost_share": round(cost / self.base_cost, 4),
                       "cheap_models": self.cheap, "families": {c.family: round(c.lam, 4) for c in chosen}},
        }
        if self.spec.get("fit"):
            section["fit"] = dict(self.spec["fit"])
        return section


def fit_frontier(train: OutcomeSet, *, baseline: str, spec: dict[str, Any] | None = None) -> Frontier:
    if baseline not in train.models:
        raise DataError(f"baseline {baseline!r} is not in the training data (models: {', '.join(train.models)})")
    if len(train) == 0:
        raise DataError("no training prompts to fit a policy on")
    opts = fit_options(spec)
    cheap = cheap_models(train, baseline, float(opts["cheap_max_cost_ratio"]), int(opts["max_cheap"]))
    lams = [float(x) for x in opts.get("lams", DEFAULT_LAMS)]
    per_family: dict[str, list[Candidate]] = {}
    for f in sorted({detect_family(i.prompt) for i in train}):
        data = family_data(train, f, [*cheap, baseline])
        if data.n < int(opts["min_family_prompts"]):
            strong_only = Candidate(f, float(data.scores[baseline].sum()), float(data.costs[baseline].sum()), 0.0,
                                    [], {"": "strong"}, False)
            per_family[f] = [strong_only]
        else:
            per_family[f] = family_candidates(data, f, baseline, cheap, opts, lams)
    base_cost = sum(i.cost(baseline) for i in train) or 1.0
    return Frontier(combine(per_family), baseline, base_cost, len(train), cheap, dict(spec or {}))


def fit_policy(train: OutcomeSet, *, max_cost_share: float | None, baseline: str,
               spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """A fitted ``routing:`` section (JSON-serialisable, loadable by ``build_router``)."""
    opts = fit_options(spec)
    share = max_cost_share if max_cost_share is not None else (spec or {}).get("max_cost_share")
    share = float(share if share is not None else opts["max_cost_share"])
    return fit_frontier(train, baseline=baseline, spec=spec).section(share)


def fit_many(train: OutcomeSet, *, max_cost_shares: list[float], baseline: str,
             spec: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``fit_policy`` for several budgets at once (one frontier serves them all)."""
    front = fit_frontier(train, baseline=baseline, spec=spec)
    return [front.section(float(s)) for s in max_cost_shares]


__all__ = ["FAMILIES", "Frontier", "fit_frontier", "fit_many", "fit_policy"]
