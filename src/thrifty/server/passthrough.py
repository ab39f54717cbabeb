"""OpenAI endpoints passed through to the model's provider, authenticated and recorded.

``POST /v1/responses`` and the legacy ``POST /v1/completions`` (server/responses_api.py,
server/completions_legacy.py) are served as embeddings are (server/embeddings.py): apps call
``client.responses.create`` / ``client.completions.create`` on the same client as chat, so
thrifty serves them rather than making them keep a second client. Nothing is routed, cached or
compressed: the request goes to the catalog model asked for (aliases resolve; ``auto`` and
routes pick chat models, so they are unknown here) under its upstream name, and the provider's
answer comes back unchanged, a stream event by event (a whole JSON answer from a provider that
ignored ``stream`` is turned into the events it would have sent: ``Endpoint.whole_stream``).
No fallbacks (another model would answer a request written for this one, and a Responses
conversation lives at one provider); retries follow the provider's policy, for a stream until
its first event as on chat.

Each endpoint is an ``Endpoint``: how to check a body and read it as a chat request (what key
checks, budgets and the request log read), the upstream body, how to read usage and answer
text from a response or a stream's events, and (the Responses API) the id a provider keeps an
answer under, remembered before the client sees it (server/stored_responses.py). It runs in a small pipeline of the chat pipeline's
own stages (ledger, deadline, the key's budget when virtual keys are on) around one call stage,
so each request that gets past the body and key checks leaves exactly one ``requests`` row
(strategy: the endpoint's name; its baseline is its own cost, so no saving is claimed) plus one
``attempts`` row per upstream call, failures included, and observers see it like any other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from thrifty.errors import (
    InvalidRequestError,
    NotFoundError,
    ThriftyError,
    UpstreamError,
    UpstreamProtocolError,
)
from thrifty.fastjson import FastJSONResponse
from thrifty.pipeline.accounting import price_attempt
from thrifty.pipeline.build import compose
from thrifty.pipeline.caller import RetryPolicy
from thrifty.pipeline.context import Attempt, Handler, RequestContext, new_request_id
from thrifty.pipeline.deadline import DeadlineStage
from thrifty.pipeline.ledger_stage import LedgerStage
from thrifty.providers.compat import CompatConfig
from thrifty.providers.error_body import answer_error
from thrifty.providers.raw_http import SSEEvent, open_events, streams
from thrifty.responses_events import BuiltEvent
from thrifty.server.body import read_json_body
from thrifty.server.http_errors import handler_error
from thrifty.server.model_access import key_refusal
from thrifty.types import THRIFTY_BODY_KEYS, ChatRequest

if TYPE_CHECKING:
    from thrifty.catalog import ModelInfo
    from thrifty.gateway import Gateway

log = logging.getLogger("thrifty.server")

_BODY = "passthrough.body"
# Words per delta when a whole answer is streamed from here (Endpoint.whole_stream): a stream's
# pace, about the 64 characters chat cuts such an answer at (streaming.response_to_chunks).
WHOLE_WORDS = 10


@runtime_checkable
class JSONPoster(Protocol):
    """A provider that can POST any OpenAI-style JSON endpoint (``OpenAICompatProvider``)."""

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]: ...


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def request_body(ctx: RequestContext) -> dict[str, Any]:
    """The body the client sent to a passthrough endpoint (as read, before ``upstream_body``)."""
    body: dict[str, Any] = ctx.scratch[_BODY]
    return body


def checked_stream(body: dict[str, Any]) -> bool:
    """The body's ``stream`` flag (absent or null: false), refused when it is not a boolean."""
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequestError("'stream' must be a boolean.", param="stream")
    return bool(stream)


@dataclass
class StreamState:
    """What a stream's events said so far: its usage, its answer text, whether its last event
    came, and the failure it reported (a ``response.failed`` or an error event)."""

    usage: Any = None
    service_tier: Any = None  # the tier the provider says served the stream (priced at it)
    texts: list[str] = field(default_factory=list)
    final: bool = False
    failure: str | None = None
    settled: bool = False  # the attempt has been priced and the request settled
    stored_id: str | None = None  # the id the provider keeps the response under (Endpoint.stored_id)
    remembered: bool = False  # Endpoint.remember has been told about stored_id


class Endpoint:
    """One passed-through OpenAI endpoint; subclasses fill in the wire details."""

    name: str = ""  # the ledger's strategy and attempt purpose
    path: str = ""  # appended to the provider's base_url
    answer: str = ""  # the array an answer always has (``data``, ``choices``...); "" for none
    # Fields a provider's ``compat.drop_params`` never removes: the call would change meaning.
    essential: frozenset[str] = frozenset({"model", "stream"})

    def parse(self, body: Any) -> ChatRequest:
        """Check the body (``InvalidRequestError`` naming the field) and read it as a chat
        request: the model, its text as messages and its output limit (``max_tokens``)."""
        raise NotImplementedError

    def upstream_body(self, body: dict[str, Any], upstream_model: str, compat: CompatConfig | None) -> dict[str, Any]:
        # thrifty's own body keys (``thrifty``, ``cache``) are for the gateway: a provider refuses
        # a parameter it does not know (OpenAI: 400 "Unrecognized request argument").
        out = {**{k: v for k, v in body.items() if k not in THRIFTY_BODY_KEYS}, "model": upstream_model}
        if compat is not None:
            out = {k: v for k, v in out.items() if k in self.essential or k not in compat.drop_params}
        return out

    def wants_usage(self, body: dict[str, Any]) -> bool:
        """Whether the client asked for the stream's usage (the stream may carry it anyway)."""
        return True

    def price(self, attempt: Attempt, info: ModelInfo, request: ChatRequest, body: dict[str, Any],
              raw_usage: Any, text: str, service_tier: Any = None) -> None:
        """Price ``attempt`` from the provider's usage (None: it sent none) and the answer text.

        The chat path's pricing (priced_usage): the provider's usage as it is (Usage.from_openai
        reads the Responses API's input_tokens / output_tokens and their details too); what it
        left out is counted offline, the prompt from the request read as chat messages and the
        answer from its text, handed over in a chat completion's shape, with the tokenizer of the
        model that answered. ``service_tier``: the tier the provider's answer names (priced at it)."""
        response: dict[str, Any] = {"choices": [{"message": {"content": text}}]} if text else {}
        if service_tier is not None:
            response["service_tier"] = service_tier
        price_attempt(attempt, raw_usage, request, response, info.price, model=info.upstream_model)

    def reported_error(self, provider: str, response: dict[str, Any],
                       redact: Callable[[str], str]) -> UpstreamError | None:
        """The error for one the provider put in a 200 body in place of the answer (OpenRouter
        does once the model started), or None. Relayed as it was, the SDK returned an object
        full of None and the ledger a success."""
        return answer_error(provider, response, redact, self.answer) if self.answer else None

    def explain(self, exc: UpstreamError, info: ModelInfo) -> None:
        """Add to ``exc``'s message what the gateway's operator can do about it (nothing by default)."""

    def answer_text(self, response: dict[str, Any]) -> str:
        """Everything in a response that bills as output (counted when usage is missing)."""
        raise NotImplementedError

    def watch(self, event: SSEEvent, state: StreamState) -> None:
        """Note what ``event`` tells about usage, answer text and the end of the stream."""
        raise NotImplementedError

    def client_bytes(self, event: SSEEvent, wants_usage: bool) -> bytes | None:
        """What the client gets for ``event`` (None: nothing): the event unchanged by default."""
        return event.raw

    def whole_stream(self, body: Any) -> Iterable[BuiltEvent] | None:
        """The events a stream of this endpoint carries for ``body``, a whole answer sent as one
        JSON object by a provider that ignored ``stream``; None when ``body`` is no such answer
        (it is then read as an error). Relayed and priced like the provider's own events."""
        return None

    def error_event(self, exc: ThriftyError) -> bytes:
        """The event that ends a stream broken after it started, so SDKs raise."""
        raise NotImplementedError

    def stream_error(self, exc: ThriftyError, sent: int) -> bytes:
        """The event that ends a stream broken after ``sent`` events: ``error_event``, unless
        the API numbers its events (the Responses API's ``sequence_number``)."""
        return self.error_event(exc)

    async def check(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        """Checks that need the caller (``ctx.tenant``), made before the upstream call."""

    def stages(self, gateway: Gateway) -> list[Any]:
        """Stages of this endpoint's own, run inside the ledger, deadline and budget stages and
        around the upstream call (the embeddings cache: server/embeddings.py); none by default."""
        return []

    def stored_id(self, response: dict[str, Any]) -> str | None:
        """The id the provider keeps ``response`` under for later calls (None: it keeps nothing)."""
        return None

    async def remember(self, ctx: RequestContext, attempt: Attempt, stored_id: str) -> None:
        """The provider keeps the answer of ``attempt`` under ``stored_id``; awaited before the
        client sees the id."""

    def routed(self, gateway: Gateway) -> Callable[[Request, Any, str, float], Awaitable[Response | None]] | None:
        """Serves the bodies this endpoint runs through the chat pipeline instead of passing them
        through (the Responses API's ``auto``, routes and the models of a provider with
        ``compat.responses: chat``: server/responses_routed.py), answering None for the others;
        None: every body is passed through."""
        return None


class PassthroughCall:
    """The innermost stage: one catalog model, its provider's endpoint, with retries."""

    def __init__(self, gateway: Gateway, endpoint: Endpoint) -> None:
        self.gateway = gateway
        self.endpoint = endpoint

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> None:
        body: dict[str, Any] = ctx.scratch[_BODY]
        info = self.model(ctx.request.model)
        await self.endpoint.check(ctx, body)
        provider = self.gateway.providers[info.provider]
        cfg = self.gateway.config.providers.get(info.provider)
        upstream = self.endpoint.upstream_body(body, info.upstream_model, cfg.compat if cfg else None)
        policy = self.gateway.caller.retry_policy(info.provider)
        if ctx.request.stream:
            if not streams(provider):
                raise self._unsupported(info, "streamed ")
            await self._open_stream(ctx, provider, info, upstream, policy)
        else:
            if not isinstance(provider, JSONPoster):
                raise self._unsupported(info, "")
            ctx.response = await self._call(ctx, provider, info, upstream, policy)
            self._settle(ctx, ctx.attempts[-1])
            stored = self.endpoint.stored_id(ctx.response)
            if stored:
                await self.endpoint.remember(ctx, ctx.attempts[-1], stored)
        ctx.served_model, ctx.served_tier = info.name, info.tier  # as on chat: only once it answered

    def _unsupported(self, info: ModelInfo, how: str) -> InvalidRequestError:
        return InvalidRequestError(f"The model '{info.name}' is served by provider '{info.provider}', which has no "
                                   f"{how}{self.endpoint.path} endpoint.", param="model", code="unsupported_endpoint")

    def model(self, asked: str) -> ModelInfo:
        info = self.gateway.catalog.get(asked)
        if info is None:
            known = sorted(m.name for m in self.gateway.catalog)
            why = ""
            if asked == "auto" or asked.startswith("route:"):
                why = f" 'auto' and routes choose chat models; {self.endpoint.path} needs a catalog model or alias."
            raise NotFoundError(f"The model '{asked}' does not exist.{why} Available models: {', '.join(known)}.",
                                param="model")
        return info

    def _attempt(self, ctx: RequestContext, info: ModelInfo) -> Attempt:
        attempt = Attempt(model=info.name, provider=info.provider, started=time.time(), tier=info.tier,
                          purpose=self.endpoint.name)
        ctx.attempts.append(attempt)
        return attempt

    async def _call(self, ctx: RequestContext, poster: JSONPoster, info: ModelInfo, body: dict[str, Any],
                    policy: RetryPolicy) -> dict[str, Any]:
        for i in range(policy.max_retries + 1):
            attempt = self._attempt(ctx, info)
            t0 = time.perf_counter()
            try:
                response = await poster.post_json(self.endpoint.path, body)
                reported = self.endpoint.reported_error(info.provider, response, self.gateway.redactor)
                if reported is not None:
                    raise reported
            except UpstreamError as exc:
                await self._failed(ctx, attempt, info, exc, t0, i, policy)
                continue
            except (asyncio.CancelledError, Exception):
                self._in_flight(ctx, attempt, info, t0)
                raise
            attempt.latency_ms = (time.perf_counter() - t0) * 1000
            self._price(ctx, attempt, info, response.get("usage"), self.endpoint.answer_text(response),
                        response.get("service_tier"))
            return response
        raise AssertionError("unreachable: the last try returns or raises")  # pragma: no cover

    async def _failed(self, ctx: RequestContext, attempt: Attempt, info: ModelInfo, exc: UpstreamError, t0: float,
                      i: int, policy: RetryPolicy) -> None:
        """Record a failed try; wait before the next one, or re-raise when there is none. A try
        the provider accepted and then lost on the way back (``UpstreamError.billed``) is priced
        at its prompt, as chat's are: the provider ran it and bills it."""
        attempt.latency_ms = (time.perf_counter() - t0) * 1000
        self.endpoint.explain(exc, info)
        if exc.billed:
            self._price(ctx, attempt, info, None, "")
        attempt.status, attempt.error = "error", exc.message
        wait = policy.wait_after(i, exc)
        if wait is None:
            raise exc
        await asyncio.sleep(wait)

    def _in_flight(self, ctx: RequestContext, attempt: Attempt, info: ModelInfo, t0: float) -> None:
        # Deadline, departed client or an untranslated provider fault: the provider had the
        # input and may bill it, so the attempt is priced at its offline prompt count.
        attempt.latency_ms = (time.perf_counter() - t0) * 1000
        self._price(ctx, attempt, info, None, "")
        attempt.status, attempt.error = "error", "cancelled or failed in flight"

    async def _open_stream(self, ctx: RequestContext, provider: Any, info: ModelInfo, body: dict[str, Any],
                           policy: RetryPolicy) -> None:
        """Open the stream and wait for its first event (retried until then); the rest is relayed."""
        for i in range(policy.max_retries + 1):
            attempt = self._attempt(ctx, info)
            t0 = time.perf_counter()
            events = open_events(provider, self.endpoint.path, body, self.endpoint.whole_stream)
            try:
                first: SSEEvent | None = await events.__anext__()
            except StopAsyncIteration:
                first = None
            except UpstreamError as exc:
                await events.aclose()
                await self._failed(ctx, attempt, info, exc, t0, i, policy)
                continue
            except (asyncio.CancelledError, Exception):
                await events.aclose()
                self._in_flight(ctx, attempt, info, t0)
                raise
            self._start_relay(ctx, info, attempt, first, events, t0)
            return
        raise AssertionError("unreachable: the last try returns or raises")  # pragma: no cover

    def _start_relay(self, ctx: RequestContext, info: ModelInfo, attempt: Attempt, first: SSEEvent | None,
                     events: AsyncGenerator[SSEEvent, None], t0: float) -> None:
        state = StreamState()
        relay = self._relay(ctx, attempt, info, first, events, t0, state)

        async def close(done: RequestContext) -> None:
            # A client that left (or a relay never started): price what was sent before the row is written.
            await relay.aclose()
            await self._finish(done, attempt, info, events, t0, state)

        # First: the key's budget settles (its finalizer) at the cost this one prices.
        ctx.finalizers.insert(0, close)
        ctx.chunks = relay

    async def _relay(self, ctx: RequestContext, attempt: Attempt, info: ModelInfo, first: SSEEvent | None,
                     events: AsyncGenerator[SSEEvent, None], t0: float,
                     state: StreamState) -> AsyncGenerator[dict[str, Any], None]:
        """The events to the client as ``{"sse": bytes}``; the attempt is priced when it ends."""
        wants = self.endpoint.wants_usage(ctx.scratch[_BODY])
        try:
            event = first
            while event is not None:
                self.endpoint.watch(event, state)
                if state.stored_id and not state.remembered:
                    state.remembered = True
                    await self.endpoint.remember(ctx, attempt, state.stored_id)
                out = self.endpoint.client_bytes(event, wants)
                if out:
                    yield {"sse": out}
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:
                    event = None
            if not state.final:
                raise UpstreamProtocolError(f"{info.provider}: stream ended before its last event (truncated)")
        except UpstreamError as exc:
            attempt.status, attempt.error = "error", exc.message
            raise
        finally:
            await self._finish(ctx, attempt, info, events, t0, state)

    async def _finish(self, ctx: RequestContext, attempt: Attempt, info: ModelInfo,
                      events: AsyncGenerator[SSEEvent, None], t0: float, state: StreamState) -> None:
        """Price the stream's attempt from what its events said and settle the request (once)."""
        if state.settled:
            return
        state.settled = True
        attempt.latency_ms = (time.perf_counter() - t0) * 1000
        self._price(ctx, attempt, info, state.usage, "".join(state.texts), state.service_tier)
        if state.failure is not None and attempt.status == "ok":
            # The provider ended the stream with a failure the client has seen as an event.
            attempt.status, attempt.error = "error", state.failure
            ctx.status, ctx.error_type, ctx.error = "error", "UpstreamError", state.failure
        self._settle(ctx, attempt)
        await events.aclose()

    def _price(self, ctx: RequestContext, attempt: Attempt, info: ModelInfo, raw_usage: Any, text: str,
               service_tier: Any = None) -> None:
        self.endpoint.price(attempt, info, ctx.request, ctx.scratch[_BODY], raw_usage, text, service_tier)

    @staticmethod
    def _settle(ctx: RequestContext, served: Attempt) -> None:
        ctx.usage = served.usage
        ctx.served_service_tier = served.service_tier  # the request row's tier, as chat's settle records it
        ctx.cost_usd = ctx.spent_usd()
        ctx.baseline_cost_usd = served.cost_usd  # a passthrough: the baseline is the same call


def passthrough_handler(gateway: Gateway, endpoint: Endpoint) -> Any:
    """The Starlette endpoint serving ``endpoint``."""
    # Imported here: app.py imports this module.
    from thrifty.server.app import caller_of, chat_headers, forwarded_headers, started

    limit = gateway.config.server.max_body_bytes
    routed = endpoint.routed(gateway)
    budget = gateway.ops.budget_stage  # a key's budget and rate limits, when virtual keys are on
    # The chat pipeline's ledger and deadline stages, bound like the gateway's own (gateway.py).
    pipeline = compose([LedgerStage(gateway.ledger.submit if gateway.ledger else None, gateway.observers),
                        DeadlineStage(gateway.config.server.request_timeout_s),
                        *([budget] if budget else []), *endpoint.stages(gateway),
                        PassthroughCall(gateway, endpoint)])

    async def run(ctx: RequestContext) -> RequestContext:
        # Admitted by the gateway like a chat request, so close() waits for it (its stream too)
        # before it closes the provider connection and the ledger under it.
        await gateway.admit(ctx, pipeline)
        return ctx

    async def handler(request: Request) -> Response:
        request_id = new_request_id()
        t0 = time.perf_counter()
        refused = await key_refusal(gateway, request, request_id)
        if refused is not None:
            return refused
        try:
            gateway.check_open()  # refused before the body is read; admit() is what guarantees it
            body = await read_json_body(request, limit)
            if routed is not None and (answer := await routed(request, body, request_id, t0)) is not None:
                return answer
            stand_in = endpoint.parse(body)
            key_id, tenant = await caller_of(gateway, request, stand_in)
            ctx = RequestContext(request=stand_in, key_id=key_id, tenant=tenant, request_id=request_id,
                                 task=request.headers.get("x-thrifty-task"), strategy=endpoint.name,
                                 headers=forwarded_headers(request))  # cache controls (embeddings)
            ctx.scratch[_BODY] = body
            if await started(request, run(ctx), stand_in.stream, request_id) is None:
                return Response(status_code=499)  # the client left before the first byte
        except Exception as exc:
            return handler_error(exc, request_id, gateway.redactor)
        headers = chat_headers(ctx, t0, streamed=ctx.chunks is not None)
        headers.setdefault("x-thrifty-model", stand_in.model)  # the model asked, when none is recorded as served
        if ctx.chunks is not None:
            # The provider's events as sent ([DONE] included when it sent one).
            relayed = (chunk["sse"] async for chunk in ctx.chunks)
            return StreamingResponse(guarded(relayed, request_id, gateway.redactor, endpoint.stream_error),
                                     media_type="text/event-stream", headers=headers)
        return FastJSONResponse(ctx.response, headers=headers)

    return handler


async def guarded(events: AsyncIterator[bytes], request_id: str, redact: Callable[[str], str],
                  broke: Callable[[ThriftyError, int], bytes]) -> AsyncIterator[bytes]:
    """``events`` as they come; a stream that breaks ends with ``broke(error, sent)`` instead
    (``sent``: the events before it), so SDKs raise rather than return half an answer. The
    cause is logged (redacted); an unexpected exception, traceback and all, only there: the
    client gets an error naming the request id."""
    sent = 0
    try:
        async for event in events:
            yield event
            sent += 1
    except ThriftyError as exc:
        log.info("stream %s broke: %s", request_id, redact(exc.message))
        yield broke(exc, sent)
    except Exception:
        log.exception("stream %s: internal error", request_id)
        yield broke(ThriftyError(f"Internal error during the stream (request id {request_id})."), sent)


def passthrough_routes(gateway: Gateway, endpoint: Endpoint) -> list[Route]:
    """``POST /v1<path>`` and ``POST <path>`` (for clients whose base_url omits /v1)."""
    handler = passthrough_handler(gateway, endpoint)
    return [Route(f"/v1{endpoint.path}", handler, methods=["POST"]), Route(endpoint.path, handler, methods=["POST"])]
