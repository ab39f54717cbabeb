"""The mock's keep-alive comments ride with the chunk they precede, so they do not count as
parts for ``truncate_after`` or wait ``chunk_delay_ms`` of their own."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from thrifty.mock import MockConfig, RunningServer, create_app, run_in_thread

BODY = {"model": "m", "messages": [{"role": "user", "content": "Tell me a long story."}], "stream": True}


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    config = MockConfig.from_dict({"seed": 3, "models": {"m": {"output_tokens": [40, 40]}}})
    with run_in_thread(create_app(config)) as running:
        yield running


def _lines(server: RunningServer, directive: str) -> tuple[list[str], float]:
    """The SSE lines of one streamed answer (up to where the mock drops it) and the seconds taken."""
    lines: list[str] = []
    start = time.monotonic()
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=BODY,
                      headers={"x-mock-behaviour": directive}, timeout=10) as response:
        try:
            for line in response.iter_lines():
                lines.append(line)
        except httpx.RemoteProtocolError:
            pass  # truncate_after drops the connection on purpose
    return lines, time.monotonic() - start


def test_truncate_after_counts_data_chunks_not_comments(server: RunningServer) -> None:
    lines, _ = _lines(server, "keep_alive; truncate_after=4")
    assert sum(line.startswith("data: {") for line in lines) == 4
    assert ": OPENROUTER PROCESSING" in lines
    assert ": keep-alive" in lines


def test_full_stream_keeps_comments_and_done(server: RunningServer) -> None:
    plain, _ = _lines(server, "chunk_delay_ms=1")
    busy, _ = _lines(server, "keep_alive; chunk_delay_ms=1")
    def data(lines: list[str]) -> int:
        return sum(line.startswith("data: ") for line in lines)

    assert data(busy) == data(plain) > 3
    assert [line for line in busy if line][-1] == "data: [DONE]"
    assert busy.count(": keep-alive") >= 2
