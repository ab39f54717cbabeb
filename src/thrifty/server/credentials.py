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

from starlette.datastructures import Headers

KEY_HEADERS = ("api-key", "x-api-key")


def client_key(headers: Mapping[str, str]) -> str:
    """The key the client sent ('' when none): the bearer token first, else ``api-key``, else ``x-api-key``."""
    return _key_of(_credential_values(headers))


def tenant_credential(headers: Mapping[str, str]) -> str:
    """What scopes an unauthenticated client's cache ('' when it sent no credential): its key
    (``client_key``), else its whole ``Authorization`` value, scheme included, so ``Basic`` users
    behind an auth proxy each get their own tenant. Callers hash it; it is never stored or logged."""
    values = _credential_values(headers)
    return _key_of(values) or values[0].strip()


_NAMES = ("authorization", *KEY_HEADERS)
_RAW_NAMES = tuple(name.encode("latin-1") for name in _NAMES)


def _credential_values(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The values of ``_NAMES`` ('' when absent; the first of a repeated header, as ``get``).

    A request's headers (Starlette ``Headers``) are read in one pass over their raw list, matched
    as Starlette's ``get`` matches them (lower-case names, as ASGI servers send them): each ``get``
    of an absent header scans them all and raises and catches a KeyError, and without a key every
    request asked for four absent ones (~2.3 us)."""
    if not isinstance(headers, Headers):
        return tuple(headers.get(name, "") for name in _NAMES)
    found = ["", "", ""]
    seen = [False, False, False]
    for name, value in headers.raw:
        if name in _RAW_NAMES:
            i = _RAW_NAMES.index(name)
            if not seen[i]:
                seen[i] = True
                found[i] = value.decode("latin-1")
    return tuple(found)


def _key_of(values: tuple[str, ...]) -> str:
    auth = values[0]
    if auth.lower().startswith("bearer ") and auth[7:].strip():
        return auth[7:].strip()
    for value in values[1:]:
        if value.strip():
            return value.strip()
    return ""
