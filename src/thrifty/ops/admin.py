"""The admin API (``/admin/*``), guarded by ``auth.admin_key``.

    POST   /admin/keys            {"name", "budget_usd", "period", "rpm", "tpm", "routes"} -> the key, once
    GET    /admin/keys            every key (never the key itself or its hash)
    GET    /admin/keys/{key_id}   one key with its spend and counters now
    DELETE /admin/keys/{key_id}   revoke it
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from thrifty.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
    StorageError,
    ThriftyError,
)
from thrifty.ops.auth import bearer_token
from thrifty.ops.key_routes import check_route_patterns
from thrifty.ops.keys import KeyStore
from thrifty.ops.ratelimit import Limiter
from thrifty.pipeline.context import new_request_id

Endpoint = Callable[[Request], Awaitable[Response]]

log = logging.getLogger("thrifty.server")


def check_admin(request: Request, admin_key: str | None) -> None:
    if not admin_key:
        raise AuthenticationError("The admin API is disabled: set auth.admin_key in the config.")
    if not hmac.compare_digest(bearer_token(request).encode(), admin_key.encode()):
        raise AuthenticationError("This endpoint needs the admin key (Authorization: Bearer <auth.admin_key>).")


def json_errors(fn: Endpoint, what: str) -> Endpoint:
    """``fn`` whose failures leave as OpenAI-format JSON: thrifty errors with their status, anything
    else as a 500 (Starlette would answer plain text; admin clients and the dashboard's script parse
    JSON like every other route). The traceback goes to the server log under the request id; so do
    the details of a database failure (its message names hosts and ports: the client gets a 503
    naming the service)."""

    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except StorageError as exc:
            request_id = new_request_id()
            if not isinstance(exc, ServiceUnavailableError):
                log.warning("%s %s %s (request %s): %s", what, request.method, request.url.path, request_id,
                            exc.message)
                exc = ServiceUnavailableError(
                    f"The ledger database is unavailable; try again shortly (request id {request_id}).")
            return JSONResponse(exc.to_openai(), status_code=exc.status, headers={"x-thrifty-request-id": request_id})
        except ThriftyError as exc:
            return JSONResponse(exc.to_openai(), status_code=exc.status,
                                headers={"x-thrifty-request-id": new_request_id(), **exc.headers()})
        except Exception:
            request_id = new_request_id()
            log.exception("%s %s %s (request %s): internal error", what, request.method, request.url.path, request_id)
            err = ThriftyError(f"Internal error (request id {request_id}).")
            return JSONResponse(err.to_openai(), status_code=err.status, headers={"x-thrifty-request-id": request_id})

    return endpoint


def guarded(admin_key: str | None, fn: Endpoint) -> Endpoint:
    """``fn`` behind the admin key, its errors as OpenAI-style bodies (``json_errors``)."""

    async def checked(request: Request) -> Response:
        check_admin(request, admin_key)
        return await fn(request)

    return json_errors(checked, "admin")


def _number(body: dict[str, Any], name: str) -> float | None:
    """``body[name]`` as a finite float (JSON number or numeric string), None when absent.

    Python's JSON reader turns 1e999 into inf; checked here so that nothing is stored that the
    listing could not serialise back."""
    value = body.get(name)
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        out = float(value)
    except (TypeError, ValueError):
        raise InvalidRequestError(f"{name} must be a number, got {value!r}", param=name) from None
    if not math.isfinite(out):
        raise InvalidRequestError(f"{name} must be a finite number, got {value!r}", param=name)
    return out


def _whole(body: dict[str, Any], name: str) -> int | None:
    """``body[name]`` as an int (JSON integer or digit string), None when absent; 1.5 is refused,
    not truncated, since a limit the client did not ask for is worse than an error."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        # 1e6 or 100.0 in JSON is a whole number (a client that writes big limits in exponent
        # form): read as one, so one too large is told "at most ..." (validate_limits), not
        # "must be a whole number".
        if abs(value) >= 2**63:
            raise InvalidRequestError(f"{name} is too large, got {value!r}", param=name)
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 30:
        return int(value)  # the length cap keeps int() within its digit limit (validate_limits bounds it)
    raise InvalidRequestError(f"{name} must be a whole number, got {value!r}", param=name)


def _text(body: dict[str, Any], name: str, default: str) -> str:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidRequestError(f"{name} must be a string, got {value!r}", param=name)
    return value


def _routes(body: dict[str, Any]) -> list[str]:
    routes = body.get("routes")
    if routes is None:
        return []
    if isinstance(routes, str):
        return [r for r in routes.split(",") if r.strip()]
    if not isinstance(routes, list) or not all(isinstance(r, str) for r in routes):
        raise InvalidRequestError("routes must be an array of model or route names", param="routes")
    return list(routes)


def admin_routes(keys: KeyStore, limiter: Limiter, admin_key: str | None, route_names: list[str] | None = None,
                 ) -> list[Route]:
    """The admin endpoints; ``route_names`` (thrifty.ops.key_routes.request_names of the gateway's
    config) are what a new key's ``routes`` patterns are checked against."""

    async def create(request: Request) -> Response:
        try:
            body: Any = await request.json()
        except ValueError:
            raise InvalidRequestError("Request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise InvalidRequestError("Request body must be a JSON object.")
        unknown = set(body) - {"name", "budget_usd", "period", "rpm", "tpm", "routes"}
        if unknown:
            raise InvalidRequestError(f"unknown fields: {', '.join(sorted(unknown))}")
        name, period = _text(body, "name", ""), _text(body, "period", "month")
        budget, rpm, tpm, routes = _number(body, "budget_usd"), _whole(body, "rpm"), _whole(body, "tpm"), _routes(body)
        # Blank names are refused by KeyStore.create with its own message.
        check_route_patterns([r.strip() for r in routes if r.strip()], route_names or [], "this gateway's config")
        # KeyStore.create checks every limit (validate_limits) before it stores anything.
        # Bounded like every key database call here (a database that stops answering gets a 503,
        # not a hung admin client); an insert that still lands after it leaves an unused key.
        key, secret = await keys.bounded(
            lambda: keys.create(name, budget_usd=budget, period=period, rpm=rpm, tpm=tpm, routes=routes))
        return JSONResponse({**key.public(), "key": secret}, status_code=201)

    async def list_keys(request: Request) -> Response:
        found = await keys.bounded(keys.list)
        return JSONResponse({"object": "list", "data": [k.public() for k in found]})

    async def show(request: Request) -> Response:
        key = await keys.bounded(lambda: keys.get(request.path_params["key_id"]))
        if key is None:
            raise NotFoundError(f"no key with id {request.path_params['key_id']!r}", code="key_not_found")
        usage = await limiter.usage(key, time.time())
        return JSONResponse({**key.public(), "usage": asdict(usage)})

    async def revoke(request: Request) -> Response:
        key = await keys.bounded(lambda: keys.revoke(request.path_params["key_id"]))
        return JSONResponse(key.public())

    return [
        Route("/admin/keys", guarded(admin_key, create), methods=["POST"]),
        Route("/admin/keys", guarded(admin_key, list_keys), methods=["GET"]),
        Route("/admin/keys/{key_id}", guarded(admin_key, show), methods=["GET"]),
        Route("/admin/keys/{key_id}", guarded(admin_key, revoke), methods=["DELETE"]),
    ]
