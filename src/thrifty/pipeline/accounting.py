"""Totals for a finished request: what it spent, what the baseline model would have spent, and
how far its cascade escalated; and the usage each call is priced by (``observed_usage``).

An escalation is moving past a planned level to a later one because the earlier level's answer
was rejected or its call failed. ``escalations(ctx)`` is the number of levels moved past before
the level whose answer was served: for a tier cascade the served tier's index (cheap tier
served: 0; cheap rejected or failed, next tier served: 1; third tier: 2); for an agreement or
state-table cascade the cheap models are one level (their answers are a vote, so serving any
of them is 0) and the strong/fallback model is the next (1 when it serves after cheap calls,
0 when the table sends the request to it first); a single model is 0. A failed request keeps
the level it had reached. The ledger's ``escalations`` column, the dashboard and the
``thrifty_escalations`` metric all read this one number.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from thrifty.catalog import Catalog, ModelPrice
from thrifty.cost import Cost, call_cost, price_tokens
from thrifty.pipeline.context import Attempt, RequestContext
from thrifty.tokens import content_text, count_messages, count_text
from thrifty.types import ChatRequest, Usage

# Where policies record the escalation level on the request context.
_ESCALATIONS = "cascade.escalations"


def set_escalations(ctx: RequestContext, levels: int) -> None:
    """Record that the request has moved past ``levels`` planned levels (see the module doc)."""
    ctx.scratch[_ESCALATIONS] = levels


def escalations(ctx: RequestContext) -> int:
    """The levels the request moved past before the one that served it (0 without a cascade)."""
    return int(ctx.scratch.get(_ESCALATIONS, 0))


def observed_usage(raw: Any, request: ChatRequest, response: dict[str, Any], *,
                   model: str | None = None) -> tuple[Usage, bool]:
    """The usage to price a call by, and whether any of it was counted offline (an estimate).

    The provider's figures are used as they are; what it left out is counted with thrifty's
    tokenizer: no ``usage`` at all, null or zero fields (some servers send
    ``{"prompt_tokens": null}``; Ollama reports 0 prompt tokens when its prompt cache hit), so a
    call that was billed never reaches the ledger as a silent $0. The answer counted is every
    choice's text, tool calls and reasoning (``reasoning_content``), which all bill as output.
    Tokens are counted with the tokenizer of the model that answered: ``model`` (the upstream
    model name) when given, else the ``model`` the response names, else the request's.
    """
    usage = Usage.from_openai(raw)
    estimated = False
    if usage.prompt_tokens == 0 or usage.completion_tokens == 0:
        model = model or _response_model(response) or request.model
    if usage.prompt_tokens == 0:
        usage.prompt_tokens = count_messages(request.messages, request.params.get("tools"), model=model)
        estimated = usage.prompt_tokens > 0
    if usage.completion_tokens == 0:
        text = _answer_text(response)
        if text:
            usage.completion_tokens = count_text(text, model=model)
            estimated = True
    return usage, estimated


def priced_usage(raw: Any, request: ChatRequest, response: dict[str, Any], price: ModelPrice | None, *,
                 batch: bool = False, model: str | None = None) -> tuple[Usage, Cost]:
    """A call's usage (``observed_usage``, counted for ``model``) and its cost at ``price``, at
    the ``service_tier`` that served it (``served_service_tier``; a Batch API answer: none); a
    computed cost that rests on counted tokens is marked ``estimated``. Normal calls, streams
    and Batch API answers all price through here."""
    usage, estimated = observed_usage(raw, request, response, model=model)
    tier = None if batch else served_service_tier(request, response, price)
    cost = call_cost(usage, price, batch=batch, service_tier=tier)
    if estimated and cost.source == "computed":
        cost = replace(cost, source="estimated")  # the tier it was priced at stays
    return usage, cost


def price_attempt(attempt: Attempt, raw: Any, request: ChatRequest, response: dict[str, Any],
                  price: ModelPrice | None, *, batch: bool = False, model: str | None = None) -> None:
    """Price ``attempt`` (``priced_usage``): its usage, cost, cost source and the tier it was
    billed at, for chat calls and passed-through endpoints alike."""
    attempt.usage, cost = priced_usage(raw, request, response, price, batch=batch, model=model)
    attempt.cost_usd, attempt.cost_source, attempt.service_tier = cost.usd, cost.source, cost.service_tier


# Longest ``service_tier`` kept: the value is the provider's, and lands in the ledger.
_TIER_CHARS = 32


def served_service_tier(request: ChatRequest, response: dict[str, Any], price: ModelPrice | None) -> str | None:
    """The ``service_tier`` a call is billed at: the one its response reports (OpenAI says which
    tier actually served it: a flex request may be served at "default", "auto" may become
    "priority"); without one, the request's, when the provider bills what is asked
    (``ModelPrice.honours_service_tier``: OpenAI) and it names a tier ("auto" names none); else
    None, the standard price. Lower-cased and cut short: it is the provider's text."""
    reported = response.get("service_tier")
    if not isinstance(reported, str) or not reported.strip():
        asked = request.params.get("service_tier")
        if price is None or not price.honours_service_tier or not isinstance(asked, str) or asked == "auto":
            return None
        reported = asked
    return reported.strip().lower()[:_TIER_CHARS] or None


def _response_model(response: dict[str, Any]) -> str | None:
    model = response.get("model")
    return model if isinstance(model, str) and model else None


def _answer_text(response: dict[str, Any]) -> str:
    parts: list[str] = []
    for choice in response.get("choices") or []:
        msg = (choice.get("message") or {}) if isinstance(choice, dict) else {}
        for key in ("reasoning_content", "reasoning"):
            if isinstance(msg.get(key), str):
                parts.append(msg[key])
        parts.append(content_text(msg.get("content")))  # a string or content parts
        parts += call_texts(msg)
    return "".join(parts)


def call_texts(message: dict[str, Any]) -> list[str]:
    """The names and arguments of the calls in a message or a stream delta (``tool_calls``, or a
    legacy ``function_call``, which was left out and so counted as 0 output tokens), in order:
    they bill as output."""
    calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    if isinstance(message.get("function_call"), dict):
        calls.append({"function": message["function_call"]})
    parts: list[str] = []
    for call in calls:
        fn = call.get("function")
        if isinstance(fn, dict):
            parts.extend(str(v) for v in (fn.get("name"), fn.get("arguments")) if v is not None)
    return parts


def settle(ctx: RequestContext, catalog: Catalog, served: Attempt | None) -> None:
    """Fill ``ctx``'s served model, usage, total cost and baseline cost.

    The request's cost is every attempt it made (failed tries that billed, rejected cascade
    answers, judges). The baseline is the baseline model pricing the served answer's tokens and
    the client's whole prompt (``baseline_cost``): "had the client sent this to the premium
    model". Unknown prices leave None, never an error.
    """
    if served is not None:
        ctx.served_model = served.model
        ctx.served_tier = served.tier
        ctx.usage = served.usage
        ctx.served_service_tier = served.service_tier
    ctx.cost_usd = ctx.spent_usd()
    baseline = catalog.baseline
    if ctx.baseline_cost_usd is None and baseline is not None and served is not None:
        ctx.baseline_cost_usd = baseline_cost(ctx, served.usage, baseline.price)


def baseline_cost(ctx: RequestContext, usage: Usage, price: ModelPrice | None) -> float | None:
    """The baseline model at ``price`` answering the request as its client sent it: ``usage``
    (the prompt as sent upstream and the answer served) plus the prompt tokens compression
    removed. Without them, a compressed request's baseline priced the shorter prompt and its
    saving (baseline minus cost, plus compression's) could pass 100% of its baseline."""
    removed = max(0, ctx.compression_saved_tokens)
    if removed:  # a copy only then: dataclasses.replace is slow, and most requests are not compressed
        usage = replace(usage, prompt_tokens=usage.prompt_tokens + removed)
    return price_tokens(usage, price)
