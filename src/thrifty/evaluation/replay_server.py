"""The replay upstream over HTTP: an OpenAI-compatible server in front of a ``ReplayIndex``.

POST /v1/chat/completions (JSON or SSE when ``stream: true``), GET /v1/models, GET /health.
Errors are OpenAI error bodies; an unknown prompt or model is a 404.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from thrifty.errors import InvalidRequestError, ThriftyError
from thrifty.providers.replay import ReplayIndex
from thrifty.streaming import response_to_chunks


def create_replay_app(index: ReplayIndex) -> Starlette:
    async def chat(request: Request) -> Response:
        try:
            try:
                body = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError):
                raise InvalidRequestError("Request body is not valid JSON.") from None
            if not isinstance(body, dict):
                raise InvalidRequestError("Request body must be a JSON object.")
            response = index.complete(body)
        except ThriftyError as exc:
            return JSONResponse(exc.to_openai(), status_code=exc.status)
        if body.get("stream"):
            return StreamingResponse(_sse(response), media_type="text/event-stream")
        return JSONResponse(response)

    async def models(request: Request) -> Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "replay"} for m in index.models]
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "prompts": len(index), "models": len(index.models)})

    async def not_found(request: Request, exc: Exception) -> Response:
        err = {"message": f"No route for {request.method} {request.url.path}.", "type": "invalid_request_error",
               "param": None, "code": "not_found"}
        return JSONResponse({"error": err}, status_code=getattr(exc, "status_code", 404))

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: not_found},
    )


async def _sse(response: dict[str, Any]) -> AsyncIterator[bytes]:
    for chunk in response_to_chunks(response):
        yield b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"
