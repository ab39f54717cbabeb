"""Policies that answer one request with several calls (run by the cascade stage).

- ``TierCascade``: try tiers cheapest first, score each answer, accept the first that clears
  its tier's threshold; the last tier is always accepted (and not scored). This is the one
  tier-cascade implementation: the cascade stage runs it for every multi-tier plan, including
  plans built by custom routers.
- ``StateTableCascade``: call cheap models in a fixed order; after each answer, look up the
  *agreement pattern* of the normalised answers so far (``"0,0"`` = the two agree,
  ``"0,1"`` = they differ, ``"0,x"`` = the second gave nothing usable) in a table that says
  ``next`` (call the next model), ``stop:i`` (serve the i-th answer) or ``strong`` (ask the
  strong model and serve it). A plain agreement cascade ("serve when two cheap models agree,
  else GPT-4") is one such table; ``fit_policy`` learns tables from outcome data. The models every
  answer pattern calls are asked at once (one wait; the same calls and cost unless a cheap answer
  fails or is unusable, when a call made anyway is paid and unused), their answers then read in
  order as if asked in turn.
- ``BudgetGuard``: a route's ``max_cost_usd``, checked before every call (the first included).

Every call goes through ``caller.complete`` (priced, in the ledger); each attempt carries its
score, the reason and whether it was accepted. Decisions never read anything but the answers.
Escalations (``pipeline/accounting.py``) count the levels a request moved past before the level
that served it: tiers for a tier cascade; the cheap vote, then the strong model, for a table.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from thrifty.catalog import Catalog, ModelInfo
from thrifty.cost import price_tokens
from thrifty.errors import InvalidRequestError, ThriftyError, UpstreamError
from thrifty.pipeline.accounting import set_escalations
from thrifty.pipeline.caller import ModelCaller
from thrifty.pipeline.context import Attempt, RequestContext
from thrifty.routing.formats import agreement_pattern, detect_family, extract_answer
from thrifty.routing.reach import _children
from thrifty.scoring.base import score_choices
from thrifty.scoring.logprob import learn_logprobs_refusal, refuses_logprobs, strip_logprobs
from thrifty.scoring.structured import asks_for_json, json_problem
from thrifty.scoring.tools import tool_answer, tool_calls, tool_choice_problems
from thrifty.tokens import count_messages
from thrifty.types import ChatRequest, Usage, response_text

# Completion tokens assumed for a request's first call (later calls assume the longest answer
# so far), capped by the request's max_tokens / max_completion_tokens.
FIRST_COMPLETION_GUESS = 256


@dataclass
class BudgetGuard:
    """Never start a call whose estimated cost would take the request over ``max_cost_usd``.

    The estimate prices the prompt (messages and tools) plus a completion as long as the
    longest answer so far (``FIRST_COMPLETION_GUESS`` before any, at most the request's
    ``max_tokens``, times ``n``) at the model's catalog price; a model without a price cannot
    be estimated and is allowed."""

    catalog: Catalog
    max_cost_usd: float | None
    route: str | None = None
    batch: bool = False  # priced as a Batch API call (deferrable requests)

    def tokens(self, ctx: RequestContext, model: str | None = None) -> tuple[int, int]:
        """(prompt, completion) tokens the next call, to upstream ``model``, is estimated at."""
        req = ctx.request
        prompt = count_messages(req.messages, req.params.get("tools"), model=model)
        completion = max((a.usage.completion_tokens for a in ctx.attempts if a.purpose == "answer"
                          and a.status == "ok"), default=0)
        if completion <= 0:
            completion = min(FIRST_COMPLETION_GUESS, req.output_limit() or FIRST_COMPLETION_GUESS) * req.choices()
        return prompt, completion

    def estimate(self, ctx: RequestContext, model: str) -> float | None:
        info = self.catalog.get(model)
        if info is None or info.price is None:
            return None
        prompt, completion = self.tokens(ctx, info.upstream_model)
        return price_tokens(Usage(prompt_tokens=prompt, completion_tokens=completion), info.price, batch=self.batch)

    def allows(self, ctx: RequestContext, *models: str) -> bool:
        """Whether calls to ``models`` (one, or several asked at once) fit: what the request
        spent plus each call's estimate; a model without a price adds nothing."""
        if self.max_cost_usd is None:
            return True
        known = [est for est in (self.estimate(ctx, m) for m in models) if est is not None]
        return not known or (ctx.spent_usd() or 0.0) + sum(known) <= self.max_cost_usd

    def why_not(self, ctx: RequestContext, model: str) -> str:
        """Why ``allows`` said no, for reasons and error messages."""
        est = self.estimate(ctx, model) or 0.0
        info = self.catalog.get(model)
        prompt, completion = self.tokens(ctx, info.upstream_model if info else None)
        spent = ctx.spent_usd() or 0.0
        already = f" on top of ${spent:.6g} already spent" if spent else ""
        where = f" of route {self.route!r}" if self.route else ""
        return (f"calling {model} is estimated at ${est:.6g} ({prompt} prompt + {completion} completion tokens)"
                f"{already}, over the max_cost_usd{where} (${self.max_cost_usd:g})")

    def refusal(self, ctx: RequestContext, model: str, last_error: UpstreamError | None = None) -> ThriftyError:
        """The error for a request the guard leaves without any answer. When an earlier call
        failed, that failure is the error (its status kept) with the guard's note added;
        otherwise nothing was spent on an answer and the request is refused (400)."""
        why = self.why_not(ctx, model)
        if last_error is not None:
            last_error.message = f"{last_error.message}; budget guard: {why}"
            last_error.args = (last_error.message,)
            return last_error
        return InvalidRequestError(f"{why}; no answer was requested (raise max_cost_usd, or lower max_tokens or the "
                                   "prompt)",
                                   param="model", code="route_budget_exceeded")

    def require(self, ctx: RequestContext, model: str) -> None:
        """Raise the refusal unless a call to ``model`` fits (single-model plans)."""
        if not self.allows(ctx, model):
            raise self.refusal(ctx, model)


def _served(ctx: RequestContext, response: dict[str, Any], attempt: Attempt, level: int) -> tuple[dict[str, Any], Attempt]:
    """Hand back the served answer: escalation level recorded, logprobs the client did not ask
    for removed (a logprob scorer asks for them)."""
    set_escalations(ctx, level)
    if not ctx.request.params.get("logprobs"):
        strip_logprobs(response)
    return response, attempt


async def run_single(ctx: RequestContext, caller: ModelCaller, model: str, guard: BudgetGuard) -> tuple[dict[str, Any], Attempt]:
    """One call, inside the route's budget (for plans run as a policy, e.g. after the LLM classifier)."""
    guard.require(ctx, model)
    response, attempt = await caller.complete(ctx, model)
    attempt.accepted = True
    return response, attempt


@dataclass
class TierCascade:
    tiers: list[tuple[str, float | None]]  # (model, threshold); the last threshold is ignored
    scorer: Any  # None: every answer is accepted (a fallback chain on errors only)
    guard: BudgetGuard
    extra_params: dict[str, Any] = field(default_factory=dict)  # e.g. logprobs for a logprob scorer

    async def _tier_call(self, ctx: RequestContext, caller: ModelCaller, model: str,
                         scored_request: ChatRequest | None) -> tuple[dict[str, Any], Attempt]:
        """One tier's call. The logprobs the scorer asked for (the client did not) are left out for
        a model known to refuse them (DeepSeek's reasoner, OpenAI's reasoning models: a 400), and
        such a refusal sends the call again without them to the model that refused, learned for it: the
        scorer then reads no logprobs, as from a provider that returns none. A client that asked
        for logprobs itself is sent them, and a refusal is its answer."""
        if scored_request is None or "logprobs" not in self.extra_params or ctx.request.params.get("logprobs"):
            return await caller.complete(ctx, model, scored_request)
        catalog = self.guard.catalog
        plain = scored_request.copy_with(params={k: v for k, v in scored_request.params.items() if k != "logprobs"})
        tried: list[tuple[str, bool]] = []  # (model, sent logprobs) per model of the fallback chain

        def request_for(info: ModelInfo) -> ChatRequest:
            asked = not refuses_logprobs(catalog, info.name)
            tried.append((info.name, asked))
            return scored_request if asked else plain

        try:
            return await caller.complete(ctx, model, request_for)
        except UpstreamError as exc:
            last, asked = tried[-1] if tried else (model, False)
            if not (asked and learn_logprobs_refusal(catalog, last, exc.status, exc.param, exc.message)):
                raise
        # Sent again to the model that refused, not to the tier's: when a fallback refused (the
        # tier's model failed first, a 5xx), the whole chain again would retry the failing model,
        # with all its retries and back-off, each another attempt in the ledger.
        return await caller.complete(ctx, last, request_for)

    def _scored(self, i: int) -> bool:
        """The last tier and a tier without threshold are accepted without scoring."""
        return i < len(self.tiers) - 1 and self.tiers[i][1] is not None and self.scorer is not None

    async def run(self, ctx: RequestContext, caller: ModelCaller) -> tuple[dict[str, Any], Attempt]:
        best: tuple[dict[str, Any], Attempt, int] | None = None
        last_error: UpstreamError | None = None
        # Extra parameters (logprobs) go only to tiers whose answer the scorer reads.
        scored_request = ctx.request.copy_with(params={**ctx.request.params, **self.extra_params}) \
            if self.extra_params else None
        for i, (model, threshold) in enumerate(self.tiers):
            is_last = i == len(self.tiers) - 1
            if not self.guard.allows(ctx, model):
                if best is not None:
                    best[1].score_reason = (best[1].score_reason or "") + f"; budget guard: {self.guard.why_not(ctx, model)}"
                    best[1].accepted = True
                    return _served(ctx, *best)
                raise self.guard.refusal(ctx, model, last_error)
            set_escalations(ctx, i)
            scored = self._scored(i)
            try:
                response, attempt = await self._tier_call(ctx, caller, model, scored_request if scored else None)
            except UpstreamError as exc:
                last_error = exc
                if is_last and best is None:
                    raise
                continue
            if not scored:
                attempt.accepted = True
                why = "last tier" if is_last else "no threshold" if threshold is None else "no scorer"
                attempt.score_reason = attempt.score_reason or f"{why}: accepted without scoring"
                return _served(ctx, response, attempt, i)
            assert threshold is not None
            # Scorers see the catalog name of the model that answered (the upstream's name for
            # it can differ: aliases, upstream_model).
            score = await score_choices(self.scorer, ctx, caller, {**response, "model": attempt.model})
            attempt.score, attempt.score_reason = score.value, score.reason
            attempt.accepted = score.value >= threshold
            if attempt.accepted:
                return _served(ctx, response, attempt, i)
            attempt.score_reason += f" (< {threshold:g}: escalate)"
            if best is None or (best[1].score or 0.0) < score.value:
                best = (response, attempt, i)
        if best is not None:
            best[1].accepted = True
            best[1].score_reason = (best[1].score_reason or "") + "; later tiers failed"
            return _served(ctx, *best)
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
    # The head of ``order`` asked at once rather than in turn: the models every answer pattern
    # calls (``called_at_once``), worked out once when the route is built, not per request;
    # empty (``parallel: false``) or one model: in turn.
    at_once: list[str] = field(default_factory=list)

    async def run(self, ctx: RequestContext, caller: ModelCaller) -> tuple[dict[str, Any], Attempt]:
        family = self.family or detect_family(ctx.request.last_user_text())
        called: list[tuple[dict[str, Any], Attempt]] = []
        answers: list[str | None] = []
        last_error: UpstreamError | None = None
        reason = "strong model"
        # The request as the guard sees it: after a stop in the replay below, without the calls
        # asked at once and left unused (their cost and length are no call the sequential path made).
        seen = ctx
        if len(self.at_once) > 1 and self.guard.allows(ctx, *self.at_once):
            start = len(ctx.attempts)
            results, counts = await self._ask_at_once(ctx, caller, self.at_once)
            for k, (model, done) in enumerate(zip(self.at_once, results, strict=True)):
                # Replayed as the sequential path decides before each call: the table on the
                # answers so far, then the guard on what the earlier calls actually cost and
                # answered. Either stops a call here only after a failed or unusable answer, or
                # one longer than estimated; the calls from there on were made all the same (paid,
                # in the ledger), and are left out of the decision.
                action = self.table.get(agreement_pattern(answers, raw=self.raw_letters), "strong")
                before = ctx if self.guard.max_cost_usd is None else \
                    replace(ctx, attempts=ctx.attempts[:start + sum(counts[:k])])
                if action != "next" or not self.guard.allows(before, model):
                    for skipped in results[k:]:
                        self._unused(skipped)
                    if action == "next":
                        return self._keep(ctx, called, answers, model, last_error, as_of=before)
                    seen = before
                    break
                last_error = self._take(ctx, family, model, done, called, answers) or last_error
        while True:
            state = agreement_pattern(answers, raw=self.raw_letters)
            action = self.table.get(state, "strong")  # a state never seen in training: be safe
            if action == "next" and len(called) < len(self.order):
                model = self.order[len(called)]
                if not self.guard.allows(ctx, model):
                    return self._keep(ctx, called, answers, model, last_error)
                result: tuple[dict[str, Any], Attempt] | UpstreamError
                try:
                    result = await caller.complete(ctx, model)
                except UpstreamError as exc:
                    result = exc
                last_error = self._take(ctx, family, model, result, called, answers) or last_error
                continue
            if action.startswith("stop:"):
                i = int(action[5:])
                if i < len(called) and called[i][0]:
                    return self._serve(ctx, called, answers, i, f"agreement pattern {state!r} -> serve answer {i + 1}")
            reason = f"agreement pattern {state!r} -> strong model" if called else "table: strong model first"
            break
        if not self.guard.allows(seen, self.strong):
            return self._keep(ctx, called, answers, self.strong, last_error, as_of=seen)
        set_escalations(ctx, 1 if called else 0)
        response, attempt = await caller.complete(ctx, self.strong)
        attempt.accepted, attempt.score_reason = True, reason
        return _served(ctx, response, attempt, 1 if called else 0)

    def answer(self, ctx: RequestContext, family: str, response: dict[str, Any]) -> str | None:
        """The normalised answer compared across models: a tool call's function and canonical
        arguments, else the option letter / code signature / first line of the text."""
        if tool_calls(response):
            return tool_answer(ctx.request, response)
        if tool_choice_problems(ctx.request, []):
            return None  # text where tool_choice forces a call: unusable, like a bad call
        text = response_text(response)
        if asks_for_json(ctx.request) and json_problem(ctx.request, text) is not None:
            return None  # not JSON the client can read (fenced, off-schema): unusable, however many agree
        return extract_answer(family, text)

    def _take(self, ctx: RequestContext, family: str, model: str,
              result: tuple[dict[str, Any], Attempt] | UpstreamError,
              called: list[tuple[dict[str, Any], Attempt]], answers: list[str | None]) -> UpstreamError | None:
        """Add one cheap call's outcome to ``called`` / ``answers``; its error, if it failed."""
        if isinstance(result, UpstreamError):
            answers.append(None)  # a failed cheap call counts as a useless answer
            called.append(({}, Attempt(model=model, provider="", started=0.0, status="error")))
            return result
        response, attempt = result
        answer = self.answer(ctx, family, response)
        attempt.score_reason = f"answer {answer!r}" if answer is not None else "no usable answer"
        attempt.accepted = False
        called.append((response, attempt))
        answers.append(answer)
        return None

    @staticmethod
    def _unused(result: tuple[dict[str, Any], Attempt] | UpstreamError) -> None:
        """Mark a call asked at once that the sequential path would not have made (in the ledger)."""
        if not isinstance(result, UpstreamError):
            result[1].accepted = False
            result[1].score_reason = "asked at once; not used (in turn it would not have been called)"

    async def _ask_at_once(self, ctx: RequestContext, caller: ModelCaller, models: list[str],
                           ) -> tuple[list[tuple[dict[str, Any], Attempt] | UpstreamError], list[int]]:
        """Call ``models`` concurrently: each call's outcome (its error, if it failed) and how many
        attempts it made. Each call records its attempts (retries, fallbacks) in a context of its
        own, added to the request's in model order when all are done or cancelled (client gone,
        deadline: the TaskGroup cancels every call), so the ledger reads as the sequential path."""
        own = [replace(ctx, attempts=[]) for _ in models]

        async def one(sub: RequestContext, model: str) -> tuple[dict[str, Any], Attempt] | UpstreamError:
            try:
                return await caller.complete(sub, model)
            except UpstreamError as exc:
                return exc

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(sub, m)) for sub, m in zip(own, models, strict=True)]
        except BaseExceptionGroup as failed:
            # Only a bug gets here (a provider's untranslated exception; the siblings were
            # cancelled): raised bare, as the sequential path raises it.
            raise failed.exceptions[0] from None
        finally:
            for sub in own:
                ctx.attempts.extend(sub.attempts)
        return [t.result() for t in tasks], [len(sub.attempts) for sub in own]

    def _keep(self, ctx: RequestContext, called: list[tuple[dict[str, Any], Attempt]], answers: list[str | None],
              model: str, last_error: UpstreamError | None,
              as_of: RequestContext | None = None) -> tuple[dict[str, Any], Attempt]:
        """The budget guard stopped the call to ``model``: serve the usable answer most others
        agree with (the earliest on a tie), or fail when there is none. ``as_of``: the request
        as the guard saw it (calls asked at once: before the ones after ``model``'s turn)."""
        seen = as_of or ctx
        usable = [i for i, a in enumerate(answers) if a is not None and called[i][0]]
        if not usable:
            raise self.guard.refusal(seen, model, last_error)
        i = max(usable, key=lambda j: (sum(1 for a in answers if a == answers[j]), -j))
        return self._serve(ctx, called, answers, i, f"budget guard: {self.guard.why_not(seen, model)}")

    @staticmethod
    def _serve(ctx: RequestContext, called: list[tuple[dict[str, Any], Attempt]], answers: list[str | None], i: int,
               reason: str) -> tuple[dict[str, Any], Attempt]:
        response, attempt = called[i]
        # The score of a served cheap answer: the share of answers so far that agree with it.
        agree = sum(1 for a in answers if a is not None and a == answers[i])
        attempt.score = round(agree / len(answers), 4)
        attempt.accepted = True
        attempt.score_reason = f"{attempt.score_reason}; {reason}"
        return _served(ctx, response, attempt, 0)


def called_at_once(n: int, table: dict[str, str], raw: bool) -> int:
    """The length m of the prefix of an ``n``-model order that a table calls whatever the
    answers: every pattern of fewer than m usable answers maps to ``next`` (the router works it
    out once per route). Patterns with an ``x`` (a failed call or an unusable answer) are left
    out: they are the exception, and then a call asked at once may be one the table would have
    skipped (paid for, left out of the decision).
    A raw-letter table keys on the letters themselves and sends an unseen one to the strong
    model, so past the first call nothing is certain."""
    m = 0
    frontier = [""]  # every canonical pattern of m usable answers (Bell(m) of them, not m**m)
    while m < n and (m == 0 or not raw) and all(table.get(p, "strong") == "next" for p in frontier):
        m += 1
        frontier = [kid for p in frontier for kid in _children(p, table, raw)[0] if not kid.endswith("x")]
    return m


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
