"""A routed chat stream as the Responses API's events, converted chunk by chunk as it arrives.

The events have the shapes thrifty/responses_events.py builds from a whole response (what the
mock upstream streams and what the passthrough sends for a provider that ignored ``stream``), so
the openai SDK's stream helpers, which check every item's events and ids, accept either, and
the ``response.completed`` at the end holds what the non-streamed translation
(server/responses_chat.py) would have returned for the same answer.

Chat streams a turn's text, then its tool calls (one ``index`` each): the text becomes a
``message`` output item, each call a ``function_call`` item; an item is closed (its ``.done``
events sent) when the next one starts or the stream ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from thrifty.errors import ThriftyError
from thrifty.responses_events import LAST_EVENT, BuiltEvent, error_event_data, sse
from thrifty.server import responses_chat as rc


@dataclass
class _Item:
    """The output item being streamed: a message (its parts) or a function call."""

    kind: str  # "message" or "function_call"
    index: int
    item_id: str
    parts: list[dict[str, Any]] = field(default_factory=list)  # a message's, the last one open
    call_id: str = ""
    name: str = ""
    arguments: str = ""
    tool_index: Any = None  # the chat tool call's ``index``


class StreamTranslator:
    """Chat completion chunks in, Responses events out, for one routed response."""

    def __init__(self, base: dict[str, Any], request_id: str) -> None:
        self.base = base  # a responses_chat.shell
        self.request_id = request_id
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.open: _Item | None = None
        self.finish_reason: Any = None
        self.usage: Any = None
        self.service_tier: Any = None

    def _event(self, kind: str, **fields: Any) -> BuiltEvent:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return sse(kind, data)

    def start(self) -> list[BuiltEvent]:
        pending = {**self.base, "status": "in_progress", "output": [], "usage": None}
        return [self._event("response.created", response=pending), self._event("response.in_progress", response=pending)]

    def feed(self, chunk: dict[str, Any]) -> list[BuiltEvent]:
        """The events for one chat chunk (none for a role-only or usage-only one)."""
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        if chunk.get("service_tier") is not None:
            self.service_tier = chunk["service_tier"]
        out: list[BuiltEvent] = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # the Responses API has one answer (no ``n``)
            delta = rc.obj(choice.get("delta"))
            logprobs = rc.text_logprobs(choice.get("logprobs")) if choice.get("logprobs") else []
            if isinstance(delta.get("content"), str) and delta["content"]:
                out += self._text("output_text", delta["content"], logprobs)
            elif logprobs and self.open is not None and self.open.parts and self.open.parts[-1]["type"] == "output_text":
                # A whole answer replayed as a stream (a cascade's, a provider that ignored
                # ``stream``) carries every logprob on its finishing chunk, with no text: they
                # belong to the text already sent (its .done and the completed response hold them).
                self.open.parts[-1]["logprobs"] += logprobs
            if isinstance(delta.get("refusal"), str) and delta["refusal"]:
                out += self._text("refusal", delta["refusal"])
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    out += self._call(call)
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]
        return out

    def _ids(self, item: _Item) -> dict[str, Any]:
        return {"item_id": item.item_id, "output_index": item.index}

    def _text(self, kind: str, piece: str, logprobs: list[dict[str, Any]] | None = None) -> list[BuiltEvent]:
        out: list[BuiltEvent] = []
        item = self.open
        if item is None or item.kind != "message":
            out += self._close(last=False)
            index = len(self.output)
            item = self.open = _Item("message", index, rc.item_id("msg", self.request_id, index))
            added = rc.message_item(self.request_id, index, [], "in_progress")
            out.append(self._event("response.output_item.added", output_index=index, item=added))
        ids, ci = self._ids(item), len(item.parts) - 1
        if not item.parts or item.parts[-1]["type"] != kind:
            if item.parts:
                out += self._close_part(item)
            ci = len(item.parts)
            part = rc.text_part("") if kind == "output_text" else rc.refusal_part("")
            item.parts.append(part)
            # Sent as OpenAI sends an added part: without the logprobs that come with its .done.
            added = {k: v for k, v in part.items() if k != "logprobs"}
            out.append(self._event("response.content_part.added", **ids, content_index=ci, part=added))
        key = "text" if kind == "output_text" else "refusal"
        item.parts[-1][key] += piece
        if kind == "output_text":
            item.parts[-1]["logprobs"] += logprobs or []
            out.append(self._event("response.output_text.delta", **ids, content_index=ci, delta=piece,
                                   logprobs=logprobs or []))
        else:
            out.append(self._event("response.refusal.delta", **ids, content_index=ci, delta=piece))
        return out

    def _close_part(self, item: _Item) -> list[BuiltEvent]:
        ids, ci, part = self._ids(item), len(item.parts) - 1, item.parts[-1]
        if part["type"] == "output_text":
            done = self._event("response.output_text.done", **ids, content_index=ci, text=part["text"],
                               logprobs=part["logprobs"])
        else:
            done = self._event("response.refusal.done", **ids, content_index=ci, refusal=part["refusal"])
        return [done, self._event("response.content_part.done", **ids, content_index=ci, part=part)]

    def _call(self, call: dict[str, Any]) -> list[BuiltEvent]:
        out: list[BuiltEvent] = []
        fn = rc.obj(call.get("function"))
        item = self.open
        if item is None or item.kind != "function_call" or item.tool_index != call.get("index", 0):
            out += self._close(last=False)
            index = len(self.output)
            item = self.open = _Item("function_call", index, rc.item_id("fc", self.request_id, index),
                                     call_id=str(call.get("id") or ""), name=str(fn.get("name") or ""),
                                     tool_index=call.get("index", 0))
            added = rc.call_item(self.request_id, index, item.call_id, item.name, "", "in_progress")
            out.append(self._event("response.output_item.added", output_index=index, item=added))
        piece = fn.get("arguments")
        if isinstance(piece, str) and piece:
            item.arguments += piece
            out.append(self._event("response.function_call_arguments.delta", **self._ids(item), delta=piece))
        return out

    def _close(self, last: bool) -> list[BuiltEvent]:
        """Close the open item: its last ``.done`` events; ``last``: the stream has ended."""
        item, self.open = self.open, None
        if item is None:
            return []
        status = rc.item_status(rc.is_cut(self.finish_reason), last)
        out: list[BuiltEvent] = []
        if item.kind == "message":
            out += self._close_part(item)
            whole = rc.message_item(self.request_id, item.index, item.parts, status)
        else:
            ids = self._ids(item)
            out.append(self._event("response.function_call_arguments.done", **ids, name=item.name,
                                   arguments=item.arguments))
            whole = rc.call_item(self.request_id, item.index, item.call_id, item.name, item.arguments, status)
        self.output.append(whole)
        out.append(self._event("response.output_item.done", output_index=item.index, item=whole))
        return out

    def finish(self) -> list[BuiltEvent]:
        """The events that end a stream that ended well: the last item closed and the response."""
        out = self._close(last=True)
        response = rc.finished(self.base, self.output, self.finish_reason, self.usage, self.service_tier)
        out.append(self._event(LAST_EVENT[response["status"]], response=response))
        return out

    def error(self, exc: ThriftyError, sent: int) -> BuiltEvent:
        """The Responses API's ``error`` event, ending a stream that broke after ``sent`` events
        (the SDK raises on it)."""
        return sse("error", error_event_data(exc, sent))
