"""Which models a ``GET /v1/models`` caller may see: with virtual keys on, a valid key's own.

The model list names every model, alias and route of the gateway; with authentication on it is
as private as the rest of the API. A request without a valid key gets the 401 chat would give
(the authenticator's own message and refusal metric), and a key limited to some models or
routes sees only those (what it could call without a 403).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from thrifty.errors import AuthenticationError, PermissionDeniedError
from thrifty.server.credentials import client_key
from thrifty.types import ChatRequest

if TYPE_CHECKING:
    from thrifty.gateway import Gateway


def _asking_for(name: str) -> ChatRequest:
    """A request naming ``name``: all a key check reads of a request is its model."""
    return ChatRequest(model=name, messages=[{"role": "user", "content": ""}])


async def filter_models(gateway: Gateway, request: Request, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The model ``objects`` (each with an ``id``: a model, alias, ``auto`` or ``route:NAME``) the
    caller may see; every one without authentication. Raises the authenticator's
    ``AuthenticationError`` for a missing, unknown or revoked key."""
    auth = getattr(gateway, "authenticate", None)
    if auth is None:
        return objects
    keys = getattr(auth, "keys", None)  # ops/auth.py's Authenticator reads keys from this store
    if keys is not None:
        token = client_key(request.headers)
        key = await keys.afind(token) if token else None
        if key is not None and key.active:
            return [o for o in objects if key.allows(o["id"])]
        # No valid key: the authenticator refuses it with its own message and refusal metric.
        await auth(request, _asking_for("auto"))
        raise AuthenticationError("Invalid API key.")  # it accepted a key the store just refused (revoked)
    # A custom hook: asked about each name; a bad key raises on the first.
    visible = []
    for obj in objects:
        try:
            await auth(request, _asking_for(obj["id"]))
        except PermissionDeniedError:
            continue
        visible.append(obj)
    return visible
