"""The frontier of fitted policies and the budget's choice on it (routing/fit.py builds it).

A policy is one candidate per group (a task label or a prompt-format family). The frontier holds
the Pareto-optimal whole policies; a budget picks on it. Policies are discrete, so their costs
move in steps and the most accurate one within a budget usually leaves part of it unspent
(RouterBench CV, 10 splits: 8.1% spent at a 10% budget). With ``mix`` (the default) the budget
buys the point of the frontier's upper convex hull at exactly its cost: the two hull policies
either side of it, the dearer one serving a share ``p`` of the prompts through route splits
(routing/split.py). On the same splits that took held-out accuracy from 0.806 to 0.814 at
X=0.10 and from 0.838 to 0.843 at X=0.25.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from thrifty.evaluation.frontier import upper_hull as hull_of_points

STRONG_ROUTE = "strong"
# Below this share a split is not worth a route of its own (and a share must be in (0, 1)).
MIN_SPLIT = 1e-3


@dataclass
class Candidate:
    """One family's policy: ``correct``/``cost`` are the honest estimates used for selection,
    ``train_correct``/``train_cost`` what it does on the training rows."""

    family: str
    correct: float
    cost: float
    lam: float
    order: list[str]
    table: dict[str, str]
    raw: bool
    kind: str = "learned"
    train_correct: float = 0.0
    train_cost: float = 0.0

    def same_policy(self, other: Candidate) -> bool:
        return self.order == other.order and self.table == other.table and self.raw == other.raw


def pareto_points(points: list[tuple[float, float, Any]]) -> list[tuple[float, float, Any]]:
    """Points not beaten by a cheaper one that is at least as accurate, cheapest first."""
    out: list[tuple[float, float, Any]] = []
    best = float("-inf")
    for p in sorted(points, key=lambda p: (p[1], -p[0])):
        if p[0] > best + 1e-9:
            out.append(p)
            best = p[0]
    return out


def combine(per_family: dict[str, list[Candidate]]) -> list[list[Candidate]]:
    """Pareto frontier of whole policies (one candidate per family), cheapest first."""
    combos: list[tuple[float, float, list[Candidate]]] = [(0.0, 0.0, [])]
    for fam in sorted(per_family):
        grown = [(corr + c.correct, cost + c.cost, [*chosen, c])
                 for corr, cost, chosen in combos for c in per_family[fam]]
        combos = pareto_points(grown)
    return [chosen for _, _, chosen in combos]


def _totals(policy: list[Candidate]) -> tuple[float, float]:
    return sum(c.cost for c in policy), sum(c.correct for c in policy)


def upper_hull(policies: list[list[Candidate]]) -> list[list[Candidate]]:
    """The policies on the upper convex hull of (cost, correct), cheapest first: the ones a
    mix of two neighbours cannot beat (``evaluation.frontier.upper_hull`` on their totals)."""
    by_point = {_totals(p): p for p in policies}
    return [by_point[point] for point in hull_of_points(list(by_point))]


@dataclass
class Mix:
    """``low`` for a share ``1 - p`` of the prompts, ``high`` for ``p`` (``high`` is None: ``low`` alone)."""

    low: list[Candidate]
    high: list[Candidate] | None = None
    p: float = 0.0

    def total(self, key: str) -> float:
        low = sum(getattr(c, key) for c in self.low)
        if self.high is None:
            return low
        return (1 - self.p) * low + self.p * sum(getattr(c, key) for c in self.high)


def choose(policies: list[list[Candidate]], limit: float, mix: bool) -> Mix:
    """The most accurate policy (or, with ``mix``, hull mix) whose estimated cost is within ``limit``;
    the cheapest policy when none is. ``policies`` is a Pareto frontier, cheapest first."""
    if not mix:
        within = [p for p in policies if _totals(p)[0] <= limit]
        return Mix(max(within, key=lambda p: _totals(p)[1]) if within else policies[0])
    hull = upper_hull(policies)
    costs = [_totals(p)[0] for p in hull]
    dearer = next((i for i, c in enumerate(costs) if c > limit), len(hull))
    if dearer == len(hull):  # the budget affords the most accurate policy
        return Mix(hull[-1])
    if dearer == 0:
        return Mix(hull[0])
    c0, c1 = costs[dearer - 1], costs[dearer]
    p = round((limit - c0) / (c1 - c0), 4)
    if p < MIN_SPLIT:
        return Mix(hull[dearer - 1])
    # Rounding may reach 1 while the dearer policy is still over the budget: stay just under it.
    return Mix(hull[dearer - 1], hull[dearer], min(p, 1 - MIN_SPLIT))


@dataclass
class Frontier:
    """Every Pareto-optimal policy found on a training set, cheapest first."""

    policies: list[list[Candidate]]
    baseline: str
    base_cost: float
    prompts: int
    cheap: list[str]
    spec: dict[str, Any]
    opts: dict[str, Any]  # the fit options (routing/fit.py fit_options): budget_margin, mix
    # Per task label (fit_frontier): whole policies over the labels' groups and the prompts left
    # in their format's group, and label -> route name. Empty: no label had enough prompts.
    by_task: list[list[Candidate]] = field(default_factory=list)
    task_routes: dict[str, str] = field(default_factory=dict)

    def select(self, share: float, policies: list[list[Candidate]] | None = None) -> Mix:
        """The most accurate policy (of ``policies``, default the per-format ones) whose
        estimated cost is within ``share`` x the baseline's (times the spec's ``budget_margin``),
        as a mix of two hull policies when the fit options' ``mix`` is on."""
        limit = float(self.opts["budget_margin"]) * share * self.base_cost + 1e-12
        return choose(self.policies if policies is None else policies, limit, bool(self.opts["mix"]))

    def section(self, share: float) -> dict[str, Any]:
        """The fitted ``routing:`` section for budget ``share``: a route per format family (for
        requests without a known task label) and, when the data had labels, one per label, which
        a request carrying that label (``metadata.task``, ``x-thrifty-task``) takes."""
        chosen = self.select(share)
        routes: dict[str, Any] = {STRONG_ROUTE: self._strong()}
        self._add_routes(routes, chosen, keep=lambda c: True)
        tasks: dict[str, str] = {}
        if self.by_task:
            # The training prompts are labelled, so the per-task choice is what they are judged by.
            chosen = self.select(share, self.by_task)
            names = set(self.task_routes.values())
            self._add_routes(routes, chosen, keep=lambda c: c.family in names)
            tasks = dict(self.task_routes)
        n = max(self.prompts, 1)
        families = {c.family: self._kind(c) for c in chosen.low}
        if chosen.high is not None:
            for c, h in zip(chosen.low, chosen.high, strict=True):
                if not c.same_policy(h):
                    families[c.family] = f"{self._kind(c)}; {chosen.p:.1%} split to {self._kind(h)}"
        section: dict[str, Any] = {
            # A family never (or hardly) seen in training, e.g. free-form questions, goes to the baseline.
            "default_route": STRONG_ROUTE,
            "classify": {"formats": True},
            **({"tasks": tasks} if tasks else {}),
            "routes": routes,
            "max_cost_share": share,
            "fitted": {"policy": "state_table", "prompts": self.prompts, "baseline": self.baseline,
                       # in-sample (optimistic for learned tables) and the honest estimates selection used
                       "train_accuracy": round(chosen.total("train_correct") / n, 4),
                       "train_cost_share": round(chosen.total("train_cost") / self.base_cost, 4),
                       "estimated_accuracy": round(chosen.total("correct") / n, 4),
                       "estimated_cost_share": round(chosen.total("cost") / self.base_cost, 4),
                       "cheap_models": self.cheap,
                       "families": families},
        }
        if self.spec.get("fit"):
            section["fit"] = dict(self.spec["fit"])
        return section

    def _add_routes(self, routes: dict[str, Any], chosen: Mix, keep: Any) -> None:
        """One route per kept group of ``chosen.low``; where ``chosen.high`` picks another
        candidate for the group, that one too, as the target of the group route's split."""
        highs = chosen.high if chosen.high is not None else [None] * len(chosen.low)
        for c, h in zip(chosen.low, highs, strict=True):
            if not keep(c):
                continue
            if h is not None and not c.same_policy(h):
                other = f"{c.family}-mix"
                routes[other] = self._route(h)
                routes[c.family] = {**self._route(c), "split": {"share": chosen.p, "route": other}}
            elif c.order or c.family in self.task_routes.values():
                # A format family with no cheap order goes to the default route (the baseline);
                # a task label's group needs its own route (its label must route somewhere).
                routes[c.family] = self._route(c)

    def _strong(self) -> dict[str, Any]:
        return {"model": self.baseline, "description": "the baseline model"}

    def _route(self, c: Candidate) -> dict[str, Any]:
        if not c.order:
            return self._strong()
        what = f"learned agreement cascade (lam={c.lam:.4g})" if c.kind == "learned" else f"fixed cascade: {c.kind}"
        return {"state_table": {"order": c.order, "table": c.table, "strong": self.baseline, "raw_letters": c.raw},
                "description": what}

    @staticmethod
    def _kind(c: Candidate) -> str:
        return c.kind if c.kind != "learned" else f"learned, lam={c.lam:.4g}"
