"""Which finished requests are captured, and the stream tap that keeps a streamed answer's text.

A capturable request is a chat completion (it went through ``CaptureStage``: the passthrough
endpoints do not) that ended ok with one whole text answer (finish_reason ``stop``), n=1, no
tool call and no refusal, sent without tools and with no tool turns in its history (the prompts
file cannot carry tools), that is not a cache hit (a stored answer is no fresh model answer).
Of those, ``rate`` are written, drawn from a generator seeded with ``seed``, up to
``max_prompts`` lines in the file. The draw is made as the answer starts (``CaptureStage``), so
only a stream that will be written is tapped.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from thrifty.cache.assemble import assemble
from thrifty.capture.config import CaptureConfig
from thrifty.capture.writer import Captured, CaptureWriter
from thrifty.pipeline.context import Handler, RequestContext
from thrifty.streaming import close_below
from thrifty.types import WHOLE_FINISH_REASONS, ChatRequest

log = logging.getLogger("thrifty.capture")

# ctx.scratch key: the client's messages, whether the request is to be written, its kept chunks.
_SEEN = "capture.seen"
# A whole text answer under the names providers give it: the whole answers but tool calls.
_WHOLE_TEXT = WHOLE_FINISH_REASONS - {"tool_calls", "function_call", "tool_use"}
# The service tiers billed at the list price (cost.py's standard tiers, or none said).
_LIST_TIERS = frozenset({None, "default", "standard", "auto"})


@dataclass
class _Seen:
    """A chat request as the client sent it (before compression) and, when streamed and to be
    written, the chunks of its answer."""

    messages: list[dict[str, Any]]
    wanted: bool = False  # to be written if it ends in one whole text answer (room, task, draw)
    chunks: list[dict[str, Any]] | None = None  # None: not streamed (or not tapped)


class _Tap:
    """A chat stream passed on chunk by chunk, each kept in ``chunks``. A class, not an async
    generator: a generator closed before its first chunk never closes the stream under it."""

    def __init__(self, chunks: AsyncIterator[dict[str, Any]], kept: list[dict[str, Any]]) -> None:
        self._chunks = chunks
        self._kept = kept

    def __aiter__(self) -> _Tap:
        return self

    async def __anext__(self) -> dict[str, Any]:
        chunk = await self._chunks.__anext__()
        self._kept.append(chunk)
        return chunk

    async def aclose(self) -> None:
        await close_below(self._chunks)


class CaptureStage:
    """Right under the ledger stage: notes the client's messages; once the task and route are
    known, draws whether the request is to be written, and taps a stream only then."""

    def __init__(self, capture: Capture) -> None:
        self._capture = capture

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> None:
        seen = _Seen(ctx.request.messages)
        ctx.scratch[_SEEN] = seen
        await call_next(ctx)
        seen.wanted = self._capture.wants(ctx)
        if seen.wanted and ctx.chunks is not None:
            seen.chunks = []
            ctx.chunks = _Tap(ctx.chunks, seen.chunks)


def _uses_tools(request: ChatRequest) -> bool:
    """Whether the request offers tools or has tool turns in its history: its prompts-file line
    could not carry the tools, so collect's candidates would answer another question (and some
    providers refuse tool turns sent without tools)."""
    if request.params.get("tools") or request.params.get("functions"):
        return True
    return any(isinstance(m, dict) and (m.get("role") in ("tool", "function") or m.get("tool_calls")
                                        or m.get("function_call")) for m in request.messages)


def _whole_text(response: dict[str, Any] | None) -> str | None:
    """The one text answer of a non-streamed response; None when it is not exactly that."""
    if not isinstance(response, dict) or response.get("error"):
        return None
    choices = response.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return None
    msg = choices[0].get("message")
    if not isinstance(msg, dict) or msg.get("tool_calls") or msg.get("function_call") or msg.get("refusal"):
        return None
    text = msg.get("content")
    return text if choices[0].get("finish_reason") in _WHOLE_TEXT and isinstance(text, str) else None


def _served_cost(ctx: RequestContext) -> float | None:
    """What the served answer's own call cost (not the request's judges and lower tiers)."""
    for a in reversed(ctx.attempts):
        if a.purpose == "answer" and a.status == "ok" and a.model == ctx.served_model:
            # A Batch API or flex call is billed below the list price that collect prices its
            # candidates at: left unknown, collect prices the reference's usage at list too.
            return a.cost_usd if not a.batch and a.service_tier in _LIST_TIERS else None
    return None


class Capture:
    """The gateway observer writing a sample of its finished chat requests to the capture file."""

    def __init__(self, cfg: CaptureConfig, path: str, writer: CaptureWriter) -> None:
        self.cfg = cfg
        self.path = path
        self.writer = writer
        self.stage = CaptureStage(self)
        self._tasks = frozenset(cfg.tasks) if cfg.tasks is not None else None
        self._rng = random.Random(cfg.seed)  # None: seeded from the OS
        self._lock = threading.Lock()  # the gateway may serve several loops (threads)
        self._count = writer.lines
        self._full_said = False

    def wants(self, ctx: RequestContext) -> bool:
        """Whether this request, its answer starting, is to be written if it ends in one whole
        text answer: one that can be, a wanted task, room left in the file, and drawn at ``rate``."""
        if ctx.cache_status == "hit" or ctx.request.params.get("n") not in (None, 1) or _uses_tools(ctx.request):
            return False
        if self._tasks is not None and not ({ctx.task, ctx.route} & self._tasks):
            return False
        with self._lock:
            return self._room() and (self.cfg.rate >= 1.0 or self._rng.random() < self.cfg.rate)

    def observe(self, ctx: RequestContext) -> None:
        seen = ctx.scratch.get(_SEEN)
        if not isinstance(seen, _Seen) or not seen.wanted or ctx.status != "ok" or ctx.served_model is None:
            return
        text = _whole_text(assemble(seen.chunks) if seen.chunks is not None else ctx.response)
        if text is None or not text.strip():
            return
        with self._lock:
            if not self._room():  # several streams drawn as the file had room for one
                return
            self._count += 1
        ref = self.cfg.reference
        self.writer.put(Captured(ctx.request_id, ctx.task or ctx.route, seen.messages,
                                 ctx.served_model if ref else None, text if ref else None,
                                 _served_cost(ctx) if ref else None))

    def _room(self) -> bool:
        """Whether the file has room for another line (said once when it has not); under the lock."""
        if self._count < self.cfg.max_prompts:
            return True
        if not self._full_said:
            self._full_said = True
            log.warning("capture: %s holds max_prompts (%d) lines: no more prompts are captured",
                        self.path, self.cfg.max_prompts)
        return False

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
