"""A stored response's own endpoints, forwarded to the provider that holds it.

``GET /v1/responses/{id}`` (``client.responses.retrieve``; ``?stream=true`` replays a
background response's events), ``DELETE /v1/responses/{id}`` (``.delete``),
``POST /v1/responses/{id}/cancel`` (``.cancel``) and ``GET /v1/responses/{id}/input_items``
(``.input_items.list``), with and without ``/v1``. They name no model: the ``ResponseIndex``
(server/stored_responses.py) says which provider holds the id and whose it is. The caller is
authenticated as on every endpoint (with virtual keys, against the model that answered), and an
id thrifty did not pass through, or passed through for another tenant, gets the 404 OpenAI
gives for an unknown id (never a 403 that would confirm it exists). The query string
(``include[]``, ``after``, ``limit``, ``order``...) goes upstream as sent, the answer comes back
unchanged; retries follow the provider's policy (these calls are idempotent).

Not recorded in the ledger: they are not billed (no tokens), and a ``requests`` row each would
inflate the request counts, error rates and latencies that reports and the dashboard compute
over billable calls. For the same reason they do not count against a key's budget or rate
limits. Each is logged (one line, request id, method, provider, status). Each is still one of the
gateway's requests (``Gateway.admit``): ``close()`` waits for it, a replay until it ends, before it
closes the provider connection and the ledger an amendment (below) writes to.

One exception amends the ledger rather than adding to it: a ``background: true`` response is
created queued, without usage, so its create's rows hold an offline estimate. The first
retrieve (``GET``, or the final ``response.completed`` / ``incomplete`` / ``failed`` event of a
``?stream=true`` replay) or ``cancel`` that relays it finished (completed, incomplete, failed
or cancelled) with its usage prices that usage as the create would have been priced
(``ResponsesEndpoint.price``, the catalog model's price) and writes it over the estimate in
the create's ``requests`` and ``attempts`` rows, once (``ResponseIndex.amend``); a failed or
cancelled one without usage (cancelled while queued) is recorded at zero, a failed run makes
the request a failed one, and the key's budget counter gets the difference (``Ops.correct_spend``).
A response nobody retrieves is settled the same way by the reconciler (server/reconcile.py),
which fetches it as a retrieve would (``fetch``) and amends through ``settle``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from thrifty import fastjson
from thrifty.cost import priced_at
from thrifty.errors import (
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    UpstreamError,
    UpstreamStatusError,
    printable,
)
from thrifty.fastjson import FastJSONResponse
from thrifty.ledger.records import ERROR_CHARS
from thrifty.pipeline.caller import RetryPolicy
from thrifty.pipeline.context import Attempt, RequestContext, new_request_id
from thrifty.providers.openai_compat import OpenAICompatProvider
from thrifty.providers.raw_http import parse_event, relay_bytes
from thrifty.server.http_errors import error_response, handler_error, request_id_headers, unserved_message
from thrifty.server.responses_api import LAST_EVENTS, ResponsesEndpoint
from thrifty.server.responses_chat import ROUTED_PREFIX
from thrifty.server.stored_responses import Outcome, ResponseIndex, StoredResponse
from thrifty.types import ChatRequest, Usage

if TYPE_CHECKING:
    from thrifty.gateway import Gateway

log = logging.getLogger("thrifty.server")

# A background response's end states: its usage is final then.
TERMINAL = frozenset({"completed", "incomplete", "failed", "cancelled"})
# End states that may come without usage: then the provider billed nothing.
_UNRUN = frozenset({"failed", "cancelled"})
# The create's pricing (ResponsesEndpoint.price), reused for the usage a retrieve brings.
_PRICER = ResponsesEndpoint()
_EVENT_END = re.compile(rb"\r?\n\r?\n")
_LAST_TYPES = tuple(f'"{t}"'.encode() for t in LAST_EVENTS)  # as the JSON of their `type` has them
# A call here names no model and sends no chat: its RequestContext (for ``Gateway.admit``) carries
# this stand-in, and the Starlette request, the answer and the provider in ``scratch``.
_STAND_IN = ChatRequest(model="", messages=[{"role": "user", "content": ""}])
_REQUEST, _BODY, _PROVIDER = "resource_request", "resource_body", "resource_provider"


def unknown(response_id: str) -> NotFoundError:
    """OpenAI's 404 for an id it does not hold (the same for another tenant's). An id of a
    response served through ``auto`` or a route (``resp_`` + thrifty's request id:
    server/responses_chat.py) says why: no provider keeps such a response."""
    why = ""
    if response_id.startswith(ROUTED_PREFIX):
        why = (" Responses served through model 'auto' or a route are not stored (a chat model answered them); "
               "name a catalog model to store a response.")
    return NotFoundError(f"Response with id '{response_id}' not found.{why}", code="response_not_found")


async def _with_retries(policy: RetryPolicy, call: Any) -> Any:
    for i in range(policy.max_retries + 1):
        try:
            return await call()
        except UpstreamError as exc:
            wait = policy.wait_after(i, exc)
            if wait is None:
                raise
            await asyncio.sleep(wait)
    raise AssertionError("unreachable: the last try returns or raises")  # pragma: no cover


class ResponseResources:
    """The four endpoints, for one gateway and its ``ResponseIndex``."""

    def __init__(self, gateway: Gateway, index: ResponseIndex) -> None:
        self.gateway = gateway
        self.index = index

    async def _caller(self, request: Request, response_id: str) -> StoredResponse:
        """The entry of ``response_id`` if the caller may touch it, else ``unknown``; a missing
        or bad key still gets its 401 first."""
        from thrifty.server.app import tenant_of  # app.py imports this module

        entry = await self.index.find(response_id)
        auth = getattr(self.gateway, "authenticate", None)
        if auth is None:
            tenant = tenant_of(request)
        else:
            # The key is checked against the model that answered (what it would have to be allowed to
            # call): a key limited to other models sees the id as unknown, as its model list would.
            stand_in = ChatRequest(model=entry.model if entry else "auto", messages=[{"role": "user", "content": ""}])
            try:
                _, tenant = await auth(request, stand_in)
            except PermissionDeniedError:
                raise unknown(response_id) from None
        if entry is None or entry.tenant != tenant:
            raise unknown(response_id)
        return entry

    def _provider(self, entry: StoredResponse) -> OpenAICompatProvider:
        provider = self.gateway.providers.get(entry.provider)
        if provider is None:  # the config changed since: nothing holds the id any more, for this gateway
            raise unknown(entry.response_id)
        if not isinstance(provider, OpenAICompatProvider):
            raise InvalidRequestError(f"Response '{entry.response_id}' is held by provider '{entry.provider}', "
                                      "which has no HTTP endpoint to ask.", code="unsupported_endpoint")
        return provider

    def _upstream(self, entry: StoredResponse, suffix: str = "", query: str = ""
                  ) -> tuple[OpenAICompatProvider, str, RetryPolicy]:
        """The provider holding ``entry``, the URL of ``/responses/{id}<suffix>?<query>`` there,
        and the provider's retry policy: one place, so the reconciler asks exactly as a client's
        retrieve does."""
        provider = self._provider(entry)
        # provider.url keeps a base_url query (Azure's ?api-version=) after the path.
        path = f"responses/{quote(entry.response_id, safe='')}{suffix}"
        url = provider.url(f"{path}?{query}" if query else path)
        return provider, url, self.gateway.caller.retry_policy(entry.provider)

    async def fetch(self, entry: StoredResponse) -> Any:
        """``GET /responses/{id}`` at the provider holding ``entry``, with its retries (what a
        client's retrieve forwards): the response object. Raises as the endpoint's call does
        (``UpstreamStatusError`` 404 for a response the provider no longer holds; ``unknown``
        for a provider this config no longer has)."""
        provider, url, policy = self._upstream(entry)
        return await _with_retries(policy, lambda: provider.request_json("GET", url))

    def handler(self, method: str, suffix: str) -> Any:
        """The Starlette endpoint for ``method`` on ``/responses/{id}<suffix>``."""

        async def serve(ctx: RequestContext) -> None:
            """The call itself: its answer in ``ctx.scratch[_BODY]``, or a replay in ``ctx.chunks``."""
            request: Request = ctx.scratch[_REQUEST]
            response_id = request.path_params["response_id"]
            entry = await self._caller(request, response_id)
            provider, url, policy = self._upstream(entry, suffix, request.url.query)
            ctx.served_model, ctx.response_headers["x-thrifty-model"] = entry.model, entry.model
            ctx.scratch[_PROVIDER] = entry.provider
            if method == "GET" and not suffix and request.query_params.get("stream") == "true":
                ctx.chunks = await self._stream(provider, url, policy, entry, ctx.request_id)
                return
            body = await _with_retries(policy, lambda: provider.request_json(method, url))
            if (method, suffix) in (("GET", ""), ("POST", "/cancel")):
                await self.settle(entry, body, ctx.request_id)
            if method == "DELETE":
                await self.index.forget(response_id)
                body = body or {"id": response_id, "object": "response", "deleted": True}
            ctx.scratch[_BODY] = body

        async def endpoint(request: Request) -> Response:
            request_id = new_request_id()
            t0 = time.perf_counter()
            response_id = request.path_params["response_id"]
            ctx = RequestContext(request=_STAND_IN, request_id=request_id, scratch={_REQUEST: request})
            try:
                # Admitted like every request, so close() waits for it (a replay until it ends)
                # before it closes the provider connection and the ledger an amendment writes to.
                await self.gateway.admit(ctx, serve)
            except UpstreamStatusError as exc:
                if exc.upstream_status == 404:  # deleted or expired at the provider
                    return error_response(unknown(response_id), request_id)
                return handler_error(exc, request_id, self.gateway.redactor)
            except Exception as exc:
                return handler_error(exc, request_id, self.gateway.redactor)
            headers = {**request_id_headers(request_id), **ctx.response_headers}
            if ctx.chunks is not None:
                log.info("request %s: GET /responses/{id}?stream=true via %s", request_id, ctx.scratch[_PROVIDER])
                return StreamingResponse(_sse(ctx.chunks), media_type="text/event-stream",
                                         headers={**headers, "cache-control": "no-cache"})
            headers["x-thrifty-latency-ms"] = f"{(time.perf_counter() - t0) * 1000:.1f}"
            log.info("request %s: %s /responses/{id}%s via %s", request_id, method, suffix, ctx.scratch[_PROVIDER])
            return FastJSONResponse(ctx.scratch[_BODY], headers=headers)

        return endpoint

    async def settle(self, entry: StoredResponse, response: Any, request_id: str,
                     outcome: Outcome | None = None) -> None:
        """``_amend``, which must never fail a retrieve the provider answered: a fault is logged.
        The reconciler (server/reconcile.py) settles through here too, so both write the same
        rows, budget correction, /metrics and log line, under the same claim. ``outcome`` is
        ``self.outcome(entry, response)`` when the caller has it already (the reconciler), so the
        response is not priced twice."""
        try:
            await self._amend(entry, response, request_id, outcome)
        except Exception:
            log.exception("request %s: background response %s: its usage was not recorded", request_id,
                          entry.response_id)

    async def _amend(self, entry: StoredResponse, response: Any, request_id: str,
                     outcome: Outcome | None = None) -> None:
        """A finished background response's usage over its create's estimate (once), and the
        difference on its key's budget."""
        if outcome is None:
            outcome = self.outcome(entry, response)
        if outcome is None:
            return
        ledger = self.gateway.ledger
        amended = await self.index.amend(entry, outcome, ledger.flush if ledger is not None else None)
        if amended is None:
            return
        # The create's `thrifty.request` line holds its estimate: this line carries the create's
        # request id and the real figures as fields, so a log pipeline can replace them.
        log.info("request %s: background response %s %s; request %s amended to its usage (%s)",
                 request_id, entry.response_id, response["status"], entry.request_id,
                 "unknown cost" if outcome.cost_usd is None else f"${outcome.cost_usd:.6f}",
                 extra={"request_id": entry.request_id, "cost_usd": outcome.cost_usd,
                        "prompt_tokens": outcome.usage.prompt_tokens,
                        "completion_tokens": outcome.usage.completion_tokens,
                        "status": "error" if outcome.error is not None else "ok"})
        # /metrics counted the create at its estimate: it gets the difference, like the ledger.
        self.gateway.ops.metrics.amended(entry.model, amended.estimate_usd, amended.estimate_usage,
                                         outcome.cost_usd, outcome.usage, failed=outcome.error is not None)
        # The key's budget was settled with the estimate when the create ended. An unknown cost
        # on either side leaves it there: settle charged the reservation for an unknown one.
        if amended.estimate_usd is not None and outcome.cost_usd is not None and entry.key_id is not None:
            await self.gateway.ops.correct_spend(entry.key_id, entry.ts, outcome.cost_usd - amended.estimate_usd)

    def outcome(self, entry: StoredResponse, response: Any) -> Outcome | None:
        """What the finished ``response`` changes in the create's rows; None while it is not
        finished (or nothing can be said: no usage on a completed one, a model no longer priced).

        A failed or cancelled run that reports no usage consumed none that the provider bills
        (a response cancelled while queued never ran): it is recorded at zero, not at the
        estimate. A completed one without usage keeps the estimate: some OpenAI-compatible
        servers never report it."""
        if not entry.pending or not isinstance(response, dict) or response.get("status") not in TERMINAL:
            return None
        status, usage = response["status"], response.get("usage")
        failure = self._failure(response) if status == "failed" else None
        if not isinstance(usage, dict):
            # Set here, not priced: the pricer counts a usage it lacks offline (from the request).
            return Outcome(Usage(), 0.0, "computed", failure) if status in _UNRUN else None
        info = self.gateway.catalog.get(entry.model)
        if info is None:  # no longer in this gateway's catalog: nothing to price it at, the estimate stays
            return None
        attempt = Attempt(model=info.name, provider=info.provider, started=time.time(), purpose=_PRICER.name)
        stand_in = ChatRequest(model=info.name, messages=[{"role": "user", "content": ""}])  # the usage has the prompt
        with priced_at(_ran_at(response, entry)):  # an hourly price at the run's hour, not the settling one
            _PRICER.price(attempt, info, stand_in, {}, usage, _PRICER.answer_text(response), response.get("service_tier"))
        return Outcome(attempt.usage, attempt.cost_usd, attempt.cost_source, failure, attempt.service_tier)

    def _failure(self, response: dict[str, Any]) -> str:
        """The ledger's error text for a failed run: the provider's code and message, redacted."""
        error = response.get("error")
        if not isinstance(error, dict):
            return "the background run failed"
        text = f"{error.get('code') or 'error'}: {error.get('message') or ''}".strip()
        return self.gateway.redactor(printable(text))[:ERROR_CHARS]

    async def _stream(self, provider: OpenAICompatProvider, url: str, policy: RetryPolicy, entry: StoredResponse,
                      request_id: str) -> AsyncIterator[dict[str, Any]]:
        """The replay's events as ``{"sse": bytes}`` (a request's chunks, for ``Gateway.admit``)."""
        async def opened() -> AsyncGenerator[bytes, None]:
            events = relay_bytes(provider, url)
            try:
                await events.__anext__()  # the provider accepted it: errors so far are retryable or a status
            except BaseException:
                await events.aclose()
                raise
            return events

        events: AsyncGenerator[bytes, None] = await _with_retries(policy, opened)

        async def relay() -> AsyncIterator[dict[str, Any]]:
            final = _FinalEvent()
            try:
                async for chunk in events:
                    if entry.pending:
                        final.feed(chunk)
                    yield {"sse": chunk}
                if final.response is not None:
                    await self.settle(entry, final.response, request_id)
            except UpstreamError as exc:  # the client has part of it: end with the error event SDKs raise on
                log.info("stream %s broke: %s", request_id, self.gateway.redactor(exc.message))
                err = exc.to_openai()["error"]
                yield {"sse": b"event: error\ndata: " + fastjson.dumps({"type": "error", **err, "error": err}) + b"\n\n"}
            finally:
                await events.aclose()  # a client that left: the upstream connection goes back now

        return relay()


class _FinalEvent:
    """The response a replayed stream's last event (``LAST_EVENTS``) carries, found in its bytes
    however the network split them; only an unfinished event is buffered."""

    def __init__(self) -> None:
        self._tail = b""
        self.response: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> None:
        *done, self._tail = _EVENT_END.split(self._tail + chunk)
        for raw in done:
            if not any(t in raw for t in _LAST_TYPES):  # a delta or the like: not worth parsing
                continue
            try:
                data = parse_event(raw.splitlines(keepends=True), "upstream", True).data
            except UpstreamError:  # not JSON: the client sees it as sent, the ledger keeps its estimate
                continue
            if isinstance(data, dict) and data.get("type") in LAST_EVENTS and isinstance(data.get("response"), dict):
                self.response = data["response"]


async def _sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """The replay's bytes as relayed; the request ends with ``chunks`` (read, broken or dropped)."""
    async for chunk in chunks:
        yield chunk["sse"]


async def _unserved(request: Request) -> Response:
    """``POST /v1/responses/{x}``: no such OpenAI endpoint (``input_tokens``, ``compact``...)."""
    message = unserved_message(request.method, request.url.path) or "Not found."
    return error_response(NotFoundError(message, code="unsupported_endpoint"), new_request_id())


def _ran_at(response: dict[str, Any], entry: StoredResponse) -> datetime:
    """When the background run ended (the provider's ``completed_at``), else began
    (``created_at``), else the create's own time: what a price that varies in time is read at."""
    for key in ("completed_at", "created_at"):
        value = response.get(key)
        # A provider's nonsense (a string, NaN, a date past year 9999) falls through to the next.
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
                and 0 < value < 253_402_300_000:
            return datetime.fromtimestamp(value, UTC)
    return datetime.fromtimestamp(entry.ts, UTC)


def response_resource_routes(resources: ResponseResources) -> list[Route]:
    routes: list[Route] = []
    for prefix in ("/v1", ""):
        base = f"{prefix}/responses/{{response_id}}"
        routes += [Route(base, resources.handler("GET", ""), methods=["GET"]),
                   Route(base, resources.handler("DELETE", ""), methods=["DELETE"]),
                   Route(base, _unserved, methods=["POST"]),
                   Route(f"{base}/cancel", resources.handler("POST", "/cancel"), methods=["POST"]),
                   Route(f"{base}/input_items", resources.handler("GET", "/input_items"), methods=["GET"])]
    return routes
