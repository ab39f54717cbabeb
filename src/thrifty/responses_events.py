"""A whole Responses API ``response`` object as the event stream the API would have sent for it.

Two users need the same events: the mock upstream streams its answers with them
(mock/text_apis.py), and the gateway turns a provider's whole JSON answer into them when the
provider ignored ``stream: true`` (server/responses_api.py), so the openai SDK's stream helpers
(``responses.stream(...).get_final_response()``, which check that every item's events arrive in
order and under the same ids) get what they expect from either. One builder, so the mock cannot
test the gateway against a shape the gateway does not produce.

Each output item gets ``response.output_item.added`` and ``.done``; between them, a message's
``output_text`` and ``refusal`` parts, a function call's arguments and a reasoning item's
summary and ``reasoning_text`` parts come as deltas (text split every few words). Any other item
(a web search, an image, an MCP call...) is sent whole in its ``output_item.done``. The stream
ends with ``response.completed``, ``response.incomplete`` or ``response.failed`` as the status
says, carrying the response (its usage) unchanged; there is no ``data: [DONE]``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from thrifty import fastjson
from thrifty.errors import ThriftyError

_WORDS = re.compile(r"\S+\s*|\s+")
# The statuses of a response that has finished, and the event that ends its stream.
LAST_EVENT = {"completed": "response.completed", "incomplete": "response.incomplete", "failed": "response.failed"}

Emit = Callable[..., "BuiltEvent"]  # (defined below)


class BuiltEvent(bytes):
    """A built event's bytes (``event: NAME`` / ``data: ...`` and the blank line), carrying the
    name and data it was made from: the gateway relays built events as a provider's
    (providers/raw_http.py) and reads them from these rather than decoding what was just encoded
    (the last Responses event holds the whole response). Bytes, so the mock sends them as they are."""

    name: str | None = None
    data: Any = None
    done: bool = False  # ``data: [DONE]``


def sse(name: str | None, data: Any) -> BuiltEvent:
    """The event named ``name`` (None: no ``event:`` line) carrying ``data`` as JSON, or
    ``[DONE]`` when ``data`` is None."""
    head = b"event: " + name.encode() + b"\n" if name else b""
    out = BuiltEvent(head + b"data: " + (b"[DONE]" if data is None else fastjson.dumps(data)) + b"\n\n")
    out.name, out.data, out.done = name, data, data is None
    return out


def error_event_data(exc: ThriftyError, seq: int) -> dict[str, Any]:
    """The ``error`` event that ends a broken Responses stream, as its ``seq``-th event: the
    fields the SDK's ``ResponseErrorEvent`` requires (``sequence_number`` among them) and
    OpenAI's error object beside them, on which the SDK raises."""
    err = exc.to_openai()["error"]
    return {"type": "error", "sequence_number": seq, "code": err["code"], "message": err["message"],
            "param": err["param"], "error": err}


def text_pieces(text: str, words_per_chunk: int) -> list[str]:
    """``text`` cut every ``words_per_chunk`` words (spaces kept), as a stream would deliver it."""
    words = _WORDS.findall(text)
    step = max(1, words_per_chunk)
    return ["".join(words[i:i + step]) for i in range(0, len(words), step)]


def finished_response(body: Any) -> bool:
    """Whether ``body`` is a whole Responses API answer: a response object with an ``output``
    list that has finished (completed, incomplete or failed; no status is read as completed).
    A queued or in-progress one (a background run) has no answer to stream yet."""
    if not isinstance(body, dict) or body.get("object", "response") != "response":
        return False
    output = body.get("output")
    if not isinstance(output, list) or not all(isinstance(item, dict) for item in output):
        return False
    return body.get("status") is None or body.get("status") in LAST_EVENT


def response_events(response: dict[str, Any], words_per_chunk: int) -> Iterator[BuiltEvent]:
    """The Responses stream of a finished ``response``: ``event: NAME`` / ``data: {...}`` pairs."""
    seq = 0

    def event(kind: str, **fields: Any) -> BuiltEvent:
        nonlocal seq
        data = {"type": kind, "sequence_number": seq, **fields}
        seq += 1
        return sse(kind, data)

    pending = {**response, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None,
               "error": None}
    yield event("response.created", response=pending)
    yield event("response.in_progress", response=pending)
    for index, item in enumerate(response.get("output") or []):
        yield from _item_events(event, index, item, words_per_chunk)
    yield event(LAST_EVENT.get(response.get("status") or "completed", "response.completed"), response=response)


def _item_events(event: Emit, index: int, item: dict[str, Any], words: int) -> Iterator[BuiltEvent]:
    """One output item's events, from ``output_item.added`` to ``output_item.done``."""
    kind = item.get("type")
    ids = {"item_id": item.get("id"), "output_index": index}
    # Added as it looks before its text arrives; an item with a status is still in progress.
    status = {"status": "in_progress"} if "status" in item else {}
    if kind == "message":
        yield event("response.output_item.added", output_index=index, item={**item, **status, "content": []})
        for ci, part in enumerate(item.get("content") or []):
            yield from _part_events(event, ids, ci, part, words)
    elif kind == "function_call":
        raw = item.get("arguments")
        arguments = raw if isinstance(raw, str) else ""
        yield event("response.output_item.added", output_index=index, item={**item, **status, "arguments": ""})
        for piece in text_pieces(arguments, words):
            yield event("response.function_call_arguments.delta", **ids, delta=piece)
        yield event("response.function_call_arguments.done", **ids, name=item.get("name"), arguments=arguments)
    elif kind == "reasoning":
        empty: dict[str, Any] = {"summary": [], **({"content": []} if "content" in item else {})}
        yield event("response.output_item.added", output_index=index, item={**item, **status, **empty})
        yield from _reasoning_events(event, ids, item, words)
    else:  # an item with no text deltas in the API: it arrives whole
        yield event("response.output_item.added", output_index=index, item=item)
    yield event("response.output_item.done", output_index=index, item=item)


def _part_events(event: Emit, ids: dict[str, Any], ci: int, part: Any, words: int) -> Iterator[BuiltEvent]:
    """A message content part: added empty, its text as deltas, done."""
    if not isinstance(part, dict):
        return
    kind = part.get("type")
    key = {"output_text": "text", "refusal": "refusal"}.get(kind) if isinstance(kind, str) else None
    text = part.get(key) if key else None
    if key is None or not isinstance(text, str):
        yield event("response.content_part.added", **ids, content_index=ci, part=part)
        yield event("response.content_part.done", **ids, content_index=ci, part=part)
        return
    if kind == "output_text":
        yield event("response.content_part.added", **ids, content_index=ci,
                    part={"type": "output_text", "text": "", "annotations": []})
        for piece in text_pieces(text, words):
            yield event("response.output_text.delta", **ids, content_index=ci, delta=piece, logprobs=[])
        # Token logprobs do not split along words: all of them come with the finished text.
        yield event("response.output_text.done", **ids, content_index=ci, text=text,
                    logprobs=part.get("logprobs") or [])
    else:
        yield event("response.content_part.added", **ids, content_index=ci, part={"type": "refusal", "refusal": ""})
        for piece in text_pieces(text, words):
            yield event("response.refusal.delta", **ids, content_index=ci, delta=piece)
        yield event("response.refusal.done", **ids, content_index=ci, refusal=text)
    yield event("response.content_part.done", **ids, content_index=ci, part=part)


def _reasoning_events(event: Emit, ids: dict[str, Any], item: dict[str, Any], words: int) -> Iterator[BuiltEvent]:
    """A reasoning item's summary parts and ``reasoning_text`` content as deltas."""
    for si, part in enumerate(item.get("summary") or []):
        text = part.get("text") if isinstance(part, dict) else None
        if not isinstance(text, str):
            continue
        yield event("response.reasoning_summary_part.added", **ids, summary_index=si,
                    part={"type": "summary_text", "text": ""})
        for piece in text_pieces(text, words):
            yield event("response.reasoning_summary_text.delta", **ids, summary_index=si, delta=piece)
        yield event("response.reasoning_summary_text.done", **ids, summary_index=si, text=text)
        yield event("response.reasoning_summary_part.done", **ids, summary_index=si, part=part)
    for ci, part in enumerate(item.get("content") or []):
        text = part.get("text") if isinstance(part, dict) else None
        if not isinstance(text, str):
            continue
        for piece in text_pieces(text, words):
            yield event("response.reasoning_text.delta", **ids, content_index=ci, delta=piece)
        yield event("response.reasoning_text.done", **ids, content_index=ci, text=text)
