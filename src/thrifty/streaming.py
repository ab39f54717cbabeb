"""Turning a complete chat response into OpenAI stream chunks (cache hits, buffered cascades)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any


def response_to_chunks(response: dict[str, Any], *, chunk_chars: int = 64) -> list[dict[str, Any]]:
    """The chunks a provider would have streamed for ``response``, usage chunk last."""
    base = {
        "id": response.get("id", "chatcmpl-thrifty"),
        "object": "chat.completion.chunk",
        "created": response.get("created", 0),
        "model": response.get("model", ""),
    }
    chunks: list[dict[str, Any]] = []
    for choice in response.get("choices") or []:
        idx = choice.get("index", 0)
        msg = choice.get("message") or {}
        chunks.append({**base, "choices": [{"index": idx, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None}]})
        content = msg.get("content") or ""
        for start in range(0, len(content), chunk_chars):
            piece = content[start : start + chunk_chars]
            chunks.append({**base, "choices": [{"index": idx, "delta": {"content": piece}, "finish_reason": None}]})
        if msg.get("tool_calls"):
            calls = [{"index": i, **tc} for i, tc in enumerate(msg["tool_calls"])]
            chunks.append({**base, "choices": [{"index": idx, "delta": {"tool_calls": calls}, "finish_reason": None}]})
        chunks.append({**base, "choices": [{"index": idx, "delta": {}, "finish_reason": choice.get("finish_reason")
                                            or "stop"}]})
    if response.get("usage"):
        chunks.append({**base, "choices": [], "usage": response["usage"]})
    return chunks


async def iterate(chunks: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for chunk in chunks:
        yield chunk
