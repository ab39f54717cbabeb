"""``POST /v1/completions`` (OpenAI's legacy text completions), passed through (server/passthrough.py).

thrifty reads ``model``, ``prompt`` (a string, an array of strings, an array of token ids or an
array of token-id arrays), ``max_tokens``, ``n``, ``stream`` and ``stream_options``; every other
field (``suffix``, ``echo``, ``logprobs``, ``best_of``...) is the provider's to judge. A stream
is priced from its usage chunk: thrifty asks for it (``stream_options.include_usage``) whether
or not the client did, and when the client did not, drops it again, as on chat completions; a
server that refuses the field is asked again without it, as chat streams are (``open_events``). A
provider that ignores ``stream`` and answers one whole completion has it sent as those chunks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from thrifty import fastjson
from thrifty.completion_events import completion_chunks
from thrifty.errors import InvalidRequestError, ThriftyError
from thrifty.providers.compat import CompatConfig
from thrifty.providers.error_body import stream_failure, whole_choices
from thrifty.providers.raw_http import SSEEvent
from thrifty.responses_events import BuiltEvent, sse
from thrifty.server.embeddings import valid_input
from thrifty.server.passthrough import WHOLE_WORDS, Endpoint, StreamState, checked_stream, is_int
from thrifty.types import ChatRequest, body_model


class CompletionsEndpoint(Endpoint):
    name = "completions"
    path = "/completions"
    answer = "choices"
    essential = frozenset({"model", "stream", "prompt"})

    def parse(self, body: Any) -> ChatRequest:
        model = body_model(body)
        prompt = body.get("prompt")
        if not valid_input(prompt):  # the shapes embeddings' `input` takes
            raise InvalidRequestError(
                "'prompt' is required: a non-empty string, an array of non-empty strings, an array of token ids "
                "or an array of token-id arrays.", param="prompt")
        for name in ("max_tokens", "n"):
            value = body.get(name)
            if value is not None and (not is_int(value) or value < (0 if name == "max_tokens" else 1)):
                raise InvalidRequestError(f"'{name}' must be {'a non-negative' if name == 'max_tokens' else 'a positive'}"
                                          " integer.", param=name)
        stream = checked_stream(body)
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise InvalidRequestError("'stream_options' must be an object.", param="stream_options")
        params = {k: body[k] for k in ("max_tokens", "n") if body.get(k)}
        return ChatRequest(model=model, messages=[{"role": "user", "content": p} for p in _texts(prompt)],
                           params=params, stream=stream)

    def upstream_body(self, body: dict[str, Any], upstream_model: str, compat: CompatConfig | None) -> dict[str, Any]:
        out = super().upstream_body(body, upstream_model, compat)
        if out.get("stream"):
            if compat is None or "stream_options" not in compat.drop_params:
                # Always ask for usage: thrifty must price the stream even if the client did not ask.
                raw = out.get("stream_options")
                out["stream_options"] = {**(raw if isinstance(raw, dict) else {}), "include_usage": True}
        else:
            out.pop("stream_options", None)
        return out

    def wants_usage(self, body: dict[str, Any]) -> bool:
        options = body.get("stream_options")
        return isinstance(options, dict) and bool(options.get("include_usage"))

    def answer_text(self, response: dict[str, Any]) -> str:
        return "".join(c["text"] for c in response.get("choices") or []
                       if isinstance(c, dict) and isinstance(c.get("text"), str))

    def watch(self, event: SSEEvent, state: StreamState) -> None:
        if event.done:
            state.final = True
            return
        data = event.data
        if not isinstance(data, dict):
            return
        failure = stream_failure(data, self.answer)
        if failure is not None:
            state.final, state.failure = True, failure
            return
        if data.get("usage"):
            state.usage = data["usage"]
        if data.get("service_tier"):
            state.service_tier = data["service_tier"]
        state.texts.append(self.answer_text(data))

    def client_bytes(self, event: SSEEvent, wants_usage: bool) -> bytes | None:
        data = event.data
        if wants_usage or not isinstance(data, dict) or "usage" not in data:
            return event.raw
        if not data.get("choices"):
            return None if data.get("usage") else event.raw  # the usage chunk thrifty asked for
        rest = {k: v for k, v in data.items() if k != "usage"}
        return b"data: " + fastjson.dumps(rest) + b"\n\n"

    def whole_stream(self, body: Any) -> Iterable[BuiltEvent] | None:
        if not whole_choices(body, "text", str):
            return None  # a chat completion's `message` choices, or no answer: not this endpoint's
        # The usage chunk is always built: thrifty prices from it; client_bytes drops it unasked.
        return [*(sse(None, c) for c in completion_chunks(body, WHOLE_WORDS)), sse(None, None)]

    def error_event(self, exc: ThriftyError) -> bytes:
        return b"data: " + fastjson.dumps(exc.to_openai()) + b"\n\n"


def _texts(prompt: Any) -> list[str]:
    """The prompt as texts for key checks, budget estimates and offline counts; token ids become
    one short word each (about one token each: the ids' own text would count several)."""
    if isinstance(prompt, str):
        return [prompt]
    if all(isinstance(p, int) for p in prompt):
        return [" x" * len(prompt)]
    return [p if isinstance(p, str) else " x" * len(p) for p in prompt]
