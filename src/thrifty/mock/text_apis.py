"""The mock upstream's ``POST /v1/responses`` and legacy ``POST /v1/completions``.

Each request is read as the chat request it amounts to (the Responses ``instructions`` and
``input`` items, or the completion ``prompt``, as messages) and answered by the chat planner,
so answers, token counts, reasoning tokens, the simulated prompt cache, auth, the allow-list and
faults (status, fail_first, latency, hang, ``truncate_after``, ``chunk_delay_ms``,
``ignore_stream``, ``x-mock-behaviour``) behave as on chat completions. Only the wire shapes differ (text_wire.py).
Answers are text only: tools in a Responses request are not called; a ``text.format`` JSON
schema (or JSON mode) shapes the text as ``response_format`` does on chat.

A response is stored (in memory, the last ``STORED_LIMIT``) unless its request says ``store:
false``, and served by ``GET /v1/responses/{id}`` (``?stream=true`` replays its events),
``DELETE``, ``POST .../cancel`` and ``GET .../input_items``, as OpenAI does. A ``background:
true`` request is answered ``queued``; it completes when first retrieved, unless cancelled first.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from thrifty import fastjson
from thrifty.completion_events import completion_chunks
from thrifty.errors import AuthenticationError, InvalidRequestError, ThriftyError
from thrifty.mock import text_wire, wire
from thrifty.mock.behaviour import Faults, ModelBehaviour, merge_faults
from thrifty.mock.completion import Plan, build_plan
from thrifty.mock.embeddings import admitted_model
from thrifty.mock.faults import HEADER, parse_header
from thrifty.mock.usage import build_usage
from thrifty.responses_events import response_events, sse
from thrifty.tokens import content_text

if TYPE_CHECKING:
    from thrifty.mock.app import MockUpstream

_JSON = "application/json"
_SSE = "text/event-stream; charset=utf-8"
# OpenAI's default output limit of a legacy completion.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
# Stored responses kept in memory (the oldest are forgotten first).
STORED_LIMIT = 10_000


@dataclass
class Stored:
    response: dict[str, Any]  # as it is now (queued, completed, cancelled)
    final: dict[str, Any]  # as it ends when it runs (a background response's answer)
    items: list[dict[str, Any]]  # its input items, oldest first
    background: bool


def _error(exc: ThriftyError) -> Response:
    return Response(fastjson.dumps(exc.to_openai()), status_code=exc.status, headers=exc.headers(), media_type=_JSON)


def _admit(mock: MockUpstream, request: Request, body: Any) -> tuple[str, ModelBehaviour, Faults]:
    """Auth, the allow-list and the model's faults (with the header's), as chat does."""
    model = admitted_model(mock, request, body)
    behaviour = mock.behaviours.get(model)
    directive = request.headers.get(HEADER)
    faults = merge_faults(behaviour.faults, parse_header(directive)) if directive else behaviour.faults
    return model, behaviour, faults


def responses_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A Responses request's ``instructions`` and ``input`` as chat messages."""
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    value = body.get("input")
    if isinstance(value, str):
        messages.append({"role": "user", "content": value})
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise InvalidRequestError(f"Invalid type for 'input[{i}]': expected an object.", param=f"input[{i}]")
            if isinstance(item.get("role"), str):
                messages.append({"role": item["role"], "content": content_text(item.get("content"))})
            elif item.get("type") == "function_call_output":
                messages.append({"role": "tool", "content": str(item.get("output", ""))})
    if not any(m["role"] == "user" or m["role"] == "tool" for m in messages):
        raise InvalidRequestError("Missing required parameter: 'input'.", param="input")
    return messages


def responses_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """A Responses request's ``text.format`` as the chat ``response_format`` it amounts to, so a
    structured-output request (the openai SDK's ``responses.parse(text_format=...)``) gets the
    JSON its schema asks for, as from OpenAI; None for plain text."""
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":  # the chat shape nests name, schema and strict one level down
        return {"type": "json_schema", "json_schema": {k: v for k, v in fmt.items() if k != "type"}}
    return None


def completion_prompts(body: dict[str, Any]) -> list[str]:
    """A legacy completion's ``prompt`` as texts (token ids as their numbers)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) for p in prompt):
            return [" ".join(map(str, prompt))]
        if all(isinstance(p, str | list) for p in prompt):
            return [p if isinstance(p, str) else " ".join(map(str, p)) for p in prompt]
    raise InvalidRequestError("Missing required parameter: 'prompt'.", param="prompt")


def _limit(body: dict[str, Any], name: str, default: int | None) -> int | None:
    value = body.get(name, default)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise InvalidRequestError(f"'{name}' must be a positive integer.", param=name)
    return value  # type: ignore[no-any-return]


class TextAPIs:
    """Handlers for both endpoints; state (recorder, faults, prompt cache) is the ``MockUpstream``'s."""

    def __init__(self, mock: MockUpstream) -> None:
        self.mock = mock
        self._prefix = os.urandom(6).hex()
        self._served = 0
        self.stored: OrderedDict[str, Stored] = OrderedDict()

    def _id(self, kind: str) -> str:
        self._served += 1
        return f"{kind}_{self._prefix}{self._served:08x}"

    async def _read(self, request: Request) -> Any:
        raw = await request.body()
        try:
            body = fastjson.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.mock.recorder.add(request.method, request.scope["path"], request.scope["headers"], body)
        return body

    async def _faults(self, request: Request, model: str, faults: Faults) -> Response | None:
        """Latency, hang and injected errors: the response to send instead, if any."""
        delay = self.mock.faults.delay_s(model, faults)
        if delay > 0:
            await asyncio.sleep(delay)
        if faults.hang:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            return Response(status_code=499)
        injected = self.mock.faults.check(model, faults)
        if injected is not None:
            return Response(fastjson.dumps(wire.error_body(injected.status, injected.message)),
                            status_code=injected.status, headers=injected.headers(), media_type=_JSON)
        return None

    def _usage(self, behaviour: ModelBehaviour, model: str, messages: list[dict[str, Any]],
               plans: list[Plan], prompt_tokens: int) -> dict[str, Any]:
        cached = self.mock.prompt_cache.lookup_and_store(model, messages, None) if behaviour.prompt_cache else 0
        return build_usage(behaviour, prompt_tokens, sum(p.completion_tokens for p in plans),
                           sum(p.reasoning_tokens for p in plans), cached)

    def _send(self, parts: Iterator[bytes], faults: Faults) -> Response:
        from thrifty.mock.app import _ScriptedResponse  # app.py imports this module

        return _ScriptedResponse(parts, _SSE, delay_s=faults.chunk_delay_ms / 1000.0, abort_after=faults.truncate_after)

    async def responses(self, request: Request) -> Response:
        body = await self._read(request)
        if not self.mock.config.responses_api:
            # What a FastAPI-based server (vLLM, many proxies) answers for a route it does not have.
            return Response(fastjson.dumps({"detail": "Not Found"}), status_code=404, media_type=_JSON)
        try:
            model, behaviour, faults = _admit(self.mock, request, body)
            messages = responses_messages(body)
            limit = _limit(body, "max_output_tokens", None)
        except ThriftyError as exc:
            return _error(exc)
        failed = await self._faults(request, model, faults)
        if failed is not None:
            return failed
        chat: dict[str, Any] = {"model": model, "messages": messages}
        if limit is not None:
            chat["max_completion_tokens"] = limit
        fmt = responses_format(body)
        if fmt is not None:
            chat["response_format"] = fmt
        plan = build_plan(self.mock.config.seed, chat, model, behaviour)
        usage = text_wire.responses_usage(self._usage(behaviour, model, messages, [plan], plan.prompt_tokens))
        response = text_wire.response_object(self._id("resp"), self._id("msg"), int(time.time()), body, plan, usage)
        tier = behaviour.served_tier(body)  # as OpenAI's Responses API reports it, like chat's
        if tier is not None:
            response["service_tier"] = tier
        background = bool(body.get("background")) and not body.get("stream")
        if body.get("store") is not False:
            final = text_wire.failed(response) if background and faults.background_fail else response
            self._store(Stored(text_wire.queued(response) if background else response, final,
                               text_wire.input_items(body, self._id), background))
        if body.get("stream") and not faults.ignore_stream:
            return self._send(response_events(response, behaviour.stream_chunk_words), faults)
        return Response(fastjson.dumps(text_wire.queued(response) if background else response), media_type=_JSON)

    def _store(self, entry: Stored) -> None:
        self.stored[entry.response["id"]] = entry
        while len(self.stored) > STORED_LIMIT:
            self.stored.popitem(last=False)

    async def _lookup(self, request: Request) -> Stored | Response:
        """The stored response the path names, or the refusal: auth as on every endpoint, else a 404."""
        await self._read(request)
        response_id = request.path_params["response_id"]
        if self.mock._auth is not None and request.headers.get("authorization") != self.mock._auth:
            return _error(AuthenticationError("Incorrect API key provided."))
        entry = self.stored.get(response_id)
        if entry is None:
            return Response(fastjson.dumps(text_wire.not_found(response_id)), status_code=404, media_type=_JSON)
        return entry

    async def retrieve(self, request: Request) -> Response:
        entry = await self._lookup(request)
        if isinstance(entry, Response):
            return entry
        if entry.response["status"] == "queued":
            entry.response = entry.final  # a background response has run by the time anyone looks
        if request.query_params.get("stream") == "true":
            return self._send(response_events(entry.response, 3), Faults())
        return Response(fastjson.dumps(entry.response), media_type=_JSON)

    async def delete(self, request: Request) -> Response:
        entry = await self._lookup(request)
        if isinstance(entry, Response):
            return entry
        response_id = entry.response["id"]
        del self.stored[response_id]
        return Response(fastjson.dumps(text_wire.deleted(response_id)), media_type=_JSON)

    async def cancel(self, request: Request) -> Response:
        entry = await self._lookup(request)
        if isinstance(entry, Response):
            return entry
        if not entry.background:
            return _error(InvalidRequestError("Only responses created with background=true can be cancelled."))
        if entry.response["status"] == "queued":
            entry.response = {**entry.response, "status": "cancelled"}
        return Response(fastjson.dumps(entry.response), media_type=_JSON)

    async def input_items(self, request: Request) -> Response:
        entry = await self._lookup(request)
        if isinstance(entry, Response):
            return entry
        query = request.query_params
        order, raw_limit = query.get("order", "desc"), query.get("limit", "20")
        if order not in ("asc", "desc") or not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
            return _error(InvalidRequestError("'order' must be asc or desc and 'limit' an integer from 1 to 100."))
        page = text_wire.item_page(entry.items, order=order, after=query.get("after"), limit=int(raw_limit))
        return Response(fastjson.dumps(page), media_type=_JSON)

    def stored_routes(self) -> list[Route]:
        """The stored-response routes, with and without ``/v1``."""
        out = []
        for prefix in ("/v1", ""):
            base = f"{prefix}/responses/{{response_id}}"
            out += [Route(base, self.retrieve, methods=["GET"]), Route(base, self.delete, methods=["DELETE"]),
                    Route(f"{base}/cancel", self.cancel, methods=["POST"]),
                    Route(f"{base}/input_items", self.input_items, methods=["GET"])]
        return out

    async def completions(self, request: Request) -> Response:
        body = await self._read(request)
        try:
            model, behaviour, faults = _admit(self.mock, request, body)
            prompts = completion_prompts(body)
            limit = _limit(body, "max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS)
            n = _limit(body, "n", 1) or 1
        except ThriftyError as exc:
            return _error(exc)
        failed = await self._faults(request, model, faults)
        if failed is not None:
            return failed
        plans = []
        for prompt in prompts:
            chat = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": limit, "n": n}
            plans.append(build_plan(self.mock.config.seed, chat, model, behaviour))
        messages = [{"role": "user", "content": p} for p in prompts]
        prompt_tokens = sum(text_wire.prompt_tokens(p) for p in prompts)
        usage = self._usage(behaviour, model, messages, plans, prompt_tokens)
        usage = {k: v for k, v in usage.items() if k != "completion_tokens_details"} if usage else usage
        whole = text_wire.completion_object(self._id("cmpl"), int(time.time()), model, plans, usage)
        if body.get("stream") and not faults.ignore_stream:
            options = body.get("stream_options")
            with_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            chunks = completion_chunks(whole, behaviour.stream_chunk_words, with_usage=with_usage)
            parts: Iterator[bytes] = (sse(None, c) for c in chunks)
            if faults.truncate_after is None:
                parts = _then_done(parts)
            return self._send(parts, faults)
        return Response(fastjson.dumps(whole), media_type=_JSON)


def _then_done(parts: Iterator[bytes]) -> Iterator[bytes]:
    yield from parts
    yield b"data: [DONE]\n\n"
