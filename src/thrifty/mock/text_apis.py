"""The mock upstream's ``POST /v1/responses`` and legacy ``POST /v1/completions``.

Each request is read as the chat request it amounts to (the Responses ``instructions`` and
``input`` items, or the completion ``prompt``, as messages) and answered by the chat planner,
so answers, token counts, reasoning tokens, the simulated prompt cache, auth, the allow-list and
faults (status, fail_first, latency, hang, ``truncate_after``, ``chunk_delay_ms``,
``x-mock-behaviour``) behave as on chat completions. Only the wire shapes differ (text_wire.py).
Answers are text only: tools in a Responses request are not called.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from thrifty import fastjson
from thrifty.errors import InvalidRequestError, ThriftyError
from thrifty.mock import text_wire, wire
from thrifty.mock.behaviour import Faults, ModelBehaviour, merge_faults
from thrifty.mock.completion import Plan, build_plan
from thrifty.mock.embeddings import admitted_model
from thrifty.mock.faults import HEADER, parse_header
from thrifty.mock.usage import build_usage
from thrifty.tokens import content_text

if TYPE_CHECKING:
    from thrifty.mock.app import MockUpstream

_JSON = "application/json"
_SSE = "text/event-stream; charset=utf-8"
# OpenAI's default output limit of a legacy completion.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


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
        plan = build_plan(self.mock.config.seed, chat, model, behaviour)
        usage = text_wire.responses_usage(self._usage(behaviour, model, messages, [plan], plan.prompt_tokens))
        response = text_wire.response_object(self._id("resp"), self._id("msg"), int(time.time()), body, plan, usage)
        if body.get("stream"):
            return self._send(text_wire.response_events(response, behaviour.stream_chunk_words), faults)
        return Response(fastjson.dumps(response), media_type=_JSON)

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
        completion_id, created = self._id("cmpl"), int(time.time())
        if body.get("stream"):
            options = body.get("stream_options")
            with_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            chunks = text_wire.completion_chunks(completion_id, created, model, plans, usage if with_usage else None,
                                                 behaviour.stream_chunk_words)
            parts: Iterator[bytes] = (b"data: " + fastjson.dumps(c) + b"\n\n" for c in chunks)
            if faults.truncate_after is None:
                parts = _then_done(parts)
            return self._send(parts, faults)
        return Response(fastjson.dumps(text_wire.completion_object(completion_id, created, model, plans, usage)),
                        media_type=_JSON)


def _then_done(parts: Iterator[bytes]) -> Iterator[bytes]:
    yield from parts
    yield b"data: [DONE]\n\n"
