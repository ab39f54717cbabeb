"""``POST /v1/embeddings``: a passthrough to the model's provider, authenticated and recorded.

RAG apps call ``client.embeddings.create`` on the same client (the same base_url) as chat, so
thrifty serves it rather than making them keep a second client. Nothing is routed, cached or
compressed: the request goes to the catalog model asked for (aliases resolve; ``auto`` and
routes pick chat models, so they are unknown here), with its upstream name, and the provider's
JSON comes back unchanged (its ``model`` field is the upstream name; ``x-thrifty-model`` names
the catalog model). No fallbacks: another model's vectors live in another space, and mixing
them into one index would break retrieval silently. Retries follow the provider's policy.

It runs in a small pipeline of the chat pipeline's own stages (ledger, deadline, the key's
budget when virtual keys are on) around one call stage, so each request that gets past
authentication leaves exactly one ``requests`` row (strategy ``embeddings``; its cost is the
prompt tokens at the model's input price, and its baseline the same cost: no saving is
claimed) plus one ``attempts`` row per upstream call, failures included, and observers
(metrics, request log) see it like any other request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from thrifty.cost import call_cost
from thrifty.errors import InvalidRequestError, NotFoundError, UpstreamError
from thrifty.fastjson import FastJSONResponse
from thrifty.pipeline.build import compose
from thrifty.pipeline.caller import RetryPolicy
from thrifty.pipeline.context import Attempt, Handler, RequestContext, new_request_id
from thrifty.pipeline.deadline import DeadlineStage
from thrifty.pipeline.ledger_stage import LedgerStage
from thrifty.server.http_errors import handler_error, request_id_headers
from thrifty.tokens import count_text
from thrifty.types import ChatRequest, Usage, body_model

if TYPE_CHECKING:
    from thrifty.catalog import ModelInfo
    from thrifty.gateway import Gateway

log = logging.getLogger("thrifty.server")

STRATEGY = "embeddings"


@runtime_checkable
class JSONPoster(Protocol):
    """A provider that can POST any OpenAI-style JSON endpoint (``OpenAICompatProvider``)."""

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]: ...


def validate(body: Any) -> tuple[str, Any]:
    """(model, input) of an embeddings body; ``InvalidRequestError`` naming the bad field.
    Every other field (dimensions, encoding_format, user...) is the provider's to judge."""
    model = body_model(body)
    value = body.get("input")
    if not valid_input(value):
        raise InvalidRequestError(
            "'input' is required: a non-empty string, an array of non-empty strings, an array of token ids "
            "or an array of token-id arrays.", param="input")
    return model, value


def valid_input(value: Any) -> bool:
    def tokens(v: Any) -> bool:  # bool is an int subclass, and never a token id
        return isinstance(v, list) and bool(v) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)

    if isinstance(value, str):
        return bool(value)
    if not isinstance(value, list) or not value:
        return False
    return (all(isinstance(v, str) and v for v in value) or tokens(value)
            or all(tokens(v) for v in value))


def count_input(value: Any) -> int:
    """Offline token count of a validated ``input`` (for a provider that sends no usage)."""
    if isinstance(value, str):
        return count_text(value)
    if all(isinstance(v, int) for v in value):
        return len(value)
    return sum(count_text(v) if isinstance(v, str) else len(v) for v in value)


class EmbeddingsCall:
    """The innermost stage: one catalog model, its provider's ``/embeddings``, with retries."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> None:
        body: dict[str, Any] = ctx.scratch["embeddings_body"]
        info = self.model(ctx.request.model)
        provider = self.gateway.providers[info.provider]
        if not isinstance(provider, JSONPoster):
            raise InvalidRequestError(f"The model '{ctx.request.model}' is served by provider '{info.provider}', "
                                      "which has no embeddings endpoint.", param="model", code="unsupported_endpoint")
        upstream = {**body, "model": info.upstream_model}
        policy = self.gateway.caller.retry_policies.get(info.provider, RetryPolicy())
        response = await self._call(ctx, provider, info, upstream, policy)
        ctx.served_model, ctx.served_tier, ctx.response = info.name, info.tier, response
        served = ctx.attempts[-1]
        ctx.usage, ctx.cost_usd = served.usage, served.cost_usd
        ctx.baseline_cost_usd = served.cost_usd  # a passthrough: the baseline is the same call

    def model(self, asked: str) -> ModelInfo:
        info = self.gateway.catalog.get(asked)
        if info is None:  # the message chat gives (pipeline/route.py), without the routes it offers
            known = sorted(m.name for m in self.gateway.catalog)
            raise NotFoundError(f"The model '{asked}' does not exist. Available models: {', '.join(known)}.",
                                param="model")
        return info

    async def _call(self, ctx: RequestContext, poster: JSONPoster, info: ModelInfo, body: dict[str, Any],
                    policy: RetryPolicy) -> dict[str, Any]:
        for i in range(policy.max_retries + 1):
            attempt = Attempt(model=info.name, provider=info.provider, started=time.time(), tier=info.tier,
                              purpose=STRATEGY)
            ctx.attempts.append(attempt)
            t0 = time.perf_counter()
            try:
                response = await poster.post_json("/embeddings", body)
            except UpstreamError as exc:
                attempt.latency_ms = (time.perf_counter() - t0) * 1000
                attempt.status, attempt.error = "error", exc.message
                wait = policy.delay(i, exc.retry_after) if exc.retryable and i < policy.max_retries else None
                if wait is None:
                    raise
                await asyncio.sleep(wait)
                continue
            except (asyncio.CancelledError, Exception):
                # Deadline, departed client or an untranslated provider fault: the provider had
                # the input and may bill it, so the attempt is priced at its offline count.
                attempt.latency_ms = (time.perf_counter() - t0) * 1000
                self._price(attempt, info, body, {})
                attempt.status, attempt.error = "error", "cancelled or failed in flight"
                raise
            attempt.latency_ms = (time.perf_counter() - t0) * 1000
            self._price(attempt, info, body, response)
            return response
        raise AssertionError("unreachable: the last try returns or raises")  # pragma: no cover

    @staticmethod
    def _price(attempt: Attempt, info: ModelInfo, body: dict[str, Any], response: dict[str, Any]) -> None:
        raw = response.get("usage")
        usage = Usage.from_openai(raw)
        reported = isinstance(raw, dict) and isinstance(raw.get("prompt_tokens"), int) and raw["prompt_tokens"] > 0
        # Embeddings have no output tokens, whatever total_tokens - prompt_tokens suggests.
        usage = Usage(prompt_tokens=usage.prompt_tokens if reported else count_input(body["input"]),
                      cost=usage.cost)
        cost = call_cost(usage, info.price)
        attempt.usage, attempt.cost_usd = usage, cost.usd
        attempt.cost_source = "estimated" if not reported and cost.source == "computed" else cost.source


def embeddings_handler(gateway: Gateway) -> Any:
    """The Starlette endpoint for ``POST /v1/embeddings`` (and ``/embeddings``)."""
    from thrifty.server.app import read_json_body, tenant_of  # app.py imports this module

    limit = gateway.config.server.max_body_bytes
    budget = gateway.ops.budget_stage  # a key's budget and rate limits, when virtual keys are on
    # The chat pipeline's ledger and deadline stages, bound like the gateway's own (gateway.py).
    pipeline = compose([LedgerStage(gateway.ledger.submit if gateway.ledger else None, gateway.observers),
                        DeadlineStage(gateway.config.server.request_timeout_s),
                        *([budget] if budget else []), EmbeddingsCall(gateway)])

    async def endpoint(request: Request) -> Response:
        request_id = new_request_id()
        t0 = time.perf_counter()
        try:
            body = await read_json_body(request, limit)
            model, value = validate(body)
            # The chat request a key check, the budget and the request log read: the model, and the
            # text inputs as one user message each (so a budget's estimate counts them).
            texts = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)]
            stand_in = ChatRequest(model=model, messages=[{"role": "user", "content": t} for t in texts],
                                   params={"max_tokens": 1})  # no output tokens; the estimate needs >= 1
            auth = getattr(gateway, "authenticate", None)
            key_id, tenant = (await auth(request, stand_in)) if auth else (None, tenant_of(request))
            ctx = RequestContext(request=stand_in, key_id=key_id, tenant=tenant, request_id=request_id,
                                 task=request.headers.get("x-thrifty-task"), strategy=STRATEGY)
            ctx.scratch["embeddings_body"] = body
            await pipeline(ctx)
        except Exception as exc:
            return handler_error(exc, request_id, gateway.redactor)
        headers = {**request_id_headers(request_id), "x-thrifty-model": ctx.served_model or model}
        if ctx.cost_usd is not None:
            headers["x-thrifty-cost-usd"] = f"{ctx.cost_usd:.8f}"
        headers["x-thrifty-latency-ms"] = f"{(time.perf_counter() - t0) * 1000:.1f}"
        return FastJSONResponse(ctx.response, headers=headers)

    return endpoint


def embeddings_routes(gateway: Gateway) -> list[Route]:
    endpoint = embeddings_handler(gateway)
    return [Route("/v1/embeddings", endpoint, methods=["POST"]), Route("/embeddings", endpoint, methods=["POST"])]
