"""Policies that answer one request with several calls (run by the cascade stage).

- ``TierCascade``: try tiers cheapest first, score each answer, accept the first that clears
  its tier's threshold; the last tier is always accepted.
- ``StateTableCascade``: call cheap models in a fixed order; after each answer, look up the
  *agreement pattern* of the normalised answers so far (``"0,0"`` = the two agree,
  ``"0,1"`` = they differ, ``"0,x"`` = the second gave nothing usable) in a table that says
  ``next`` (call the next model), ``stop:i`` (serve the i-th answer) or ``strong`` (ask the
  strong model and serve it). A plain agreement cascade ("serve when two cheap models agree,
  else GPT-4") is one such table; ``fit_policy`` learns tables from outcome data.

Every call goes through ``caller.complete`` (priced, in the ledger); each attempt carries its
score, the reason and whether it was accepted. Decisions never read anything but the answers.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from thrifty.catalog import Catalog
from thrifty.cost import estimate_cost
from thrifty.errors import UpstreamError
from thrifty.pipeline.caller import ModelCaller
from thrifty.pipeline.context import Attempt, RequestContext
from thrifty.routing.formats import agreement_pattern, detect_family, extract_answer
from thrifty.scoring.base import score_answer
from thrifty.tokens import count_messages
from thrifty.types import response_text


@dataclass
class BudgetGuard:
    """Never start a call whose estimated cost would take the request over ``max_cost_usd``."""

    catalog: Catalog
    max_cost_usd: float | None

    def allows(self, ctx: RequestContext, model: str) -> bool:
        if self.max_cost_usd is None:
            return True
        info = self.catalog.get(model)
        completion_guess = max((a.usage.completion_tokens for a in ctx.attempts), default=256)
        est = estimate_cost(count_messages(ctx.request.messages), completion_guess, info.price if info else None)
        return est is None or (ctx.spent_usd() or 0.0) + est <= self.max_cost_usd


@dataclass
class TierCascade:
    tiers: list[tuple[str, float | None]]  # (model, threshold); the last threshold is ignored
    scorer: Any
    guard: BudgetGuard
    extra_params: dict[str, Any] = field(default_factory=dict)  # e.g. logprobs for a logprob scorer

    async def run(self, ctx: RequestContext, caller: ModelCaller) -> tuple[dict[str, Any], Attempt]:
        best: tuple[dict[str, Any], Attempt] | None = None
        last_error: UpstreamError | None = None
        request = ctx.request.copy_with(params={**ctx.request.params, **self.extra_params}) \
            if self.extra_params else None
        for i, (model, threshold) in enumerate(self.tiers):
            is_last = i == len(self.tiers) - 1
            if best is not None and not self.guard.allows(ctx, model):
                best[1].score_reason = (best[1].score_reason or "") + f"; budget guard: {model} not called"
                best[1].accepted = True
                return best
            try:
                response, attempt = await caller.complete(ctx, model, request)
            except UpstreamError as exc:
                last_error = exc
                if is_last and best is None:
                    raise
                continue
            if is_last or threshold is None:
                attempt.accepted = True
                attempt.score_reason = attempt.score_reason or ("last tier" if is_last else "no threshold")
                return response, attempt
            score = await score_answer(self.scorer, ctx, caller, response)
            attempt.score, attempt.score_reason = score.value, score.reason
            attempt.accepted = score.value >= threshold
            if attempt.accepted:
                return response, attempt
            attempt.score_reason += f" (< {threshold:g}: escalate)"
            if best is None or (best[1].score or 0.0) < score.value:
                best = (response, attempt)
        if best is not None:
            best[1].accepted = True
            best[1].score_reason = (best[1].score_reason or "") + "; later tiers failed"
            return best
        assert last_error is not None
        raise last_error


@dataclass
class StateTableCascade:
    order: list[str]
    table: dict[str, str]
    strong: str
    guard: BudgetGuard
    raw_letters: bool = False
    family: str | None = None  # None: detect from the prompt

    async def run(self, ctx: RequestContext, caller: ModelCaller) -> tuple[dict[str, Any], Attempt]:
        family = self.family or detect_family(ctx.request.last_user_text())
        called: list[tuple[dict[str, Any], Attempt]] = []
        answers: list[str | None] = []
        reason = "strong model"
        while True:
            state = agreement_pattern(answers, raw=self.raw_letters)
            action = self.table.get(state, "strong")  # a state never seen in training: be safe
            if action == "next" and len(called) < len(self.order):
                model = self.order[len(called)]
                if called and not self.guard.allows(ctx, model):
                    return self._serve(called, answers, 0, f"budget guard: {model} not called")
                try:
                    response, attempt = await caller.complete(ctx, model)
                except UpstreamError:
                    answers.append(None)  # a failed cheap call counts as a useless answer
                    called.append(({}, Attempt(model=model, provider="", started=0.0, status="error")))
                    continue
                answer = extract_answer(family, response_text(response))
                attempt.score_reason = f"answer {answer!r}" if answer is not None else "no usable answer"
                attempt.accepted = False
                called.append((response, attempt))
                answers.append(answer)
                continue
            if action.startswith("stop:"):
                i = int(action[5:])
                if i < len(called) and called[i][0]:
                    return self._serve(called, answers, i, f"agreement pattern {state!r} -> serve answer {i + 1}")
            reason = f"agreement pattern {state!r} -> strong model" if called else "table: strong model first"
            break
        response, attempt = await caller.complete(ctx, self.strong)
        attempt.accepted, attempt.score_reason = True, reason
        return response, attempt

    @staticmethod
    def _serve(called: list[tuple[dict[str, Any], Attempt]], answers: list[str | None], i: int,
               reason: str) -> tuple[dict[str, Any], Attempt]:
        response, attempt = called[i]
        # The score of a served cheap answer: the share of answers so far that agree with it.
        agree = sum(1 for a in answers if a is not None and a == answers[i])
        attempt.score = round(agree / len(answers), 4)
        attempt.accepted = True
        attempt.score_reason = f"{attempt.score_reason}; {reason}"
        return response, attempt


def vote_table(n: int, k: int) -> dict[str, str]:
    """The table of "ask up to ``n`` models in order; serve the first answer ``k`` of them give;
    ask the strong model as soon as no answer can still reach ``k`` votes"."""
    table: dict[str, str] = {"": "next"}
    for depth in range(1, n + 1):
        for combo in itertools.product([*(str(i) for i in range(depth)), "x"], repeat=depth):
            state = agreement_pattern([None if c == "x" else c for c in combo])
            if state in table:
                continue
            labels = state.split(",")
            votes = Counter(a for a in labels if a != "x")
            top, count = votes.most_common(1)[0] if votes else ("", 0)
            if count >= k:
                table[state] = f"stop:{labels.index(top)}"
            elif count + (n - depth) >= k and depth < n:
                table[state] = "next"
            else:
                table[state] = "strong"
    return table
