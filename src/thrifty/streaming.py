"""Turning a complete chat response into OpenAI stream chunks (buffered cascades, in-process
providers, replay).

Every message field survives: content and tool calls by OpenAI's own delta rules, any other field
(``refusal``, legacy ``function_call``, ``reasoning_content``, ``annotations``, ``audio``...) as a
delta of its own, and each choice's ``logprobs`` on its finishing chunk, so that an SDK
accumulating the stream rebuilds the same message a non-streaming call returns. Before, a
streamed cascade answer that was a refusal or a legacy function call arrived empty.

``HeldStream``: a request's stream that keeps its request running (for ``Gateway.close()``)
until it ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from thrifty.loops import keep

log = logging.getLogger("thrifty.gateway")

# Message keys streamed by their own rules below; every other key is its own delta.
_OWN = frozenset(("role", "content", "tool_calls"))
# Response-level keys OpenAI repeats on every chunk.
_PER_CHUNK = ("system_fingerprint", "service_tier")


def response_to_chunks(response: dict[str, Any], *, chunk_chars: int = 64) -> list[dict[str, Any]]:
    """The chunks a provider would have streamed for ``response``, usage chunk last: a cascade's
    buffered answer, a cache hit, an in-process provider's or replayed answer, a provider that
    ignored ``stream``. Every message field is kept (``reasoning_content``, ``refusal``,
    ``annotations``...): text fields in pieces like the content (reasoning first, as providers
    send it), other fields whole in one delta; cache/assemble.py rebuilds the same message."""
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

    def emit_text(idx: int, key: str, text: str) -> None:
        for start in range(0, len(text), chunk_chars):
            emit(idx, {key: text[start : start + chunk_chars]})

    for choice in response.get("choices") or []:
        idx = choice.get("index", 0)
        msg = choice.get("message") or {}
        content = msg.get("content")
        # A null content (a refusal, a tool call) stays null: "" made the SDK's refusal an empty text.
        emit(idx, {"role": msg.get("role") or "assistant", "content": "" if isinstance(content, str) else None})
        for key, value in msg.items():
            if key not in _OWN and value is not None:
                if isinstance(value, str):
                    emit_text(idx, key, value)
                else:
                    emit(idx, {key: value})
        if isinstance(content, str):
            emit_text(idx, "content", content)
        elif content is not None:  # content parts: one delta, as they came
            emit(idx, {"content": content})
        if msg.get("tool_calls"):
            emit(idx, {"tool_calls": [{"index": i, **tc} for i, tc in enumerate(msg["tool_calls"])]})
        logprobs = {"logprobs": choice["logprobs"]} if choice.get("logprobs") is not None else {}
        # A missing finish_reason stays missing (None), as the unstreamed answer has it: a made-up
        # "stop" passed a provider's answer that ignored `stream` for a whole one (and cached it).
        emit(idx, {}, choice.get("finish_reason"), **logprobs)
    if response.get("usage"):
        chunks.append({**base, "choices": [], "usage": response["usage"]})
    return chunks


async def iterate(chunks: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for chunk in chunks:
        yield chunk


class HeldStream:
    """``chunks``, a request's stream, as part of that request: ``release`` is called once, when
    the stream has ended (read to the end, broken, closed, or dropped by a reader that stopped),
    after ``chunks`` itself is closed, so the ledger row it writes as it closes comes first.

    Why: ``Gateway.close()`` waits for the requests it admitted; a stream outlives the handler
    that returned it, and closed under its reader it broke and its cost went unrecorded. A class,
    not an async generator: a generator dropped before its first chunk (its client left between
    the handler and the response) never runs its ``finally``, and would hold the close until its
    timeout.
    """

    def __init__(self, chunks: AsyncIterator[dict[str, Any]], release: Callable[[], None]) -> None:
        self._chunks = chunks
        self._release: Callable[[], None] | None = release
        self._loop = asyncio.get_running_loop()  # where the stream's connection and close run

    def __aiter__(self) -> HeldStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            return await self._chunks.__anext__()
        except BaseException:  # its end, a break, or its reader cancelled (a client that left)
            await self.aclose()
            raise

    async def aclose(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            await _close(self._chunks, release)

    def __del__(self) -> None:
        # Dropped unfinished: a server stops reading (without closing) a stream whose client left
        # while a chunk was being sent, or before the first one. Closed on its own loop.
        release, self._release = self._release, None
        if release is None:
            return
        try:
            if self._loop.is_closed():
                raise RuntimeError("its loop is closed")
            self._loop.call_soon_threadsafe(_close_soon, self._chunks, release)
        except RuntimeError:  # nothing left to close it on: it no longer holds anything
            release()


async def close_below(chunks: AsyncIterator[Any]) -> None:
    """Close the stream a stage's stream reads from, from that stage's ``finally``, before the
    stage's own cleanup. Why: an async generator closed (its reader left) closes only itself, so
    the streams under it ended later, when collected: the provider call was priced after the
    cascade settled and the ledger row was written ("cost unknown"), its connection held until
    then. Closed this way every stage ends in order, from the provider call up. A stream that ended
    already (read to the end, broken, cancelled) is left as it is."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:  # the stream is over either way; the stage's cleanup must still run
        log.debug("closing a stream failed", exc_info=True)


def _close_soon(chunks: AsyncIterator[dict[str, Any]], release: Callable[[], None]) -> None:
    keep(asyncio.get_running_loop().create_task(_close(chunks, release), name="thrifty: close a dropped stream"))


async def _close(chunks: AsyncIterator[dict[str, Any]], release: Callable[[], None]) -> None:
    try:
        await close_below(chunks)
    finally:
        release()  # the close must not lose the release, whatever it raised
