"""Replaying a stored answer as a stream, every message field included.

``thrifty.streaming.response_to_chunks`` streams the content and tool calls only; a cached answer
stored from a non-streaming response also carries fields such as ``reasoning_content``,
``reasoning``, ``refusal`` or ``annotations``, which a streaming hit must not drop. Text fields
are streamed in pieces like the content (reasoning first, as providers send it), other fields
whole in one delta; assemble.py rebuilds the same message from such chunks.
"""

from __future__ import annotations

from typing import Any

# Message keys streamed by their own rules below; every other key is replayed as it is.
_OWN = ("role", "content", "tool_calls")


def replay_chunks(response: dict[str, Any], *, chunk_chars: int = 64) -> list[dict[str, Any]]:
    """The chunks a provider would have streamed for ``response``, usage chunk last."""
    base = {"id": response.get("id", "chatcmpl-thrifty"), "object": "chat.completion.chunk",
            "created": response.get("created", 0), "model": response.get("model", "")}
    if response.get("system_fingerprint"):
        base["system_fingerprint"] = response["system_fingerprint"]
    chunks: list[dict[str, Any]] = []

    def delta(idx: int, d: dict[str, Any], finish: str | None = None) -> None:
        chunks.append({**base, "choices": [{"index": idx, "delta": d, "finish_reason": finish}]})

    for choice in response.get("choices") or []:
        idx = choice.get("index", 0)
        msg = choice.get("message") or {}
        content = msg.get("content")
        delta(idx, {"role": msg.get("role", "assistant"), "content": "" if isinstance(content, str) else None})
        for key, value in msg.items():
            if key in _OWN or value is None:
                continue
            if isinstance(value, str):
                for start in range(0, len(value), chunk_chars):
                    delta(idx, {key: value[start:start + chunk_chars]})
            else:
                delta(idx, {key: value})
        if isinstance(content, str):
            for start in range(0, len(content), chunk_chars):
                delta(idx, {"content": content[start:start + chunk_chars]})
        if msg.get("tool_calls"):
            delta(idx, {"tool_calls": [{"index": i, **tc} for i, tc in enumerate(msg["tool_calls"])]})
        delta(idx, {}, choice.get("finish_reason") or "stop")
    if response.get("usage"):
        chunks.append({**base, "choices": [], "usage": response["usage"]})
    return chunks
