"""The mock upstream's Starlette app: an OpenAI-compatible server with scripted behaviour.

``create_app(config)`` wires the pieces, each in its own module:

    request -> record (recorder) -> auth -> header faults (faults) -> validate (completion)
            -> latency / hang / injected error (faults) -> plan (completion, cached)
            -> usage + prompt cache (usage) -> JSON or SSE (wire)

All state (counters, recorded requests, prompt cache) lives on the ``MockUpstream`` object the
factory builds, never in globals, so tests can run several differently configured mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from thrifty import fastjson
from thrifty.errors import AuthenticationError, InvalidRequestError, NotFoundError, ThriftyError
from thrifty.mock import wire
from thrifty.mock.batches import BatchAPI
from thrifty.mock.behaviour import BehaviourTable, Faults, MockConfig, merge_faults
from thrifty.mock.completion import Plan, Planner, refuse_unsupported, validate
from thrifty.mock.embeddings import embeddings
from thrifty.mock.faults import HEADER, FaultState, parse_header
from thrifty.mock.packed import PACK_FAULTS
from thrifty.mock.recorder import Recorder
from thrifty.mock.text_apis import TextAPIs
from thrifty.mock.usage import PromptCache, build_usage
from thrifty.tokens import count_text

_JSON = "application/json"


class StreamAborted(Exception):
    """Raised on purpose to make the server drop a connection mid-response (truncation)."""


def _is_abort(record: logging.LogRecord) -> bool:
    # uvicorn logs every exception escaping the app; ours are intended, so keep logs clean.
    exc = record.exc_info[1] if record.exc_info else None
    while exc is not None:
        if isinstance(exc, StreamAborted):
            return False
        if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        else:
            exc = exc.__cause__ or exc.__context__
    return True


def _json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(fastjson.dumps(body), status_code=status, headers=headers, media_type=_JSON)


def _error_response(exc: ThriftyError) -> Response:
    return _json_response(exc.to_openai(), exc.status, exc.headers())


class _ScriptedResponse(Response):
    """Sends pre-built body parts with delays, optionally dropping the connection part-way.

    ``parts`` are sent in order (``delay_s`` apart); after ``abort_after`` parts the connection
    is closed without finishing the response, which clients see as a truncated stream.
    """

    def __init__(
        self,
        parts: Iterator[bytes],
        media_type: str,
        delay_s: float = 0.0,
        abort_after: int | None = None,
        content_length: int | None = None,
    ) -> None:
        super().__init__(media_type=media_type)
        self.parts = parts
        self.delay_s = delay_s
        self.abort_after = abort_after
        self.raw_headers = [h for h in self.raw_headers if h[0] != b"content-length"]
        if content_length is not None:
            self.raw_headers.append((b"content-length", str(content_length).encode()))
        if media_type.startswith("text/event-stream"):
            self.raw_headers.append((b"cache-control", b"no-cache"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        parts: Iterable[bytes] = self.parts
        if self.abort_after is not None:
            parts = itertools.islice(parts, self.abort_after)
        if not self.delay_s:
            # Without delays the client cannot tell one write from many, and one write saves a
            # syscall and an h11 event per chunk: streaming gets several times cheaper.
            parts = [b"".join(parts)]
        for sent, part in enumerate(parts):
            if sent and self.delay_s:
                await asyncio.sleep(self.delay_s)
            if part:
                await send({"type": "http.response.body", "body": part, "more_body": True})
        if self.abort_after is not None:
            raise StreamAborted("truncated on purpose (x-mock-behaviour truncate_after)")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class MockUpstream:
    """The state and handlers behind one mock server."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.behaviours = BehaviourTable(config)
        self.planner = Planner(config.seed)
        self.faults = FaultState(config.seed)
        self.prompt_cache = PromptCache()
        self.recorder = Recorder(config.record_limit)
        # Ids are unique per process run without a uuid per request: random prefix + counter.
        self._id_prefix = os.urandom(6).hex()
        self._served = 0
        self._auth = None if config.api_key is None else f"Bearer {config.api_key}"

    async def chat_completions(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = fastjson.loads(raw)
        except ValueError:
            self.recorder.add(
                request.method,
                request.scope["path"],
                request.scope["headers"],
                raw.decode("utf-8", "replace"),
            )
            return _error_response(InvalidRequestError("We could not parse the JSON body of your request."))
        self.recorder.add(request.method, request.scope["path"], request.scope["headers"], body)
        try:
            model, behaviour, faults = self._admit(request, body)
        except ThriftyError as exc:
            return _error_response(exc)

        delay = self.faults.delay_s(model, faults)
        if delay > 0:
            await asyncio.sleep(delay)
        if faults.hang:
            await _until_disconnect(request)
            return Response(status_code=499)  # nobody is listening any more
        injected = self.faults.check(model, faults)
        if injected is not None:
            body_json = wire.error_body(injected.status, injected.message)
            return _json_response(body_json, injected.status, injected.headers())

        # A header that changes the answer (pack faults) must not reuse a plan cached without it.
        directive = request.headers.get(HEADER)
        plan = self.planner.plan(raw + directive.encode() if directive else raw, body, model, behaviour)
        cached = 0
        if behaviour.prompt_cache:
            cached = self.prompt_cache.lookup_and_store(model, body["messages"], body.get("tools"))
        usage = build_usage(
            behaviour, plan.prompt_tokens, plan.completion_tokens, plan.reasoning_tokens, cached
        )
        self._served += 1
        response_id = f"chatcmpl-{self._id_prefix}{self._served:08x}"
        created = int(time.time())
        if body.get("stream") and not faults.ignore_stream:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return self._stream(
                plan, response_id, created, usage if include_usage else None, behaviour, faults,
                behaviour.served_tier(body),
            )
        data = fastjson.dumps(wire.completion(plan, response_id, created, usage, behaviour.system_fingerprint,
                                              behaviour.served_tier(body)))
        if faults.malformed:
            data = data[: len(data) // 2]
        if faults.truncate_after is not None:
            # Promise the whole body, send half, then drop the connection.
            half = iter([data[: len(data) // 2]])
            return _ScriptedResponse(half, _JSON, abort_after=1, content_length=len(data))
        if faults.keep_alive:  # DeepSeek writes blank lines while a non-streamed answer is pending
            data = b"\n\n\n" + data
        return Response(data, media_type=_JSON)

    def _admit(self, request: Request, body: Any) -> tuple[str, Any, Faults]:
        """Auth, header directives, validation and the allow-list; raises ``ThriftyError``."""
        if self._auth is not None and request.headers.get("authorization") != self._auth:
            raise AuthenticationError("Incorrect API key provided.")
        directive = request.headers.get(HEADER)
        override = parse_header(directive) if directive else None
        model, _ = validate(body)
        if not self.behaviours.allowed(model):
            raise NotFoundError(
                f"The model `{model}` does not exist or you do not have access to it.", param="model"
            )
        behaviour = self.behaviours.get(model)
        refuse_unsupported(body, behaviour)  # a reasoning model's 400s, before any fault or answer
        faults = behaviour.faults if override is None else merge_faults(behaviour.faults, override)
        if override is not None and override.model_fields_set & set(PACK_FAULTS):
            behaviour = behaviour.model_copy(update={"faults": faults})  # packed answers read them
        return model, behaviour, faults

    def _stream(
        self,
        plan: Plan,
        response_id: str,
        created: int,
        usage: dict[str, Any] | None,
        behaviour: Any,
        faults: Faults,
        service_tier: str | None = None,
    ) -> Response:
        events = wire.chunks(
            plan, response_id, created, usage, behaviour.system_fingerprint, behaviour.stream_chunk_words,
            service_tier,
        )
        if faults.stream_error_after is not None:
            events = _error_after(events, faults.stream_error_after, faults.error_message)
        parts: Iterator[bytes] = (b"data: " + fastjson.dumps(event) + b"\n\n" for event in events)
        if faults.keep_alive:
            parts = _with_keep_alives(parts)
        if faults.malformed:
            parts = iter([b'data: {"id": "chatcmpl-broken", "choices": [\n\n'])
        if faults.truncate_after is None and not faults.omit_done:
            parts = _then_done(parts)
        return _ScriptedResponse(
            parts,
            "text/event-stream; charset=utf-8",
            delay_s=faults.chunk_delay_ms / 1000.0,
            abort_after=faults.truncate_after,
        )

    async def list_models(self, request: Request) -> Response:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "thrifty-mock"}
            for name in self.config.model_names()
        ]
        return _json_response({"object": "list", "data": data})

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        if self.config.allowed_models is not None and name not in self.config.allowed_models:
            return _error_response(NotFoundError(f"The model `{name}` does not exist.", param="model"))
        return _json_response({"id": name, "object": "model", "created": 0, "owned_by": "thrifty-mock"})

    async def health(self, request: Request) -> Response:
        return _json_response({"status": "ok"})

    async def recorded(self, request: Request) -> Response:
        raw_limit = request.query_params.get("limit")
        limit = int(raw_limit) if raw_limit and raw_limit.isdigit() else None
        return _json_response(
            {"object": "list", "total": self.recorder.total, "data": self.recorder.last(limit)}
        )

    async def reset(self, request: Request) -> Response:
        self.faults.reset()
        self.recorder.reset()
        self.prompt_cache.reset()
        return _json_response({"ok": True})

    async def stats(self, request: Request) -> Response:
        return _json_response(
            {
                "calls": self.faults.calls,
                "fail_first_calls": self.faults.fail_first_calls,
                "requests": self.recorder.total,
            }
        )


def _error_after(events: Iterable[dict[str, Any]], count: int, message: str | None) -> Iterator[dict[str, Any]]:
    """``count`` of ``events``, then the chunk OpenRouter sends when the model fails mid-answer
    (openrouter.ai/docs/api/reference/errors-and-debugging, "Handling errors during streaming"):
    the status is already 200, so the error rides in a chunk that still has a choice, whose
    finish_reason is "error". The stream then ends normally (the caller adds [DONE])."""
    last: dict[str, Any] = {}
    for sent, event in enumerate(events):
        if sent >= count:
            break
        last = event
        yield event
    yield {"id": last.get("id", "chatcmpl-mock"), "object": "chat.completion.chunk", "created": last.get("created", 0),
           "model": last.get("model", ""), "provider": "mock",
           "error": {"code": "server_error", "message": message or "Provider disconnected unexpectedly"},
           "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}


def _with_keep_alives(parts: Iterator[bytes]) -> Iterator[bytes]:
    """``parts`` with the SSE comments busy providers send: OpenRouter's ``: OPENROUTER
    PROCESSING`` before the first chunk (openrouter.ai/docs/api/reference/streaming), DeepSeek's
    ``: keep-alive`` between chunks (api-docs.deepseek.com/quick_start/rate_limit).
    Each comment is joined to the part it precedes, not sent as a part of its own, so
    ``truncate_after`` still counts data chunks and ``chunk_delay_ms`` still paces them."""
    comment = b": OPENROUTER PROCESSING\n\n"
    for part in parts:
        yield comment + part
        comment = b": keep-alive\n\n"


def _then_done(parts: Iterator[bytes]) -> Iterator[bytes]:
    yield from parts
    yield b"data: [DONE]\n\n"


async def _until_disconnect(request: Request) -> None:
    # The body is already read, so the next ASGI message is the client's disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


@contextlib.asynccontextmanager
async def _warm_up(app: Starlette) -> AsyncIterator[None]:
    # Loading the BPE tables takes ~0.5 s; do it before the server reports ready, not inside
    # the first request (which would then look like a hang to a test with a short timeout).
    await asyncio.to_thread(count_text, "warm up")
    yield


def create_app(config: MockConfig | None = None) -> Starlette:
    """A new mock upstream app; ``app.state.mock`` is its ``MockUpstream`` (state, counters)."""
    mock = MockUpstream(config or MockConfig())
    logging.getLogger("uvicorn.error").addFilter(_is_abort)  # idempotent: same function object
    text_apis = TextAPIs(mock)
    routes = [
        Route("/v1/chat/completions", mock.chat_completions, methods=["POST"]),
        Route("/chat/completions", mock.chat_completions, methods=["POST"]),
        Route("/v1/embeddings", functools.partial(embeddings, mock), methods=["POST"]),
        Route("/embeddings", functools.partial(embeddings, mock), methods=["POST"]),
        # The Responses API and legacy text completions (mock/text_apis.py).
        Route("/v1/responses", text_apis.responses, methods=["POST"]),
        Route("/responses", text_apis.responses, methods=["POST"]),
        *text_apis.stored_routes(),  # GET/DELETE /v1/responses/{id}, .../cancel, .../input_items
        Route("/v1/completions", text_apis.completions, methods=["POST"]),
        Route("/completions", text_apis.completions, methods=["POST"]),
        Route("/v1/models", mock.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", mock.get_model, methods=["GET"]),
        Route("/health", mock.health, methods=["GET"]),
        Route("/mock/requests", mock.recorded, methods=["GET"]),
        Route("/mock/reset", mock.reset, methods=["POST"]),
        Route("/mock/stats", mock.stats, methods=["GET"]),
    ]
    batches = BatchAPI(mock)  # OpenAI files + batches endpoints (mock/batches.py)
    routes.extend(batches.routes())
    app = Starlette(routes=routes, lifespan=_warm_up)
    app.state.mock = mock
    app.state.batches = batches
    return app
