"""The optional LLM classifier: when no rule, label, example or format gives a confident task,
ask the cheapest configured model which task it is, then run that task's route.

It calls a model, so it runs inside the cascade stage as a policy; its call is priced and in the
ledger with ``purpose="classify"``. A route chosen this way is buffered, even when streaming.
The call is shaped for the classifier model by ``internal_calls`` (a reasoning model gets room
to reason before the label); an empty answer is "no task recognised", as any unreadable one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from thrifty.errors import UpstreamError
from thrifty.internal_calls import complete_internal
from thrifty.pipeline.caller import ModelCaller
from thrifty.pipeline.context import Attempt, Plan, RequestContext, Tier
from thrifty.routing.config import LLMClassifierConfig
from thrifty.routing.policies import BudgetGuard, run_single
from thrifty.types import ChatRequest, response_text

if TYPE_CHECKING:
    from thrifty.routing.router import Decision, TaskRouter


def classify_messages(cfg: LLMClassifierConfig, request: ChatRequest) -> list[dict[str, Any]]:
    tasks = ", ".join(cfg.tasks)
    system = (f"Classify the user's request into exactly one of these tasks: {tasks}. "
              "Reply with the task name only; reply 'none' if no task fits.")
    return [{"role": "system", "content": system}, {"role": "user", "content": request.last_user_text()[-4000:]}]


def parse_task(reply: str, tasks: list[str]) -> str | None:
    low = reply.strip().lower()
    for t in sorted(tasks, key=len, reverse=True):  # longest first: "code-review" before "code"
        if re.search(rf"(?<![\w-]){re.escape(t.lower())}(?![\w-])", low):
            return t
    return None


@dataclass
class LLMClassifier:
    cfg: LLMClassifierConfig

    def plan(self, router: TaskRouter, decision: Decision) -> Plan:
        return Plan([Tier(self.cfg.model)], route=decision.route, reason=decision.reason,
                    policy=_ClassifyThenRoute(self, router, decision))


@dataclass
class _ClassifyThenRoute:
    clf: LLMClassifier
    router: TaskRouter
    decision: Decision

    async def run(self, ctx: RequestContext, caller: ModelCaller) -> tuple[dict[str, Any], Attempt]:
        cfg = self.clf.cfg
        route, why = self.decision.route, self.decision.reason
        try:
            reply, attempt = await complete_internal(caller, ctx, cfg.model, classify_messages(cfg, ctx.request),
                                                     max_tokens=cfg.max_tokens, purpose="classify")
            task = parse_task(response_text(reply), cfg.tasks)
            found = self.router.route_for_task(task) if task else None
            attempt.score_reason = f"classified as {task!r}" if task else "no task recognised"
            if found:
                route, why = found, f"task {task!r} from llm classifier ({cfg.model})"
                ctx.task = ctx.task or task  # a client's label stays the recorded task (router.classify)
        except UpstreamError as exc:
            why += f"; llm classifier failed ({exc.message[:60]})"
        ctx.route = route
        plan = self.router.split_plan(route, ctx, why)
        ctx.plan = plan
        if plan.policy is not None:
            result: tuple[dict[str, Any], Attempt] = await plan.policy.run(ctx, caller)
            return result
        ctx.strategy = "routing"  # one model, chosen by the classifier: no cascade
        return await run_single(ctx, caller, plan.tiers[0].model,
                                BudgetGuard(self.router.catalog, plan.max_cost_usd, route))
