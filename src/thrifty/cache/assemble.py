"""Rebuilding a complete chat response from the chunks of a finished stream (to store it)."""

from __future__ import annotations

from typing import Any

from thrifty.types import cut_or_blocked


def _merge(into: dict[str, Any], key: str, value: Any) -> None:
    """Add one delta field to a message being rebuilt: text is streamed in pieces (concatenated),
    lists in parts (extended), objects field by field; other values replace."""
    if value is None:
        return
    have = into.get(key)
    if isinstance(value, str) and isinstance(have, str):
        into[key] = have + value
    elif isinstance(value, list) and isinstance(have, list):
        have.extend(value)
    elif isinstance(value, dict):
        target = have if isinstance(have, dict) else {}
        for k, v in value.items():
            _merge(target, k, v)
        into[key] = target
    else:
        into[key] = list(value) if isinstance(value, list) else value


def _merge_call(call: dict[str, Any], delta: dict[str, Any]) -> None:
    """Add one tool-call delta to the call being rebuilt, whatever its type: a function call's
    name and arguments, and a custom tool's (GPT-5's free-form tools) input, come in pieces and
    are concatenated; ``id`` and ``type`` come once. Read as a function call whatever its type, a
    custom call was stored as a function call with no name and lost its input."""
    for key, value in delta.items():
        if key == "index":
            continue
        if key in ("id", "type"):
            if value:
                call[key] = value
        else:
            _merge(call, key, value)


def _finish_call(call: dict[str, Any]) -> dict[str, Any]:
    """A rebuilt call as a non-streaming answer carries it: a function call (the type providers
    may leave out of the deltas) always has a name and arguments, empty or not."""
    if call.get("type") is None:  # providers may send it in no delta (a function call then)
        call["type"] = "custom" if "custom" in call else "function"
    if call.get("type") == "function":
        given = call.get("function")
        fn: dict[str, Any] = given if isinstance(given, dict) else {}
        call["function"] = {**fn, "name": fn.get("name") or "", "arguments": fn.get("arguments") or ""}
    return call


def assemble(chunks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The chat.completion the chunks add up to; None unless every choice finished. Every delta
    field is kept (content, tool calls, reasoning_content, refusal, annotations...), so a later
    non-streaming hit returns what a non-streaming call would have."""
    if not chunks:
        return None
    first = chunks[0]
    choices: dict[int, dict[str, Any]] = {}
    usage: dict[str, Any] | None = None
    fingerprint = None
    for chunk in chunks:
        if chunk.get("error"):
            return None
        if chunk.get("usage"):
            usage = chunk["usage"]
        fingerprint = chunk.get("system_fingerprint") or fingerprint
        for ch in chunk.get("choices") or []:
            idx = int(ch.get("index", 0))
            slot = choices.setdefault(idx, {"msg": {}, "tools": {}, "finish": None})
            delta = ch.get("delta") or {}
            for key, value in delta.items():
                if key == "tool_calls":
                    for tc in value or []:
                        _merge_call(slot["tools"].setdefault(int(tc.get("index", 0)), {"id": None}), tc)
                elif key != "role":
                    _merge(slot["msg"], key, value)
            if ch.get("finish_reason"):
                slot["finish"] = ch["finish_reason"]
    if not choices or any(s["finish"] is None for s in choices.values()):
        return None  # an unfinished choice: the stream did not complete
    out_choices = []
    for idx in sorted(choices):
        s = choices[idx]
        fields = dict(s["msg"])
        content = fields.pop("content", None)
        if content is None and not s["tools"] and not fields.get("refusal"):
            content = ""
        msg: dict[str, Any] = {"role": "assistant", "content": content, **fields}
        if s["tools"]:
            msg["tool_calls"] = [_finish_call(s["tools"][i]) for i in sorted(s["tools"])]
        out_choices.append({"index": idx, "message": msg, "finish_reason": s["finish"]})
    response: dict[str, Any] = {"id": first.get("id", "chatcmpl-thrifty"), "object": "chat.completion",
                                "created": first.get("created", 0), "model": first.get("model", ""),
                                "choices": out_choices}
    if fingerprint:
        response["system_fingerprint"] = fingerprint
    if usage:
        response["usage"] = usage
    return response


def storable(response: dict[str, Any] | None, *, tool_calls: bool) -> bool:
    """Whether an answer may be stored: complete (a whole answer's finish_reason, ``stop``,
    ``end_turn``, ``eos``... as ``types.cut_or_blocked`` reads them, or ``length``: the same
    max_tokens, which is part of the key, gets the same cut answer), not an error, not filtered,
    some text or a refusal (not an empty answer), tool calls only if allowed."""
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
        elif finish != "length" and (not isinstance(finish, str) or cut_or_blocked(finish)):
            return False
        elif not _said(msg.get("content")) and not _said(msg.get("refusal")):
            # Neither an answer nor a refusal: an empty answer (a provider's glitch under load, a
            # reasoning model that spent the whole budget thinking) would be served for the whole
            # TTL, and to every paraphrase, where asking again may well give an answer.
            return False
    return True


def _said(text: object) -> bool:
    """Whether a message field holds some text (not absent, null, empty or only whitespace)."""
    return isinstance(text, str) and bool(text.strip())
