"""OpenAI-format error responses for the HTTP edge, including requests no handler serves.

Everything a client receives from thrifty, even for a path it does not serve or a crash outside
a request handler, is an OpenAI error body (``{"error": {message, type, param, code}}``) that
OpenAI SDKs turn into their typed exceptions, never Starlette's plain text or HTML.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from thrifty.errors import MethodNotAllowedError, NotFoundError, ThriftyError, UpstreamError
from thrifty.pipeline.context import new_request_id

log = logging.getLogger("thrifty.server")

SERVED = ("chat completions (POST /v1/chat/completions), embeddings (POST /v1/embeddings), responses "
          "(POST /v1/responses; GET and DELETE /v1/responses/{id}, its /cancel and /input_items), legacy "
          "completions (POST /v1/completions) and the model list (GET /v1/models)")

# OpenAI API resources that apps using one client (one base_url) also call. thrifty proxies chat
# completions, embeddings, responses (with a stored response's GET/DELETE, /cancel and
# /input_items; any other path under responses/ is not served) and legacy completions, so these
# get a 404 that says so and names what is served, rather than a bare "no route" that reads like
# a misconfigured base_url. A 404, not a 501: OpenAI SDKs retry 5xx.
UNSERVED_RESOURCES = frozenset({
    "responses", "audio", "images", "moderations", "files", "uploads",
    "batches", "fine_tuning", "assistants", "threads", "vector_stores", "realtime", "conversations",
    # The openai SDK's other resources (client.containers, .evals, .videos...): their calls too are
    # told what is served, not "No route for ...".
    "containers", "evals", "videos", "skills", "chatkit", "agents", "vaults", "live", "safety", "decisions",
    "content_provenance_checks", "webhook_endpoints", "webhook_event_types", "organization", "projects",
})


def request_id_headers(request_id: str) -> dict[str, str]:
    """``x-request-id`` is what OpenAI SDKs expose as ``response._request_id`` and
    ``APIStatusError.request_id``; ``x-thrifty-request-id`` is the same id under thrifty's name
    (the ledger's request_id)."""
    return {"x-thrifty-request-id": request_id, "x-request-id": request_id}


def error_response(exc: ThriftyError, request_id: str) -> JSONResponse:
    headers = {**request_id_headers(request_id), **exc.headers()}
    if isinstance(exc, UpstreamError) and exc.status >= 500:
        # thrifty has already retried and fallen back (each provider's max_retries, fallbacks):
        # OpenAI SDKs retrying a 502/504 on top (twice by default) would triple the upstream calls
        # and the wait. 429s keep the SDK's Retry-After handling.
        headers["x-should-retry"] = "false"
    return JSONResponse(exc.to_openai(), status_code=exc.status, headers=headers)


def handler_error(exc: Exception, request_id: str, redact: Callable[[str], str]) -> JSONResponse:
    """The response for an exception a request handler caught: a ThriftyError as its OpenAI
    error (logged in one redacted line), anything else as a 500 naming the request id (the
    traceback logged; call this inside the ``except`` block)."""
    if isinstance(exc, ThriftyError):
        log.info("request %s failed: %s %s", request_id, exc.status, redact(exc.message))
        return error_response(exc, request_id)
    log.exception("request %s: internal error", request_id)
    return error_response(ThriftyError(f"Internal error (request id {request_id})."), request_id)


def unserved_message(method: str, path: str) -> str | None:
    """What to tell a client calling an OpenAI endpoint thrifty does not serve (None otherwise)."""
    parts = path.strip("/").split("/")
    if parts and parts[0] == "v1":
        parts = parts[1:]
    if parts[:2] == ["chat", "completions"] and len(parts) > 2:
        # client.chat.completions.retrieve/update/delete/messages.list: completions a provider
        # stored (`store: true`), only at that provider.
        what = "stored chat completions"
    elif parts and parts[0] in UNSERVED_RESOURCES:
        what = f"{parts[0]} requests"
    else:
        return None
    return (f"thrifty does not serve {method} {path}: it serves {SERVED}. Send {what} to the "
            "provider directly (a client with the provider's base_url).")


async def not_found(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405 (no route, or a route without this method) as OpenAI errors."""
    method, path = request.method, request.url.path
    if getattr(exc, "status_code", 404) == 405:
        allow = (getattr(exc, "headers", None) or {}).get("Allow", "")
        not_allowed = MethodNotAllowedError(
            f"{method} is not allowed on {path}" + (f" (allowed: {allow})." if allow else "."), allow=allow)
        return error_response(not_allowed, new_request_id())
    unserved = unserved_message(method, path)
    if unserved is not None:
        return error_response(NotFoundError(unserved, code="unsupported_endpoint"), new_request_id())
    err = NotFoundError(f"No route for {method} {path}; thrifty serves {SERVED}.", code="not_found")
    return error_response(err, new_request_id())


async def internal_error(request: Request, exc: Exception) -> Response:
    """An exception no handler caught (an extra route, a middleware): a 500 in OpenAI format
    naming the request id; the traceback stays in the server log."""
    request_id = new_request_id()
    log.error("request %s: unhandled %s on %s %s", request_id, type(exc).__name__, request.method, request.url.path)
    return error_response(ThriftyError(f"Internal error (request id {request_id})."), request_id)
