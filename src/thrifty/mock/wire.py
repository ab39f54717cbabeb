"""OpenAI chat-completions wire shapes: the response object, stream chunks and error bodies.

Only this module knows the JSON field names of a response, so a test comparing against the
OpenAI API reference has one place to look.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from thrifty.mock.completion import ChoicePlan, Plan
from thrifty.mock.logprobs import token_logprobs
from thrifty.responses_events import text_pieces

# OpenAI's error type/code/message per status, used by injected failures.
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request (injected by the mock upstream)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_error", None, "You are not allowed to use this model."),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    408: ("timeout", None, "Request timed out."),
    409: ("invalid_request_error", "conflict", "Conflict."),
    422: ("invalid_request_error", None, "Unprocessable entity."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", "overloaded", "The engine is currently overloaded, please try again later."),
    504: ("timeout", None, "Gateway timeout."),
}


def error_body(status: int, message: str | None = None, param: str | None = None) -> dict[str, Any]:
    """``{"error": {message, type, param, code}}`` for an HTTP ``status``."""
    kind, code, default = _ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, "")
    )
    text = message or default or f"Error {status} (injected by the mock upstream)."
    return {"error": {"message": text, "type": kind, "param": param, "code": code}}


def _message(choice: ChoicePlan) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": choice.content, "refusal": None}
    if choice.tool_calls:
        message["tool_calls"] = choice.tool_calls
    return message


def completion(
    plan: Plan, response_id: str, created: int, usage: dict[str, Any], fingerprint: str | None,
    service_tier: str | None = None,
) -> dict[str, Any]:
    """The non-streaming ``chat.completion`` object (``service_tier`` None: the field left out)."""
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": plan.model,
        **({"service_tier": service_tier} if service_tier is not None else {}),
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": i,
                "message": _message(choice),
                "logprobs": {"content": choice.logprobs, "refusal": None} if plan.logprobs else None,
                "finish_reason": choice.finish_reason,
            }
            for i, choice in enumerate(plan.choices)
        ],
        "usage": usage,
    }


def chunks(
    plan: Plan,
    response_id: str,
    created: int,
    usage: dict[str, Any] | None,
    fingerprint: str | None,
    words_per_chunk: int,
    service_tier: str | None = None,
) -> Iterator[dict[str, Any]]:
    """``chat.completion.chunk`` objects in order; a final usage chunk when ``usage`` is given.

    Per choice: a role chunk, content chunks of ``words_per_chunk`` words (or the tool call),
    then a chunk with the finish reason; choices are streamed one after the other, as their
    ``index`` lets clients reassemble them.
    """
    head = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": plan.model,
        **({"service_tier": service_tier} if service_tier is not None else {}),  # on every chunk, as OpenAI
        "system_fingerprint": fingerprint,
    }
    if usage is not None:
        head["usage"] = None  # with include_usage, OpenAI sends usage: null on content chunks

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, lp: Any = None) -> dict[str, Any]:
        entry = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}
        return {**head, "choices": [entry]}

    for index, choice in enumerate(plan.choices):
        yield chunk(index, {"role": "assistant", "content": "", "refusal": None})
        if choice.tool_calls:
            for t, call in enumerate(choice.tool_calls):
                fn = call["function"]
                start = {
                    "index": t,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": fn["name"], "arguments": ""},
                }
                yield chunk(index, {"tool_calls": [start]})
                yield chunk(index, {"tool_calls": [{"index": t, "function": {"arguments": fn["arguments"]}}]})
        elif choice.content:
            offset = 0
            for piece in text_pieces(choice.content, words_per_chunk):
                lp = None
                if plan.logprobs:
                    entries = token_logprobs(piece, choice.key, plan.top_logprobs, offset)
                    offset += len(entries)
                    lp = {"content": entries, "refusal": None}
                yield chunk(index, {"content": piece}, lp=lp)
        yield chunk(index, {}, choice.finish_reason)
    if usage is not None:
        yield {**head, "choices": [], "usage": usage}
