"""The router: ``model: "auto"`` / ``"route:NAME"`` -> a task -> a route -> a Plan.

A route is one model, a cascade of tiers with a scorer, an agreement cascade, a learned
state-table cascade, or a learned router choosing one model per prompt. The decision (and why)
is kept on the plan's ``reason`` and shown by ``thrifty route explain``.

The route of an ``auto`` request is decided once, early: ``classify(ctx)`` runs in the normalize
stage (no model is called: labels, rules, examples, formats), so compression and cache overrides
keyed by route name apply to ``auto`` traffic too, and ``plan`` reuses that decision. When only
the LLM classifier could decide (it calls a model, so it runs later, in the cascade stage), the
early stages see no route and use their ``auto`` entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thrifty.catalog import Catalog
from thrifty.errors import ConfigError, NotFoundError
from thrifty.pipeline.context import Plan, RequestContext, Tier
from thrifty.routing.classify import TaskClassifier, TaskGuess
from thrifty.routing.config import RouteConfig, RoutingConfig, ScorerConfig
from thrifty.routing.policies import BudgetGuard, StateTableCascade, TierCascade, called_at_once, vote_table
from thrifty.routing.reach import reachable_models
from thrifty.routing.split import resolve_split
from thrifty.types import ChatRequest

ROUTE_PREFIX = "route:"
# Where ``classify`` keeps its decision on the request context (reused by ``plan``).
_DECISION = "routing.decision"


@dataclass
class Decision:
    route: str
    task: str | None
    source: str
    reason: str
    guesses: list[TaskGuess] = field(default_factory=list)


def build_scorer(cfg: ScorerConfig, base_dir: str | None, key: str = "scorer") -> Any:
    """The scorer ``cfg`` describes; ``key`` is where it sits in the config (for errors)."""
    from thrifty.scoring.base import CombinedScorer
    from thrifty.scoring.heuristics import HeuristicScorer

    if cfg.kind == "heuristic":
        return HeuristicScorer(cfg.expect, cfg.json_schema, cfg.min_chars, cfg.labels)
    if cfg.kind == "judge":
        from thrifty.scoring.judge import JudgeScorer

        if not cfg.judge_model:  # refused when the config loads; kept for hand-built ScorerConfigs
            raise ConfigError(f"{key}.judge_model: required by a judge scorer")
        return JudgeScorer(cfg.judge_model, cfg.rubric)
    if cfg.kind == "logprob":
        from thrifty.scoring.logprob import LogprobScorer

        return LogprobScorer()
    if cfg.kind == "learned":
        from thrifty.scoring.learned import LearnedScorer

        if not cfg.file:
            raise ConfigError(f"{key}.file: required by a learned scorer")
        return LearnedScorer.load(_resolve(cfg.file, base_dir))
    return CombinedScorer([build_scorer(p, base_dir, f"{key}.parts.{i}") for i, p in enumerate(cfg.parts)])


def _resolve(path: str, base_dir: str | None) -> str:
    return str(Path(base_dir) / path) if base_dir and not Path(path).is_absolute() else path


class TaskRouter:
    def __init__(self, cfg: RoutingConfig, catalog: Catalog, base_dir: str | None = None) -> None:
        self.cfg = cfg
        self.catalog = catalog
        unknown = [f"routing.{key}: unknown model {m!r}" for key, m in cfg.model_refs() if catalog.get(m) is None]
        if unknown:
            raise ConfigError(f"{'; '.join(unknown)} (add it under models:)")
        self.classifier = TaskClassifier(cfg.classify, cfg.embedder, base_dir)
        self.scorers = {name: build_scorer(r.scorer, base_dir, f"routing.routes.{name}.scorer")
                        for name, r in cfg.routes.items() if r.tiers}
        self.learned: dict[str, Any] = {}
        for name, r in cfg.routes.items():
            if r.learned:
                from thrifty.routing.learned import LearnedRouter

                self.learned[name] = LearnedRouter.load(_resolve(r.learned.file, base_dir))
                trained = self.learned[name].models
                # Names in `models` are only a filter on the file's models: one it lacks would be
                # ignored, and none left would fail every request.
                missing = [m for m in r.learned.models or [] if m not in trained]
                if missing:
                    raise ConfigError(f"routing.routes.{name}.learned.models: {', '.join(map(repr, missing))} not in "
                                      f"{r.learned.file} (it has: {', '.join(trained)})")
                # Only the models the route can choose must be servable: `models` may leave out
                # file models this gateway does not have.
                unknown = [m for m in r.learned.models or trained if catalog.get(m) is None]
                if unknown:
                    key = "learned.models" if r.learned.models else "learned"
                    raise ConfigError(f"routing.routes.{name}.{key}: model(s) not in the catalog: {unknown}"
                                      + ("" if r.learned.models else " (list the ones to use in learned.models)"))
        # Each agreement / state-table route's table and the models it asks at once, worked out
        # here once: vote_table takes up to 180 ms (n=6), too slow to rebuild per request.
        self.tables: dict[str, tuple[dict[str, str], list[str]]] = {}
        for name, r in cfg.routes.items():
            if r.agreement:
                a = r.agreement
                self.tables[name] = _with_at_once(list(a.models), vote_table(len(a.models), a.min_agree), False,
                                                  a.parallel)
            elif r.state_table:
                st = r.state_table
                self.tables[name] = _with_at_once(list(st.order), dict(st.table), st.raw_letters, st.parallel)
        self.llm = None
        if cfg.classify.llm:
            from thrifty.routing.llm_classifier import LLMClassifier

            self.llm = LLMClassifier(cfg.classify.llm)

    def route_names(self) -> list[str]:
        return ["auto", *(ROUTE_PREFIX + name for name in self.cfg.routes)]

    def route_for_task(self, task: str) -> str | None:
        return self.cfg.route_for_task(task)

    def decide(self, request: ChatRequest, headers: dict[str, str] | None = None) -> Decision:
        """The route for a request and why (no model is called). A route's ``split`` is applied
        by ``plan``: the request stays on its route (reports, cache and compression overrides by
        route name) and the split only picks the models that serve it."""
        asked = request.model
        if asked.startswith(ROUTE_PREFIX):
            name = asked[len(ROUTE_PREFIX):]
            if name not in self.cfg.routes:
                raise NotFoundError(f"Unknown route '{name}'. Routes: {', '.join(sorted(self.cfg.routes))}",
                                    param="model")
            return Decision(name, None, "named", f"route requested by name ({asked})")
        guesses = self.classifier.guesses(request, headers or {})
        notes = []
        for g in guesses:
            route = self.route_for_task(g.task)
            if route is None:
                notes.append(f"{g.source} {g.task!r} has no route")
                continue
            if g.source == "embedding" and g.confidence < self.cfg.classify.min_confidence:
                notes.append(f"embedding {g.task!r} below min_confidence ({g.confidence:.2f})")
                continue
            why = f"task {g.task!r} from {g.source} ({g.detail})"
            return Decision(route, g.task, g.source, "; ".join([*notes, why]), guesses)
        assert self.cfg.default_route is not None
        why = "; ".join([*notes, f"no confident task: default route {self.cfg.default_route!r}"])
        return Decision(self.cfg.default_route, None, "default", why, guesses)

    def classify(self, ctx: RequestContext) -> Decision | None:
        """Decide the route of an ``auto`` / ``route:NAME`` request without calling a model and
        set ``ctx.route`` / ``ctx.task`` (None for other requests). Cheap (labels, rules, the
        embedding classifier, formats), so the normalize stage calls it: compression and cache
        overrides keyed by route name then apply to ``auto`` requests too. Kept on the context,
        so ``plan`` routes the request to the route those stages saw. When nothing but the LLM
        classifier could decide, the route stays unset here (it is known after that model call)."""
        asked = ctx.request.model
        if asked != "auto" and not asked.startswith(ROUTE_PREFIX):
            return None
        kept = ctx.scratch.get(_DECISION)
        if kept is not None and kept[0] == asked:
            decision: Decision = kept[1]
            return decision
        decision = self.decide(ctx.request, ctx.headers)
        ctx.scratch[_DECISION] = (asked, decision)
        if not (decision.source == "default" and self.llm is not None):
            ctx.task = self._recorded_task(ctx, decision)
            ctx.route = decision.route
        return decision

    def plan(self, ctx: RequestContext) -> Plan | None:
        decision = self.classify(ctx)
        if decision is None:
            return None
        if decision.source == "default" and self.llm is not None:
            plan = self.llm.plan(self, decision)
        else:
            plan = self.split_plan(decision.route, ctx, decision.reason)
        ctx.task = self._recorded_task(ctx, decision)
        ctx.route = decision.route
        return plan

    def _recorded_task(self, ctx: RequestContext, decision: Decision) -> str | None:
        """The task the ledger records (`report --by task`). ``ctx.task`` is the client's label
        (normalize stage) when it sent one: that is the team's own name for the task, also when
        the label has no route and a format or rule picked one (the route is recorded apart). With
        ``classify.client_labels: false`` labels are not trusted, so the router's task comes
        first there (the label only when the router found none)."""
        if self.cfg.classify.client_labels:
            return ctx.task or decision.task
        return decision.task or ctx.task

    def split_plan(self, name: str, ctx: RequestContext, reason: str) -> Plan:
        """``route_plan`` of the route that serves this request: ``name``, or its split's target
        for the share of prompts the split sends there (``Plan.route`` names the one used)."""
        if self.cfg.routes[name].split is None:  # most routes: no prompt text to hash per request
            return self.route_plan(name, ctx, reason)
        served, why = resolve_split(self.cfg.routes, name, ctx.request.last_user_text())
        return self.route_plan(served, ctx, f"{reason}; {why}" if why else reason)

    def route_plan(self, name: str, ctx: RequestContext, reason: str) -> Plan:
        r: RouteConfig = self.cfg.routes[name]
        guard = BudgetGuard(self.catalog, r.max_cost_usd, name)
        if r.model:
            return Plan([Tier(r.model)], route=name, reason=reason, max_cost_usd=r.max_cost_usd)
        if r.tiers:
            tiers = [(t.model, t.threshold) for t in r.tiers]
            scorer = self.scorers[name]
            # Asked for only on the tiers the scorer reads (TierCascade), removed from the answer.
            extra = {"logprobs": True} if getattr(scorer, "wants_logprobs", False) else {}
            return Plan([Tier(m, th) for m, th in tiers], route=name, reason=reason, scorer=scorer,
                        max_cost_usd=r.max_cost_usd, policy=TierCascade(tiers, scorer, guard, extra))
        if r.agreement:
            a = r.agreement
            table, at_once = self.tables[name]
            agree = StateTableCascade(list(a.models), table, a.fallback, guard, at_once=at_once)
            return Plan([*(Tier(m) for m in a.models), Tier(a.fallback)], route=name, reason=reason,
                        max_cost_usd=r.max_cost_usd, policy=agree)
        if r.state_table:
            st = r.state_table
            table, at_once = self.tables[name]
            policy = StateTableCascade(list(st.order), table, st.strong, guard, st.raw_letters, at_once=at_once)
            return Plan([*(Tier(m) for m in st.order), Tier(st.strong)], route=name, reason=reason,
                        max_cost_usd=r.max_cost_usd, policy=policy)
        assert r.learned is not None
        learned = self.learned[name]
        allowed = r.learned.models or learned.models
        why = ""
        if r.max_cost_usd is not None:
            # The budget is known before the choice: choose among the models whose call fits.
            fits = [m for m in allowed if guard.allows(ctx, m)]
            if not fits:
                cheapest = min(allowed, key=lambda m: guard.estimate(ctx, m) or 0.0)
                raise guard.refusal(ctx, cheapest)
            if len(fits) < len(allowed):
                why = f"; within max_cost_usd: {', '.join(fits)}"
            allowed = fits
        choice = learned.choose(ctx.request.last_user_text(), target=r.learned.target, lam=r.learned.lam,
                                allowed=allowed)
        return Plan([Tier(choice.model)], route=name, reason=f"{reason}{why}; {choice.reason}",
                    max_cost_usd=r.max_cost_usd)

    def describe(self, name: str) -> dict[str, Any]:
        """A route for people (``route explain``): its kind, the models in calling order (with
        thresholds for tiers), budget and description; no internal class names."""
        r = self.cfg.routes[name]
        out: dict[str, Any] = {"route": name, "description": r.description, "max_cost_usd": r.max_cost_usd}
        if r.model:
            out |= {"kind": "single model", "how": "one call", "models": [r.model]}
        elif r.tiers:
            out |= {"kind": "tiers", "how": f"each answer scored ({r.scorer.kind} scorer) until one clears its "
                                            "threshold; the last tier always answers",
                    "models": [t.model for t in r.tiers], "thresholds": [t.threshold for t in r.tiers]}
        elif r.agreement:
            a = r.agreement
            agree = _at_once(self.tables[name][1])
            out |= {"kind": "agreement", "how": f"serve an answer {a.min_agree} of the cheap models give, "
                                                f"else the fallback{agree}", "models": [*a.models, a.fallback]}
        elif r.state_table:
            st = r.state_table
            table = _at_once(self.tables[name][1])
            out |= {"kind": "state table", "how": "the agreement pattern of the cheap answers decides: another "
                                                  f"model, serve one of them, or the strong model{table}",
                    "models": reachable_models(st)}
        else:
            assert r.learned is not None
            allowed = r.learned.models or self.learned[name].models
            out |= {"kind": "learned", "how": "one model chosen per prompt by the learned router",
                    "models": list(allowed)}
        return out

    def classifier_outcomes(self) -> dict[str, str]:
        """For the LLM classifier: the route each task it may answer leads to (its other
        answers, and a failed call, keep the default route)."""
        if self.llm is None:
            return {}
        assert self.cfg.default_route is not None
        return {t: self.route_for_task(t) or self.cfg.default_route for t in self.llm.cfg.tasks}


def _with_at_once(order: list[str], table: dict[str, str], raw: bool,
                  parallel: bool) -> tuple[dict[str, str], list[str]]:
    """A route's table and the head of ``order`` its cascade asks at once (none: in turn)."""
    n = called_at_once(len(order), table, raw) if parallel else 0
    return table, order[:n] if n > 1 else []


def _at_once(models: list[str]) -> str:
    """For ``route explain``: the cheap models asked at once, and what that costs."""
    if len(models) < 2:
        return ""
    return (f"; {', '.join(models)} are asked at once (the models every answer pattern calls): the same calls "
            f"and cost unless a cheap answer fails or is unusable, one wait instead of {len(models)}")


def build_router(config: Any, catalog: Catalog) -> TaskRouter | None:
    """The router for a thrifty ``Config`` (or a bare ``routing:`` mapping); None when unconfigured."""
    from thrifty.routing.config import parse_routing

    section = getattr(config, "routing", config)
    base_dir = getattr(config, "base_dir", None)
    cfg = parse_routing(section if isinstance(section, RoutingConfig) else dict(section or {}))
    if not cfg.routes:
        return None
    return TaskRouter(cfg, catalog, base_dir)
