"""The admin API (``/admin/*``), guarded by ``auth.admin_key``.

    POST   /admin/keys            {"name", "budget_usd", "period", "rpm", "tpm", "routes"} -> the key, once
    GET    /admin/keys            every key (never the key itself or its hash)
    GET    /admin/keys/{key_id}   one key with its spend and counters now
    DELETE /admin/keys/{key_id}   revoke it
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from thrifty.errors import AuthenticationError, InvalidRequestError, NotFoundError, ThriftyError
from thrifty.ops.auth import bearer_token
from thrifty.ops.keys import KeyStore
from thrifty.ops.ratelimit import Limiter
from thrifty.pipeline.context import new_request_id

Endpoint = Callable[[Request], Awaitable[Response]]


def check_admin(request: Request, admin_key: str | None) -> None:
    if not admin_key:
        raise AuthenticationError("The admin API is disabled: set auth.admin_key in the config.")
    if not hmac.compare_digest(bearer_token(request).encode(), admin_key.encode()):
        raise AuthenticationError("This endpoint needs the admin key (Authorization: Bearer <auth.admin_key>).")


def guarded(admin_key: str | None, fn: Endpoint) -> Endpoint:
    """``fn`` behind the admin key; thrifty errors leave as OpenAI-style bodies."""

    async def endpoint(request: Request) -> Response:
        try:
            check_admin(request, admin_key)
            return await fn(request)
        except ThriftyError as exc:
            return JSONResponse(exc.to_openai(), status_code=exc.status,
                                headers={"x-thrifty-request-id": new_request_id(), **exc.headers()})

    return endpoint


def admin_routes(keys: KeyStore, limiter: Limiter, admin_key: str | None) -> list[Route]:
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
        routes = body.get("routes") or []
        if isinstance(routes, str):
            routes = [r for r in routes.split(",") if r.strip()]
        try:
            budget = float(body["budget_usd"]) if body.get("budget_usd") is not None else None
            rpm = int(body["rpm"]) if body.get("rpm") is not None else None
            tpm = int(body["tpm"]) if body.get("tpm") is not None else None
        except (TypeError, ValueError):
            raise InvalidRequestError("budget_usd must be a number; rpm and tpm integers") from None
        key, secret = await asyncio.to_thread(
            keys.create, str(body.get("name") or ""), budget_usd=budget, period=str(body.get("period") or "month"),
            rpm=rpm, tpm=tpm, routes=list(routes))
        return JSONResponse({**key.public(), "key": secret}, status_code=201)

    async def list_keys(request: Request) -> Response:
        found = await asyncio.to_thread(keys.list)
        return JSONResponse({"object": "list", "data": [k.public() for k in found]})

    async def show(request: Request) -> Response:
        key = await asyncio.to_thread(keys.get, request.path_params["key_id"])
        if key is None:
            raise NotFoundError(f"no key with id {request.path_params['key_id']!r}", code="key_not_found")
        usage = await limiter.usage(key, time.time())
        return JSONResponse({**key.public(), "usage": asdict(usage)})

    async def revoke(request: Request) -> Response:
        key = await asyncio.to_thread(keys.revoke, request.path_params["key_id"])
        return JSONResponse(key.public())

    return [
        Route("/admin/keys", guarded(admin_key, create), methods=["POST"]),
        Route("/admin/keys", guarded(admin_key, list_keys), methods=["GET"]),
        Route("/admin/keys/{key_id}", guarded(admin_key, show), methods=["GET"]),
        Route("/admin/keys/{key_id}", guarded(admin_key, revoke), methods=["DELETE"]),
    ]
