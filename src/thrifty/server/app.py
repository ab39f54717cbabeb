"""ASGI app factory: the OpenAI-compatible routes in front of a Gateway.

Every error leaves as an OpenAI-format body with the right status (``ThriftyError.to_openai``);
an unexpected exception becomes a 500 that names the request id, with the traceback only in the
server log. Streams end with ``data: [DONE]``; a stream that breaks mid-way ends with an error
event instead, so OpenAI SDKs raise rather than return a silently truncated answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from thrifty import fastjson
from thrifty.cost import usd_header
from thrifty.errors import NotFoundError, ThriftyError
from thrifty.fastjson import FastJSONResponse
from thrifty.pipeline.context import RequestContext, new_request_id
from thrifty.server.body import BodyDeadline, read_json_body
from thrifty.server.completions_legacy import CompletionsEndpoint
from thrifty.server.credentials import tenant_credential
from thrifty.server.embeddings import embeddings_routes
from thrifty.server.http_errors import (
    error_response,
    handler_error,
    internal_error,
    not_found,
    request_id_headers,
)
from thrifty.server.model_access import filter_models, key_refusal
from thrifty.server.passthrough import passthrough_routes
from thrifty.server.reconcile import Reconciler
from thrifty.server.response_resources import ResponseResources, response_resource_routes
from thrifty.server.responses_api import ResponsesEndpoint
from thrifty.server.stored_responses import ResponseIndex
from thrifty.types import ChatRequest

if TYPE_CHECKING:
    from thrifty.gateway import Gateway

log = logging.getLogger("thrifty.server")
T = TypeVar("T")

# How long the shutdown waits for requests uvicorn cancelled at its graceful-shutdown bound to
# unwind and be recorded: they only have to run their cleanup (no provider waits), so seconds.
SHUTDOWN_UNWIND_S = 5.0
# Incoming headers the pipeline may read (others are not copied into the context).
_FORWARDED_HEADERS = frozenset(("x-thrifty-task", "x-thrifty-cache", "x-thrifty-route", "cache-control",
                                "x-thrifty-deferrable", "pragma"))


def forwarded_headers(request: Request) -> dict[str, str]:
    """The thrifty headers the pipeline reads, in one pass over the raw headers (names arrive lower-case)."""
    out: dict[str, str] = {}
    for name, value in request.headers.raw:
        key = name.decode("latin-1")
        if key in _FORWARDED_HEADERS:
            out[key] = value.decode("latin-1")
    return out


def tenant_of(request: Request) -> str:
    """Without virtual keys, the client's credential (hashed, never stored) scopes its cache, in
    whichever header it came (``credentials.tenant_credential``: the same key gives the same
    tenant; any other Authorization scheme, e.g. Basic behind an auth proxy, its own tenant)."""
    token = tenant_credential(request.headers)
    return "anon-" + hashlib.sha256(token.encode()).hexdigest()[:16] if token else "default"


async def run_chat(gateway: Gateway, request: Request, chat: ChatRequest, request_id: str) -> RequestContext | None:
    """``chat`` run by the gateway for ``request``'s caller (its virtual key or tenant, its thrifty
    headers), as POST /v1/chat/completions and a routed POST /v1/responses both run one; None
    when a stream's client left before the first byte (the ledger has its row: answer 499).
    Raises what the pipeline raises, for the handler to answer as an OpenAI error."""
    key_id, tenant = await caller_of(gateway, request, chat)
    work = gateway.handle(chat, headers=forwarded_headers(request), key_id=key_id, tenant=tenant,
                          request_id=request_id)
    return await started(request, work, chat.stream, request_id)


async def caller_of(gateway: Gateway, request: Request, chat: ChatRequest) -> tuple[str | None, str]:
    """The virtual key id and tenant ``chat`` runs for (``authenticate`` refuses a key that may
    not use its model); without virtual keys, no key and the credential's tenant."""
    auth = getattr(gateway, "authenticate", None)
    return (await auth(request, chat)) if auth else (None, tenant_of(request))


async def started(request: Request, work: Coroutine[Any, Any, RequestContext], stream: bool,
                  request_id: str) -> RequestContext | None:
    """``work``'s context; for a stream, None (logged) when its client left before the first
    byte (``_unless_disconnected``): the handler answers 499, the ledger has the row."""
    ctx = await work if not stream else await _unless_disconnected(request, work)
    if ctx is None:
        log.info("request %s: client disconnected before the response started", request_id)
    return ctx


def chat_headers(ctx: RequestContext, t0: float, streamed: bool) -> dict[str, str]:
    """The headers of ``ctx``'s answer: the request id, the pipeline's (``x-thrifty-cache``...),
    the model that served it; a whole answer's cost and latency (``t0``: perf_counter at
    arrival), which a stream does not know when its headers go."""
    headers = {**request_id_headers(ctx.request_id), **ctx.response_headers}
    if ctx.served_model:
        headers["x-thrifty-model"] = ctx.served_model
    if streamed:
        headers["cache-control"] = "no-cache"
        return headers
    if ctx.cost_usd is not None:
        headers["x-thrifty-cost-usd"] = usd_header(ctx.cost_usd)
    headers["x-thrifty-latency-ms"] = f"{(time.perf_counter() - t0) * 1000:.1f}"
    return headers


def create_app(gateway: Gateway) -> Starlette:
    limit = gateway.config.server.max_body_bytes
    # Which provider holds each stored response, and whose it is (ops/wiring.py: the ledger
    # database, shared by the instances using it; memory alone without a ledger or ops).
    responses_index = getattr(getattr(gateway, "ops", None), "responses", None) or ResponseIndex(None)
    resources = ResponseResources(gateway, responses_index)

    async def chat_completions(request: Request) -> Response:
        request_id = new_request_id()
        t0 = time.perf_counter()
        refused = await key_refusal(gateway, request, request_id)
        if refused is not None:
            return refused
        try:
            body = await read_json_body(request, limit)
            chat = ChatRequest.from_body(body)
            ctx = await run_chat(gateway, request, chat, request_id)
            if ctx is None:
                return Response(status_code=499)
        except Exception as exc:
            return handler_error(exc, request_id, gateway.redactor)
        if ctx.chunks is not None:
            return StreamingResponse(_sse(ctx.chunks, chat.include_usage, gateway, ctx.request_id),
                                     media_type="text/event-stream", headers=chat_headers(ctx, t0, streamed=True))
        return FastJSONResponse(ctx.response, headers=chat_headers(ctx, t0, streamed=False))

    def model_objects() -> list[dict[str, Any]]:
        """What a client may put in ``model``: models, their aliases and routes."""
        now = int(time.time())
        data: list[dict[str, Any]] = []
        for m in gateway.catalog:
            data.append({"id": m.name, "object": "model", "created": now, "owned_by": m.provider, "tier": m.tier})
        for alias, target in gateway.catalog.aliases().items():
            data.append({"id": alias, "object": "model", "created": now, "owned_by": "thrifty", "alias_of": target})
        routes = list(getattr(gateway, "route_names", lambda: [])())
        if not routes and gateway.config.default_model:
            routes = ["auto"]  # no routing section: `auto` is still accepted, served by default_model
        for route in routes:
            data.append({"id": route, "object": "model", "created": now, "owned_by": "thrifty-route"})
        return data

    async def models(request: Request) -> Response:
        # With virtual keys on, the list needs a valid key and shows what that key may call.
        request_id = new_request_id()
        try:
            data = await filter_models(gateway, request, model_objects())
        except Exception as exc:
            return handler_error(exc, request_id, gateway.redactor)
        # The request id on success too, as on every OpenAI answer (the SDK's `_request_id`).
        return JSONResponse({"object": "list", "data": data}, headers=request_id_headers(request_id))

    async def model(request: Request) -> Response:
        # GET /v1/models/{id}: what the OpenAI SDK's client.models.retrieve() calls.
        model_id = request.path_params["model_id"]
        request_id = new_request_id()
        try:
            visible = await filter_models(gateway, request, [o for o in model_objects() if o["id"] == model_id])
        except Exception as exc:
            return handler_error(exc, request_id, gateway.redactor)
        if visible:  # a model the key may not use is as unknown as one that does not exist, as at OpenAI
            return JSONResponse(visible[0], headers=request_id_headers(request_id))
        err = NotFoundError(f"The model '{model_id}' does not exist.", param="model")
        return error_response(err, request_id)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": len(gateway.catalog), "pipeline": gateway.describe()})

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", model, methods=["GET"]),
        # Without /v1 too, like /chat/completions: for clients whose base_url omits it.
        Route("/models", models, methods=["GET"]),
        Route("/models/{model_id:path}", model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        *embeddings_routes(gateway),  # POST /v1/embeddings and /embeddings (server/embeddings.py)
        # POST /v1/responses and /v1/completions, passed through (server/passthrough.py).
        *passthrough_routes(gateway, ResponsesEndpoint(responses_index)),
        # GET/DELETE /v1/responses/{id}, .../cancel, .../input_items (server/response_resources.py).
        *response_resource_routes(resources),
        *passthrough_routes(gateway, CompletionsEndpoint()),
    ]
    routes.extend(getattr(gateway, "extra_routes", []))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Background responses nobody retrieves are settled by a periodic pass
        # (server/reconcile.py; server.reconcile_background_s, 0 = off). It lives exactly as long
        # as the server: stopped here before the provider connections it uses are closed.
        server = gateway.config.server
        reconciler = Reconciler(resources, min_age_s=server.reconcile_background_min_age_s,
                                failure_level=logging.INFO)
        task = reconciler.start(server.reconcile_background_s)
        app.state.reconcile_task = task  # for a look at whether it runs (tests, a debugger)
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # Past its graceful-shutdown bound uvicorn cancels the requests still running and comes
        # straight here: let them unwind (their stream's provider call priced, the budget settled,
        # the row handed to the ledger) before their connections and the ledger close under them.
        if not await gateway.wait_idle(SHUTDOWN_UNWIND_S):
            log.warning("shutting down with %d request(s) still unwinding after %gs: they may go unrecorded",
                        gateway.running, SHUTDOWN_UNWIND_S)
        # Pooled upstream connections belong to the server's loop: close them on that loop.
        for provider in gateway.providers.values():
            await provider.aclose()
        # The last rows are written (or spilled) now: uvicorn ends the process with the signal it
        # caught as soon as this returns, before any exit hook could. In a thread, so the loop
        # is not blocked while a database that is down is tried once more.
        await asyncio.to_thread(gateway.flush, shutting_down=True)

    handlers = {404: not_found, 405: not_found, Exception: internal_error}
    # The body deadline wraps every route, admin's included (server/body.py).
    middleware = [*cors_middleware(gateway.config.server.cors_origins),
                  Middleware(BodyDeadline, timeout_s=gateway.config.server.body_timeout_s)]
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan, middleware=middleware)
    app.state.gateway = gateway
    return app


def cors_middleware(origins: list[str]) -> list[Middleware]:
    """Starlette's CORS handling for browser apps on ``origins`` (none when empty). Preflight
    requests are answered (DELETE too: a stored response's); the thrifty headers (request id,
    model, cost) are readable by scripts."""
    if not origins:
        return []
    exposed = ["x-request-id", "x-thrifty-request-id", "x-thrifty-model", "x-thrifty-cost-usd",
               "x-thrifty-cache", "x-thrifty-latency-ms"]
    return [Middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                       allow_headers=["*"], expose_headers=exposed, max_age=600)]


async def _unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T | None:
    """``work``'s result, or None when the client disconnects first (``work`` is cancelled).

    Why (streams only): until the upstream's first chunk arrives nothing watches the client
    (Starlette's StreamingResponse listens for a disconnect only once it exists), so a client that
    gave up kept a slow upstream call running, and paying, until its timeout. A non-streaming
    request runs to the end, as at the providers: its answer may still be cached and billed."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task  # the ledger stage records the request as it unwinds
    return None


async def _disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read by then, so the
    next ASGI message can only be the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _sse(
    chunks: AsyncIterator[dict[str, Any]], include_usage: bool, gateway: Gateway, request_id: str
) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            if not chunk.get("choices") and chunk.get("usage") and not include_usage:
                continue  # we asked upstream for usage to price the call; the client did not
            if not include_usage and "usage" in chunk and chunk.get("choices"):
                chunk = {k: v for k, v in chunk.items() if k != "usage"}
            yield b"data: " + fastjson.dumps(chunk) + b"\n\n"
    except ThriftyError as exc:
        log.info("stream %s broke: %s", request_id, gateway.redactor(exc.message))
        yield b"data: " + json.dumps(exc.to_openai()).encode() + b"\n\n"
        return
    except Exception:
        log.exception("stream %s: internal error", request_id)
        err = ThriftyError(f"Internal error during the stream (request id {request_id}).")
        yield b"data: " + json.dumps(err.to_openai()).encode() + b"\n\n"
        return
    yield b"data: [DONE]\n\n"
