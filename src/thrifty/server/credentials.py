"""The client's API key, read the same way wherever the gateway needs it.

SDKs send it in different headers: OpenAI's as ``Authorization: Bearer <key>``, Azure OpenAI's
as ``api-key``, Anthropic-style clients as ``x-api-key``. Virtual-key authentication, the admin
API and (without virtual keys) the per-client cache tenant all read it here, so a key means the
same thing in every header: it scopes the cache and authenticates alike.

Without virtual keys the cache tenant also comes from any other ``Authorization`` scheme
(``Basic`` from an auth proxy, ``Token ...``): two users must never share a tenant because their
credential is not a bearer token (``tenant_credential``).
"""

from __future__ import annotations

from collections.abc import Mapping

KEY_HEADERS = ("api-key", "x-api-key")


def client_key(headers: Mapping[str, str]) -> str:
    """The key the client sent ('' when none): the bearer token first, else ``api-key``, else ``x-api-key``."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer ") and auth[7:].strip():
        return auth[7:].strip()
    for name in KEY_HEADERS:
        value = headers.get(name, "").strip()
        if value:
            return value
    return ""


def tenant_credential(headers: Mapping[str, str]) -> str:
    """What scopes an unauthenticated client's cache ('' when it sent no credential): its key
    (``client_key``), else its whole ``Authorization`` value, scheme included, so ``Basic`` users
    behind an auth proxy each get their own tenant. Callers hash it; it is never stored or logged."""
    return client_key(headers) or headers.get("authorization", "").strip()
