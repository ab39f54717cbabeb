"""The final event of a replayed Responses stream, found in its bytes however they are split
(server/response_resources.py), so a ``?stream=true`` retrieve can amend a background
response's ledger rows."""

from __future__ import annotations

import json

import pytest

from thrifty.server.response_resources import _FinalEvent

USAGE = {"input_tokens": 30, "output_tokens": 12}


def events(sep: bytes) -> bytes:
    def one(kind: str, payload: dict[str, object]) -> bytes:
        return b"event: " + kind.encode() + sep[: len(sep) // 2] + b"data: " + json.dumps(
            {"type": kind, **payload}).encode() + sep

    # A delta whose text names the final event must not be taken for it.
    return (one("response.created", {"response": {"id": "r", "status": "queued"}})
            + one("response.output_text.delta", {"delta": '"response.completed"'})
            + one("response.completed", {"response": {"id": "r", "status": "completed", "usage": USAGE}}))


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n"])
def test_the_last_event_is_found_wherever_the_bytes_split(sep: bytes) -> None:
    data = events(sep)
    for cut in range(1, len(data)):
        final = _FinalEvent()
        final.feed(data[:cut])
        final.feed(data[cut:])
        assert final.response == {"id": "r", "status": "completed", "usage": USAGE}, cut


def test_a_stream_without_its_last_event_or_with_bad_json_gives_nothing() -> None:
    final = _FinalEvent()
    final.feed(events(b"\n\n").rsplit(b"event: response.completed", 1)[0])
    final.feed(b'event: response.completed\ndata: {"type": "response.completed", not json\n\n')
    assert final.response is None
