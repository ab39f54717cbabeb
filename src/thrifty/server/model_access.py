"""Which models a ``GET /v1/models`` caller may see: with virtual keys on, a valid key's own.

The model list names every model, alias and route of the gateway; with authentication on it is
as private as the rest of the API. A request without a valid key gets the 401 chat would give
(the authenticator's own message and refusal metric), and a key limited to some models or
routes sees only those (what it could call without a 403). The same key check refuses a request
without a valid key before its body is read (``key_refusal``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from thrifty.errors import PermissionDeniedError, ThriftyError
from thrifty.server.http_errors import handler_error
from thrifty.types import ChatRequest

if TYPE_CHECKING:
    from thrifty.gateway import Gateway
    from thrifty.ops.keys import VirtualKey


def _asking_for(name: str) -> ChatRequest:
    """A request naming ``name``: all a key check reads of a request is its model."""
    return ChatRequest(model=name, messages=[{"role": "user", "content": ""}])


async def checked_key(gateway: Gateway, request: Request) -> VirtualKey | None:
    """The caller's virtual key, from the headers alone: None without the built-in authenticator
    (only it reads keys from headers alone; a custom hook is asked with the parsed request), the
    key when it is active, else the authenticator's ``AuthenticationError`` for a missing, unknown
    or revoked key (its own message and refusal metric).

    Asked of the authenticator itself (``key_of``), which keeps the key for the rest of the
    request: its model check once the body is read does not look the key up a second time."""
    key_of = getattr(getattr(gateway, "authenticate", None), "key_of", None)  # ops/auth.py's Authenticator
    if key_of is None:
        return None
    key: VirtualKey = await key_of(request)
    return key


async def key_refusal(gateway: Gateway, request: Request, request_id: str) -> Response | None:
    """The refusal (its connection closed) of a request whose headers carry no valid key, else
    None: checked before the body is read, so a client without a key does not hold a connection
    while it trickles a body. Which models the key may call is checked once the body names one
    (``gateway.authenticate``)."""
    try:
        await checked_key(gateway, request)
    except ThriftyError as exc:
        refused = handler_error(exc, request_id, gateway.redactor)
        # Its body is unread: closing stops the client trickling it in to keep the connection.
        refused.headers["connection"] = "close"
        return refused
    return None


async def filter_models(gateway: Gateway, request: Request, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The model ``objects`` (each with an ``id``: a model, alias, ``auto`` or ``route:NAME``) the
    caller may see; every one without authentication. Raises the authenticator's
    ``AuthenticationError`` for a missing, unknown or revoked key."""
    auth = getattr(gateway, "authenticate", None)
    if auth is None:
        return objects
    key = await checked_key(gateway, request)
    if key is not None:
        return [o for o in objects if key.allows(o["id"])]
    # A custom hook: asked about each name; a bad key raises on the first.
    visible = []
    for obj in objects:
        try:
            await auth(request, _asking_for(obj["id"]))
        except PermissionDeniedError:
            continue
        visible.append(obj)
    return visible
