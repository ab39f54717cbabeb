"""Rebuilding a complete chat response from the chunks of a finished stream (to store it)."""

from __future__ import annotations

from typing import Any


def assemble(chunks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The chat.completion the chunks add up to; None unless every choice finished."""
    if not chunks:
        return None
    first = chunks[0]
    choices: dict[int, dict[str, Any]] = {}
    usage: dict[str, Any] | None = None
    for chunk in chunks:
        if chunk.get("error"):
            return None
        if chunk.get("usage"):
            usage = chunk["usage"]
        for ch in chunk.get("choices") or []:
            idx = int(ch.get("index", 0))
            slot = choices.setdefault(idx, {"content": [], "tools": {}, "finish": None, "role": "assistant"})
            delta = ch.get("delta") or {}
            if isinstance(delta.get("content"), str):
                slot["content"].append(delta["content"])
            for tc in delta.get("tool_calls") or []:
                t = slot["tools"].setdefault(int(tc.get("index", 0)), {"id": None, "type": "function",
                                                                       "function": {"name": "", "arguments": ""}})
                if tc.get("id"):
                    t["id"] = tc["id"]
                fn = tc.get("function") or {}
                t["function"]["name"] += fn.get("name") or ""
                t["function"]["arguments"] += fn.get("arguments") or ""
            if ch.get("finish_reason"):
                slot["finish"] = ch["finish_reason"]
    if not choices or any(s["finish"] is None for s in choices.values()):
        return None  # an unfinished choice: the stream did not complete
    out_choices = []
    for idx in sorted(choices):
        s = choices[idx]
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(s["content"]) if s["content"] or not s["tools"]
                               else None}
        if s["tools"]:
            msg["tool_calls"] = [s["tools"][i] for i in sorted(s["tools"])]
        out_choices.append({"index": idx, "message": msg, "finish_reason": s["finish"]})
    response: dict[str, Any] = {"id": first.get("id", "chatcmpl-thrifty"), "object": "chat.completion",
                                "created": first.get("created", 0), "model": first.get("model", ""),
                                "choices": out_choices}
    if usage:
        response["usage"] = usage
    return response


_STORABLE_FINISH = frozenset({"stop", "length"})


def storable(response: dict[str, Any] | None, *, tool_calls: bool) -> bool:
    """Whether an answer may be stored: complete, not an error, not filtered, tool calls only if allowed."""
    if not isinstance(response, dict) or response.get("error"):
        return False
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    for ch in choices:
        msg = ch.get("message") if isinstance(ch, dict) else None
        if not isinstance(msg, dict):
            return False
        finish = ch.get("finish_reason")
        if msg.get("tool_calls") or msg.get("function_call") or finish in ("tool_calls", "function_call"):
            if not tool_calls:
                return False
        elif finish not in _STORABLE_FINISH or not isinstance(msg.get("content"), str):
            return False
    return True
