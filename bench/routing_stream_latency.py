"""Latency a cascade adds to streaming: a single-model route streams straight through; a
cascaded route buffers the cheap answer, scores it, then streams the accepted one. An agreement
route asks its two cheap models at once (``agreement.parallel``, the default) or one after the
other (``parallel: false``, the old path): both are measured, cheap answers agreeing and not.

Upstream: an in-process provider that sends the first chunk after FIRST_MS and the remaining
chunks CHUNK_MS apart (so a full answer takes FIRST_MS + CHUNKS x CHUNK_MS). Measures time to
first token (TTFT) and to the last token, through the real Gateway pipeline.

    .venv/bin/python bench/routing_stream_latency.py [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

from mdreport import write_section
from thrifty.gateway import Gateway
from thrifty.providers.function import chat_response
from thrifty.streaming import response_to_chunks
from thrifty.types import ChatRequest

FIRST_MS, CHUNK_MS, CHUNKS, RUNS = 150.0, 10.0, 30, 15
ANSWER = "B " + "because whales are mammals " * 3
OTHER = "A " + "because sharks are big " * 3  # the answer of the model that disagrees
MC = "Which is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel"


class PacedProvider:
    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep((FIRST_MS + CHUNKS * CHUNK_MS) / 1000)
        return chat_response(body["model"], OTHER if body["model"] == "other" else ANSWER)

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        await asyncio.sleep(FIRST_MS / 1000)
        words = ANSWER.split(" ")
        per = max(1, len(words) // CHUNKS)
        for i in range(0, len(words), per):
            text = " ".join(words[i:i + per]) + " "
            yield {"id": "x", "object": "chat.completion.chunk", "model": body["model"],
                   "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
            await asyncio.sleep(CHUNK_MS / 1000)
        for chunk in response_to_chunks(chat_response(body["model"], ""))[-1:]:
            yield chunk

    async def aclose(self) -> None:
        return None


def gateway() -> Gateway:
    cfg = {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}},
        "models": {"cheap": {"provider": "p", "price": {"input": 0.1, "output": 0.2}},
                   "cheap2": {"provider": "p", "price": {"input": 0.1, "output": 0.2}},
                   "other": {"provider": "p", "price": {"input": 0.1, "output": 0.2}},
                   "big": {"provider": "p", "price": {"input": 10, "output": 30}}},
        "ledger": {"enabled": False},
        "routing": {"default_route": "single", "routes": {
            "single": {"model": "cheap"},
            "cascade": {"tiers": [{"model": "cheap", "threshold": 0.5}, {"model": "big"}]},
            "escalating": {"tiers": [{"model": "cheap", "threshold": 0.99}, {"model": "big"}]},
            **{f"{name}{suffix}": {"agreement": {"models": ["cheap", second], "fallback": "big", "parallel": parallel}}
               for name, second in (("agree", "cheap2"), ("disagree", "other"))
               for suffix, parallel in (("", True), ("_seq", False))}}},
    }
    return Gateway.from_config(cfg, providers={"p": PacedProvider()})  # type: ignore[dict-item]


async def one(gw: Gateway, route: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    ctx = await gw.handle(ChatRequest.from_body({"model": f"route:{route}", "stream": True,
                                                 "messages": [{"role": "user", "content": MC}]}))
    assert ctx.chunks is not None
    first = None
    async for c in ctx.chunks:
        if first is None and c.get("choices") and c["choices"][0]["delta"].get("content"):
            first = time.perf_counter() - t0
    return (first or 0.0) * 1000, (time.perf_counter() - t0) * 1000


async def main(write: bool) -> None:
    gw = gateway()
    rows = []
    results: dict[str, tuple[float, float]] = {}
    for route, label in (("single", "single model (streams through)"),
                         ("cascade", "cascade, cheap answer accepted (buffered)"),
                         ("escalating", "cascade, escalated to the strong tier (buffered)"),
                         ("agree_seq", "agreement, two cheap answers agree: asked in turn (`parallel: false`)"),
                         ("agree", "agreement, two cheap answers agree: asked at once"),
                         ("disagree_seq", "agreement, cheap answers differ, strong model: asked in turn"),
                         ("disagree", "agreement, cheap answers differ, strong model: asked at once")):
        runs = [await one(gw, route) for _ in range(RUNS)]
        ttft = statistics.median(r[0] for r in runs)
        total = statistics.median(r[1] for r in runs)
        results[route] = (ttft, total)
        rows.append(f"| {label} | {ttft:.0f} | {total:.0f} |")
    base_ttft, base_total = results["single"]
    body = (f"Upstream: first chunk after {FIRST_MS:.0f} ms, then {CHUNKS} chunks {CHUNK_MS:.0f} ms apart "
            f"(a full answer takes about {FIRST_MS + CHUNKS * CHUNK_MS:.0f} ms). Median of {RUNS} requests.\n\n"
            "| route | time to first token (ms) | time to last token (ms) |\n|---|---:|---:|\n" + "\n".join(rows) +
            f"\n\nBuffering adds {results['cascade'][0] - base_ttft:.0f} ms to the first token when the cheap answer "
            f"is accepted (the whole cheap answer is generated and scored before the first byte) and "
            f"{results['cascade'][1] - base_total:+.0f} ms to the last token; an escalated request pays for both "
            f"answers in full ({results['escalating'][0] - base_ttft:.0f} ms more to the first token). "
            "Asking an agreement route's two cheap models at once (same calls, same cost) takes "
            + "; ".join(f"{ratio(results, name)} of the in-turn time when they {how}"
                        for name, how in (("agree", "agree"), ("disagree", "differ"))) + ".")
    if write:
        write_section("routing-stream-latency", "Streaming through a cascade (issue 4)",
                      ".venv/bin/python bench/routing_stream_latency.py --write", body)
    print(body)


def ratio(results: dict[str, tuple[float, float]], route: str) -> str:
    """At once vs in turn for ``route``: time to first token and to last token, as ratios."""
    (ttft, total), (seq_ttft, seq_total) = results[route], results[f"{route}_seq"]
    return f"{ttft / seq_ttft:.2f}x (first token) and {total / seq_total:.2f}x (last token)"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    asyncio.run(main(ap.parse_args().write))
