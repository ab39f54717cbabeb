"""The ``gateway.authenticate`` hook: a request needs a valid, unrevoked virtual key.

Keys are read from ``Authorization: Bearer <key>`` (what OpenAI SDKs send), ``api-key`` (Azure
OpenAI SDKs) or ``x-api-key``.
The key itself is never logged or echoed; errors name the key id at most.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from starlette.requests import Request

from thrifty.errors import AuthenticationError, PermissionDeniedError
from thrifty.ops.keys import KeyStore, VirtualKey
from thrifty.server.app import forwarded_headers
from thrifty.server.credentials import client_key
from thrifty.types import ChatRequest

# The route an ``auto`` request's client label (x-thrifty-task, thrifty.task, metadata.task)
# names, given the request and the headers the pipeline sees; None when the label names none.
LabelRoute = Callable[[ChatRequest, Mapping[str, str]], "str | None"]
# Where a request's checked key is kept for the rest of the request (``Authenticator.key_of``).
_SCOPE_KEY = "thrifty.virtual_key"


def bearer_token(request: Request) -> str:
    """The client's key, from any header an SDK puts it in (``server/credentials.py``)."""
    return client_key(request.headers)


class Authenticator:
    def __init__(self, keys: KeyStore, on_failure: Callable[[str], None] | None = None,
                 label_route: LabelRoute | None = None) -> None:
        self.keys = keys
        self.on_failure = on_failure  # metrics: count refusals by reason
        self.label_route = label_route

    async def key_of(self, request: Request) -> VirtualKey:
        """The request's active key; ``AuthenticationError`` (and a refusal metric) for a missing,
        unknown or revoked one.

        Looked up once per request and kept in its ASGI scope: the check before the body is read
        (server/model_access.py) and the model check once the body names one (``__call__``) each
        made an HMAC and a key-cache read, and a second database read whenever the cache entry
        expired in between. The scope is the request's own, so nothing outlives it."""
        known = request.scope.get(_SCOPE_KEY)
        if isinstance(known, VirtualKey):
            return known
        token = bearer_token(request)
        if not token:
            self._failed("missing")
            raise AuthenticationError(
                "Missing API key: send 'Authorization: Bearer <virtual key>' (create one with `thrifty keys create`).")
        key = await self.keys.afind(token)
        if key is None:
            self._failed("invalid")
            raise AuthenticationError("Invalid API key.")
        if not key.active:
            self._failed("revoked")
            raise AuthenticationError(f"API key {key.key_id} has been revoked.", code="key_revoked")
        request.scope[_SCOPE_KEY] = key
        return key

    async def __call__(self, request: Request, chat: ChatRequest) -> tuple[str, str]:
        """(key_id, tenant) for the request; the key id is also its cache scope."""
        key = await self.key_of(request)
        wanted = [chat.model]
        route = request.headers.get("x-thrifty-route")
        if route:
            wanted.append(f"route:{route}")
        if chat.model == "auto" and key.routes and self.label_route is not None:
            # A trusted client label picks its route by name, exactly as ``route:NAME`` does: a
            # key allowed ``auto`` but not ``route:premium`` must not reach premium that way.
            # The headers are the ones the router will read (the last of repeated headers).
            named = self.label_route(chat, forwarded_headers(request))
            if named:
                wanted.append(f"route:{named}")
        for name in wanted:
            if not key.allows(name):
                self._failed("route")
                raise PermissionDeniedError(
                    f"Key {key.key_id} may not use {name!r}; it is limited to: {', '.join(key.routes)}.",
                    param="model", code="model_not_allowed")
        return key.key_id, key.key_id

    def _failed(self, reason: str) -> None:
        if self.on_failure is not None:
            self.on_failure(reason)
