"""``POST /v1/responses`` with ``model: "auto"`` or ``"route:NAME"``: served by the chat pipeline.

The request is translated to a chat completion (server/responses_chat.py) and run by
``gateway.handle`` exactly as ``POST /v1/chat/completions`` runs one, so routing, cascades,
caches, compression, budgets, virtual keys and the ledger all apply; the answer goes back as a
Responses object, a stream as Responses events converted as the chunks arrive
(server/responses_stream.py). A request naming a catalog model is not touched: it stays the
passthrough of server/passthrough.py (the provider's own semantics, stored responses, built-in
tools). The passthrough handler asks ``routed_handler`` first (``Endpoint.routed``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from thrifty.fastjson import FastJSONResponse
from thrifty.server.http_errors import handler_error
from thrifty.server.passthrough import guarded
from thrifty.server.responses_chat import chat_body, response_object, shell, unknown_fields
from thrifty.server.responses_stream import StreamTranslator
from thrifty.types import ChatRequest

if TYPE_CHECKING:
    from thrifty.gateway import Gateway

log = logging.getLogger("thrifty.server")

# (request, its JSON body, request id, perf_counter at arrival) -> the answer, or None: not routed.
RoutedServe = Callable[[Request, Any, str, float], Awaitable[Response | None]]


def is_routed(gateway: Gateway, body: Any) -> bool:
    """Whether ``body`` asks for ``auto`` or a route (a catalog model of that name wins, as on chat)."""
    model = body.get("model") if isinstance(body, dict) else None
    return (isinstance(model, str) and (model == "auto" or model.startswith("route:"))
            and gateway.catalog.get(model) is None)


def routed_handler(gateway: Gateway) -> RoutedServe:
    """Serves a routed Responses request through the chat pipeline (None for any other body)."""
    # Imported here: app.py imports the passthrough module, which imports this one's caller.
    from thrifty.server.app import chat_headers, run_chat

    async def serve(request: Request, body: Any, request_id: str, t0: float) -> Response | None:
        if not is_routed(gateway, body):
            return None
        try:
            chat = ChatRequest.from_body(chat_body(body))
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
