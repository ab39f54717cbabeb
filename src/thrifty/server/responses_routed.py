"""``POST /v1/responses`` served by the chat pipeline: ``model: "auto"`` or ``"route:NAME"``, and a
catalog model whose provider has no Responses endpoint (``providers.NAME.compat.responses: chat``).

The request is translated to a chat completion (server/responses_chat.py) and run by
``gateway.handle`` exactly as ``POST /v1/chat/completions`` runs one, so routing, cascades,
caches, compression, budgets, virtual keys and the ledger all apply (a named model is simply
what routing resolves to); the answer goes back as a Responses object, a stream as Responses
events converted as the chunks arrive (server/responses_stream.py). A request naming a catalog
model of a ``native`` provider (the default) is not touched: it stays the passthrough of
server/passthrough.py (the provider's own semantics, stored responses, built-in tools). The
passthrough handler asks ``routed_handler`` first (``Endpoint.routed``); ``served_by_chat`` is
the one place that decides which requests are translated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from thrifty.errors import InvalidRequestError
from thrifty.fastjson import FastJSONResponse
from thrifty.server.http_errors import handler_error
from thrifty.server.passthrough import guarded
from thrifty.server.responses_chat import Unsupported, chat_body, response_object, shell, unknown_fields
from thrifty.server.responses_stream import StreamTranslator
from thrifty.types import ChatRequest

if TYPE_CHECKING:
    from thrifty.catalog import ModelInfo
    from thrifty.gateway import Gateway

log = logging.getLogger("thrifty.server")

# (request, its JSON body, request id, perf_counter at arrival) -> the answer, or None: not routed.
RoutedServe = Callable[[Request, Any, str, float], Awaitable[Response | None]]


def chat_only_model(gateway: Gateway, body: Any) -> ModelInfo | None:
    """The catalog model ``body`` names (an alias resolves) when its provider is set to serve the
    Responses API as chat (``compat.responses: chat``: it has no /responses endpoint), else None."""
    model = body.get("model") if isinstance(body, dict) else None
    info = gateway.catalog.get(model) if isinstance(model, str) else None
    if info is None:
        return None
    cfg = gateway.config.providers.get(info.provider)
    return info if cfg is not None and cfg.compat.responses == "chat" else None


def served_by_chat(gateway: Gateway, body: Any) -> bool:
    """Whether ``body`` is translated and run by the chat pipeline rather than passed through: it
    asks for ``auto`` or a route (a catalog model of that name wins, as on chat), or names a
    catalog model of a provider with ``compat.responses: chat``."""
    model = body.get("model") if isinstance(body, dict) else None
    routed = (isinstance(model, str) and (model == "auto" or model.startswith("route:"))
              and gateway.catalog.get(model) is None)
    return routed or chat_only_model(gateway, body) is not None


def _refused_for(info: ModelInfo, exc: Unsupported) -> InvalidRequestError:
    """``exc`` (what chat cannot carry) told for a named model: responses_chat.refused tells the
    client to name a catalog model, which this client did; its provider is what cannot carry it."""
    return InvalidRequestError(f"'{exc.param}' is not supported with model '{info.name}': its provider "
                               f"'{info.provider}' has no /responses endpoint (compat.responses: chat), so the "
                               f"request is served as a chat completion, which cannot carry it: {exc.why}.",
                               param=exc.param, code=exc.code)


def routed_handler(gateway: Gateway) -> RoutedServe:
    """Serves a Responses request through the chat pipeline when ``served_by_chat`` (None for any other body)."""
    # Imported here: app.py imports the passthrough module, which imports this one's caller.
    from thrifty.server.app import chat_headers, run_chat

    async def serve(request: Request, body: Any, request_id: str, t0: float) -> Response | None:
        if not served_by_chat(gateway, body):
            return None
        try:
            try:
                chat = ChatRequest.from_body(chat_body(body))
            except Unsupported as exc:
                named = chat_only_model(gateway, body)
                if named is None:
                    raise
                raise _refused_for(named, exc) from None
            if ignored := unknown_fields(body):
                log.debug("request %s: routed /responses ignores %s", request_id, ", ".join(ignored))
            created = int(time.time())
            ctx = await run_chat(gateway, request, chat, request_id)
            if ctx is None:
                return Response(status_code=499)
        except Exception as exc:
            return handler_error(exc, request_id, gateway.redactor)
        # The catalog model that answered (a stream's too: known before its first chunk is served).
        base = shell(body, ctx.request_id, created, ctx.served_model or chat.model)
        if ctx.chunks is not None:
            translator = StreamTranslator(base, ctx.request_id)
            return StreamingResponse(guarded(_events(ctx.chunks, translator), ctx.request_id, gateway.redactor,
                                             translator.error),
                                     media_type="text/event-stream", headers=chat_headers(ctx, t0, streamed=True))
        return FastJSONResponse(response_object(ctx.response or {}, base, ctx.request_id),
                                headers=chat_headers(ctx, t0, streamed=False))

    return serve


async def _events(chunks: AsyncIterator[dict[str, Any]], translator: StreamTranslator) -> AsyncIterator[bytes]:
    """The chat stream as Responses events (``guarded`` ends a broken one with an ``error``
    event, as OpenAI's does). No ``[DONE]``: the Responses API ends with its last event."""
    for event in translator.start():
        yield event
    async for chunk in chunks:
        for event in translator.feed(chunk):
            yield event
    for event in translator.finish():
        yield event
