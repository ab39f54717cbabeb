"""Offline replay of a fitted ``routing:`` section on outcome data, without the gateway.

Fast enough for calibration's cross-validation loops (``thrifty eval`` is the full-pipeline
judge). Supports what ``fit_policy`` produces: single-model and state-table routes, routed by
the task label, then the prompt's format family. Each decision is made from recorded answers only; the score of the
served answer is read after the decision (``Item.scores`` is never passed to the policy).
"""

from __future__ import annotations

from dataclasses import dataclass

from thrifty.errors import ConfigError
from thrifty.evaluation.dataset import Item, OutcomeSet
from thrifty.routing.config import RoutingConfig, parse_routing
from thrifty.routing.formats import agreement_pattern, detect_family, extract_answer
from thrifty.routing.split import resolve_split
from thrifty.tokens import last_user_text


@dataclass
class SimResult:
    correct: float
    cost: float
    baseline_cost: float
    n: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def cost_share(self) -> float:
        return self.cost / self.baseline_cost if self.baseline_cost else 0.0


def decide(cfg: RoutingConfig, item: Item) -> tuple[str, list[str]]:
    """(served model, models called) for one blind item."""
    family = detect_family(item.prompt)
    # As the gateway's router: the task label, then the prompt's format, then the default route.
    route_name = ((cfg.route_for_task(item.task) if item.task else None) or cfg.route_for_task(family)
                  or cfg.default_route)
    assert route_name is not None
    route_name, _ = resolve_split(cfg.routes, route_name, last_user_text(item.messages))
    route = cfg.routes[route_name]
    if route.model:
        return route.model, [route.model]
    if route.state_table is None:
        raise ConfigError(f"simulate: route {route_name!r} is not a model or state_table route; use thrifty eval")
    st = route.state_table
    answers: list[str | None] = []
    called: list[str] = []
    while True:
        action = st.table.get(agreement_pattern(answers, raw=st.raw_letters), "strong")
        if action == "next" and len(called) < len(st.order):
            m = st.order[len(called)]
            called.append(m)
            out = item.outcomes.get(m)
            answers.append(extract_answer(family, out.response if out else ""))
            continue
        if action.startswith("stop:") and int(action[5:]) < len(called):
            return called[int(action[5:])], called
        called.append(st.strong)
        return st.strong, called


def simulate(section: dict | RoutingConfig, data: OutcomeSet, baseline: str) -> SimResult:  # type: ignore[type-arg]
    cfg = parse_routing(section)
    decisions = [decide(cfg, item.blind()) for item in data]
    # Decisions are final; only now are scores read.
    correct = sum(item.scores.get(served, 0.0) for item, (served, _) in zip(data, decisions, strict=True))
    cost = sum(sum(item.cost(m) for m in called) for item, (_, called) in zip(data, decisions, strict=True))
    return SimResult(correct, cost, sum(i.cost(baseline) for i in data), len(data))
