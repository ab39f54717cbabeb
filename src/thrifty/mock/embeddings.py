"""The mock upstream's ``POST /v1/embeddings``: deterministic vectors, OpenAI's wire shape.

Each input's vector is a hash of (seed, model, input), unit length, ``dimensions`` long (default
``DEFAULT_DIMENSIONS``), so the same text always embeds the same way across runs. With
``encoding_format: "base64"`` (what the openai SDK asks for by default) each vector is sent as
base64 of little-endian float32s, as OpenAI does. ``usage.prompt_tokens`` counts the inputs
offline (token-id inputs count their ids). Auth, the allow-list and the model's faults (status,
fail_first, latency, ``x-mock-behaviour``) apply as on chat completions.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from thrifty import fastjson
from thrifty.errors import AuthenticationError, InvalidRequestError, NotFoundError, ThriftyError
from thrifty.mock import digest, wire
from thrifty.mock.behaviour import merge_faults
from thrifty.mock.faults import HEADER, parse_header
from thrifty.tokens import count_text

if TYPE_CHECKING:
    from thrifty.mock.app import MockUpstream

DEFAULT_DIMENSIONS = 64
MAX_DIMENSIONS = 4096


def vector(seed: int, model: str, item: Any, dimensions: int) -> list[float]:
    """A unit vector determined by (seed, model, item)."""
    key = digest.request_key(seed, model, {"messages": item})
    raw = digest.stream(key, "embedding", 4 * dimensions)
    values = [int.from_bytes(raw[i:i + 4], "big") / 2**31 - 1.0 for i in range(0, len(raw), 4)]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [v / norm for v in values]


def _inputs(body: dict[str, Any]) -> list[Any]:
    value = body.get("input")
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) for v in value):
            return [value]  # one input given as token ids
        if all((isinstance(v, str) and v) or (isinstance(v, list) and v) for v in value):
            return value
    raise InvalidRequestError("'input' must be a non-empty string or array.", param="input")


def _tokens(item: Any) -> int:
    return count_text(item) if isinstance(item, str) else len(item)



def admitted_model(mock: MockUpstream, request: Request, body: Any) -> str:
    """The model of a non-chat request the mock accepts (its key, a JSON object, a model it
    serves), as OpenAI words the refusals; used by every non-chat endpoint of the mock."""
    if mock._auth is not None and request.headers.get("authorization") != mock._auth:
        raise AuthenticationError("Incorrect API key provided.")
    if not isinstance(body, dict):
        raise InvalidRequestError("We could not parse the JSON body of your request.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("you must provide a model parameter", param="model")
    if not mock.behaviours.allowed(model):
        raise NotFoundError(f"The model `{model}` does not exist or you do not have access to it.", param="model")
    return model


async def embeddings(mock: MockUpstream, request: Request) -> Response:
    """The handler; state (recorder, fault counters) is the ``MockUpstream``'s."""
    raw = await request.body()
    try:
        body = fastjson.loads(raw)
    except ValueError:
        body = raw.decode("utf-8", "replace")
    mock.recorder.add(request.method, request.scope["path"], request.scope["headers"], body)
    try:
        model = admitted_model(mock, request, body)
        items = _inputs(body)
        dimensions = body.get("dimensions", DEFAULT_DIMENSIONS)
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= MAX_DIMENSIONS:
            raise InvalidRequestError(f"'dimensions' must be an integer from 1 to {MAX_DIMENSIONS}.",
                                      param="dimensions")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise InvalidRequestError("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
        directive = request.headers.get(HEADER)
        faults = mock.behaviours.get(model).faults
        if directive:
            faults = merge_faults(faults, parse_header(directive))
    except ThriftyError as exc:
        return Response(fastjson.dumps(exc.to_openai()), status_code=exc.status, media_type="application/json")

    delay = mock.faults.delay_s(model, faults)
    if delay > 0:
        await asyncio.sleep(delay)
    injected = mock.faults.check(model, faults)
    if injected is not None:
        return Response(fastjson.dumps(wire.error_body(injected.status, injected.message)),
                        status_code=injected.status, headers=injected.headers(), media_type="application/json")
    data = []
    for index, item in enumerate(items):
        vec = vector(mock.config.seed, model, item, dimensions)
        embedding: Any = vec if encoding == "float" else base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(_tokens(item) for item in items)
    out = {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return Response(fastjson.dumps(out), media_type="application/json")
