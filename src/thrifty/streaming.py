"""Turning a complete chat response into OpenAI stream chunks (buffered cascades, in-process
providers, replay).

Every message field survives: content and tool calls by OpenAI's own delta rules, any other field
(``refusal``, legacy ``function_call``, ``reasoning_content``, ``annotations``, ``audio``...) as a
delta of its own, and each choice's ``logprobs`` on its finishing chunk, so that an SDK
accumulating the stream rebuilds the same message a non-streaming call returns. Before, a
streamed cascade answer that was a refusal or a legacy function call arrived empty.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

# Message keys streamed by their own rules below; every other key is its own delta.
_OWN = frozenset(("role", "content", "tool_calls"))
# Response-level keys OpenAI repeats on every chunk.
_PER_CHUNK = ("system_fingerprint", "service_tier")


def response_to_chunks(response: dict[str, Any], *, chunk_chars: int = 64) -> list[dict[str, Any]]:
    """The chunks a provider would have streamed for ``response``, usage chunk last."""
    base: dict[str, Any] = {
        "id": response.get("id", "chatcmpl-thrifty"),
        "object": "chat.completion.chunk",
        "created": response.get("created", 0),
        "model": response.get("model", ""),
    }
    base.update({k: response[k] for k in _PER_CHUNK if response.get(k) is not None})
    chunks: list[dict[str, Any]] = []

    def emit(idx: int, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
        chunks.append({**base, "choices": [{"index": idx, "delta": delta, "finish_reason": finish, **extra}]})

    for choice in response.get("choices") or []:
        idx = choice.get("index", 0)
        msg = choice.get("message") or {}
        emit(idx, {"role": msg.get("role") or "assistant", "content": ""})
        for key, value in msg.items():
            if key not in _OWN and value is not None:
                emit(idx, {key: value})
        content = msg.get("content")
        if isinstance(content, str):
            for start in range(0, len(content), chunk_chars):
                emit(idx, {"content": content[start : start + chunk_chars]})
        elif content is not None:  # content parts: one delta, as they came
            emit(idx, {"content": content})
        if msg.get("tool_calls"):
            emit(idx, {"tool_calls": [{"index": i, **tc} for i, tc in enumerate(msg["tool_calls"])]})
        logprobs = {"logprobs": choice["logprobs"]} if choice.get("logprobs") is not None else {}
        emit(idx, {}, choice.get("finish_reason") or "stop", **logprobs)
    if response.get("usage"):
        chunks.append({**base, "choices": [], "usage": response["usage"]})
    return chunks


async def iterate(chunks: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for chunk in chunks:
        yield chunk
