"""``POST /v1/responses`` (OpenAI's Responses API), passed through (server/passthrough.py).

Only for a catalog model of a ``native`` provider (the default): ``auto``, routes and the models
of a provider with ``compat.responses: chat`` are served by the chat pipeline
(server/responses_routed.py). A ``native`` provider's 404 is relayed with the sentence naming
that setting (``explain``): most cheap providers have no /responses at all.

thrifty reads only what it needs: ``model``, ``input`` (a string or an array of items),
``instructions``, ``max_output_tokens`` and ``stream``; every other field (``tools``,
``reasoning``, ``text``, ``previous_response_id``, ``store``...) is the provider's to judge.
Usage is the Responses API's (``input_tokens`` with ``input_tokens_details.cached_tokens``,
``output_tokens`` with ``output_tokens_details.reasoning_tokens``), read by ``Usage.from_openai``;
a stream's is in its last event (``response.completed``, or ``response.incomplete`` /
``response.failed``, which are billed too). These streams have no ``data: [DONE]``. A provider
that ignores ``stream`` and answers a finished response object has it sent as those events
(thrifty/responses_events.py, which the mock upstream streams with too).

A response the provider stores (its ``store`` is not false) is remembered in the
``ResponseIndex`` (server/stored_responses.py) under the caller's key and tenant, before the
client sees its id, so ``GET /v1/responses/{id}`` and its siblings find the provider
(server/response_resources.py). A ``previous_response_id`` that thrifty knows as another
tenant's is refused with the 404 OpenAI gives for an unknown one, so a key cannot continue
(and read) another tenant's conversation; one thrifty never passed through is the provider's to judge.

A ``background: true`` create answered queued or in progress carries no usage: its ledger rows
hold the prompt counted offline, and its index entry is marked ``pending`` until a retrieve
relays it finished with its usage and the rows are amended (server/response_resources.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from thrifty.errors import (
    InvalidRequestError,
    NotFoundError,
    ThriftyError,
    UpstreamError,
    UpstreamStatusError,
)
from thrifty.pipeline.context import Attempt, RequestContext
from thrifty.providers.compat import CompatConfig
from thrifty.providers.error_body import stream_failure
from thrifty.providers.raw_http import SSEEvent
from thrifty.responses_events import BuiltEvent, error_event_data, finished_response, response_events, sse
from thrifty.server.passthrough import (
    WHOLE_WORDS,
    Endpoint,
    StreamState,
    checked_stream,
    is_int,
    request_body,
)
from thrifty.server.responses_chat import obj
from thrifty.server.responses_routed import RoutedServe, routed_handler
from thrifty.server.stored_responses import ResponseIndex, StoredResponse
from thrifty.tokens import content_text
from thrifty.types import ChatRequest, body_model

if TYPE_CHECKING:
    from thrifty.catalog import ModelInfo
    from thrifty.gateway import Gateway

# The events that end a Responses stream; the three response.* ones carry the final usage.
LAST_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Deltas of text that bills as output (counted offline when a stream brings no usage).
_DELTAS = frozenset({"response.output_text.delta", "response.refusal.delta", "response.function_call_arguments.delta",
                     "response.reasoning_text.delta", "response.reasoning_summary_text.delta"})
# A background response's status until it ends (completed, incomplete, failed or cancelled).
_RUNNING = frozenset({"queued", "in_progress"})
# A request may continue a stored response or a conversation, or use a stored prompt, instead of `input`.
_INPUT_SOURCES = ("previous_response_id", "conversation", "prompt")
# A provider's 404 codes that say the endpoint exists (the model or a stored response does not).
_NOT_THE_ENDPOINT = frozenset({"model_not_found", "previous_response_not_found"})


class ResponsesEndpoint(Endpoint):
    name = "responses"
    path = "/responses"
    answer = "output"
    essential = frozenset({"model", "stream", "input"})

    def __init__(self, index: ResponseIndex | None = None) -> None:
        self.index = index  # None: ids are not remembered (a gateway without the sub-resource routes)

    def parse(self, body: Any) -> ChatRequest:
        model = body_model(body)
        value = body.get("input")
        if value is None:
            if not any(body.get(k) for k in _INPUT_SOURCES):
                raise InvalidRequestError("'input' is required (a string or an array of input items) unless "
                                          "previous_response_id, conversation or prompt is given.", param="input")
        elif not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, dict) for v in value))):
            raise InvalidRequestError("'input' must be a string or an array of input item objects.", param="input")
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise InvalidRequestError("'instructions' must be a string.", param="instructions")
        limit = body.get("max_output_tokens")
        if limit is not None and (not is_int(limit) or limit < 1):
            raise InvalidRequestError("'max_output_tokens' must be a positive integer.", param="max_output_tokens")
        stream = checked_stream(body)
        messages = [{"role": "system", "content": instructions}] if instructions else []
        messages += _messages(value)
        params: dict[str, Any] = {}
        if limit is not None:
            params["max_tokens"] = limit  # what budgets read as the output limit
        tools = body.get("tools")
        if isinstance(tools, list) and all(isinstance(t, dict) for t in tools):
            params["tools"] = tools  # counted in a budget's prompt estimate, as for chat
        return ChatRequest(model=model, messages=messages or [{"role": "user", "content": ""}], params=params,
                           stream=stream)

    def upstream_body(self, body: dict[str, Any], upstream_model: str, compat: CompatConfig | None) -> dict[str, Any]:
        out = super().upstream_body(body, upstream_model, compat)
        items = out.get("input")
        if compat is not None and compat.developer_role == "system" and isinstance(items, list):
            out["input"] = [{**i, "role": "system"} if i.get("role") == "developer" else i for i in items]
        return out

    def reported_error(self, provider: str, response: dict[str, Any],
                       redact: Callable[[str], str]) -> UpstreamError | None:
        # A response object is an answer even when it failed (its `error` is the run's, and a
        # background create's rows are settled from it later).
        if response.get("object") == "response":
            return None
        return super().reported_error(provider, response, redact)

    def explain(self, exc: UpstreamError, info: ModelInfo) -> None:
        # Most cheap providers have no Responses API (a 404 for the path): the setting that serves
        # their models is named, not guessed at. A 404 about the model or a stored id is not that:
        # its code says so, or (OpenRouter's "No endpoints found for X.") its message names the model.
        if not isinstance(exc, UpstreamStatusError) or exc.upstream_status != 404:
            return
        error = obj(obj(exc.body).get("error"))
        if error.get("code") in _NOT_THE_ENDPOINT or info.upstream_model in str(error.get("message") or ""):
            return
        provider = info.provider
        exc.message += (f" If provider '{provider}' has no /responses endpoint, set "
                        f"providers.{provider}.compat.responses: chat in the gateway configuration to "
                        "serve its models' Responses API requests as chat completions.")

    def answer_text(self, response: dict[str, Any]) -> str:
        parts: list[str] = []
        for item in response.get("output") or []:
            if not isinstance(item, dict):
                continue
            for key in ("name", "arguments"):  # a function call
                if isinstance(item.get(key), str):
                    parts.append(item[key])
            for part in [*(item.get("content") or []), *(item.get("summary") or [])]:
                if isinstance(part, dict):
                    for key in ("text", "refusal"):
                        if isinstance(part.get(key), str):
                            parts.append(part[key])
        return "".join(parts)

    async def check(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        previous = body.get("previous_response_id")
        if self.index is None or not isinstance(previous, str) or not previous:
            return
        entry = await self.index.find(previous)
        if entry is not None and entry.tenant != ctx.tenant:
            raise NotFoundError(f"Previous response with id '{previous}' not found.", param="previous_response_id",
                                code="previous_response_not_found")

    def stored_id(self, response: dict[str, Any]) -> str | None:
        rid = response.get("id")
        return rid if isinstance(rid, str) and rid and response.get("store") is not False else None

    async def remember(self, ctx: RequestContext, attempt: Attempt, stored_id: str) -> None:
        if self.index is not None:
            await self.index.remember(StoredResponse(stored_id, ctx.request_id, attempt.model, attempt.provider,
                                                     ctx.key_id, ctx.tenant, pending=_unfinished(ctx)))

    def watch(self, event: SSEEvent, state: StreamState) -> None:
        data = event.data
        if not isinstance(data, dict):
            return
        kind = data.get("type") or event.name
        if state.stored_id is None and isinstance(data.get("response"), dict):
            state.stored_id = self.stored_id(data["response"])  # response.created names it first
        if kind in _DELTAS and isinstance(data.get("delta"), str):
            state.texts.append(data["delta"])
        elif kind in LAST_EVENTS:
            state.final = True
            response = obj(data.get("response"))
            state.usage, state.service_tier = response.get("usage"), response.get("service_tier")
            if kind == "response.failed":
                state.failure = f"response failed: {obj(response.get('error')).get('message') or 'no reason given'}"
        elif kind in ("error", None) and (failure := stream_failure(data, self.answer)) is not None:
            state.final, state.failure = True, failure
        elif kind == "error":  # an error event that says nothing of it
            state.final, state.failure = True, "stream error: no message"

    def routed(self, gateway: Gateway) -> RoutedServe:
        # `auto`, routes and the models of a provider with `compat.responses: chat` (it has no
        # /responses): translated to a chat completion and served by the chat pipeline.
        return routed_handler(gateway)

    def whole_stream(self, body: Any) -> Iterable[BuiltEvent] | None:
        # A finished response object (a failed one too: its stream ends in response.failed).
        return response_events(body, WHOLE_WORDS) if finished_response(body) else None

    def error_event(self, exc: ThriftyError) -> bytes:
        return self.stream_error(exc, 0)

    def stream_error(self, exc: ThriftyError, sent: int) -> bytes:
        # The Responses API's error event, numbered after the provider's events it follows.
        return sse("error", error_event_data(exc, sent))


def _unfinished(ctx: RequestContext) -> bool:
    """A ``background: true`` response that has not finished: its usage (and so its real cost)
    comes later, on a retrieve (stored_responses.py, ``amend``). A streamed one is remembered at
    its first event, before it finishes; its stream's usage is replaced by the same figures then,
    or by the full ones when the client left the stream early."""
    if request_body(ctx).get("background") is not True:
        return False
    status = "queued" if ctx.request.stream else obj(ctx.response).get("status")
    return status in _RUNNING


def _messages(value: Any) -> list[dict[str, Any]]:
    """``input`` as chat messages, for key checks, budget estimates and offline counts: a message's
    content parts are kept as they are (their text is read as chat's, and ``input_image`` /
    ``input_file`` parts count by the same media estimate: read as text only, they counted 0)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    out: list[dict[str, Any]] = []
    for item in value or []:
        role = item.get("role")
        if isinstance(role, str):
            content = item.get("content")
            out.append({"role": role, "content": content if isinstance(content, list) else content_text(content)})
        else:  # a function call, its output, a reasoning item: its JSON is what the model reads, roughly
            out.append({"role": "user", "content": json.dumps(item, sort_keys=True)})
    return out
