"""A provider that ignores ``stream: true`` and answers one whole chat completion (some local
servers and proxies do): the client that asked for a stream gets the answer as a stream, and the
ledger records the call at its reported usage. Before, the client was told "asked for a stream,
got a JSON body". A JSON body that is neither an answer nor an error is still refused.

Real servers on 127.0.0.1: the gateway, and a small upstream that never streams.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fixtures.served import attempt_rows, serving
from thrifty.mock.server import RunningServer, run_in_thread

USER = [{"role": "user", "content": "Say something long enough to come in more than one chunk, please."}]
ANSWER = "A whole answer, sent in one piece although a stream was asked for. " * 3


async def _chat(request: Request) -> Response:
    body = await request.json()
    if body["model"] == "odd":  # JSON, but no answer and no error
        return JSONResponse({"object": "list", "data": []})
    return JSONResponse({
        "id": "chatcmpl-whole", "object": "chat.completion", "created": 1_700_000_000, "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 21, "completion_tokens": 40, "total_tokens": 61},
    })


@pytest.fixture(scope="module")
def upstream() -> Iterator[RunningServer]:
    with run_in_thread(Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"])])) as server:
        yield server


def config(tmp_path: Path, upstream: RunningServer) -> dict[str, Any]:
    return {"providers": {"up": {"base_url": upstream.url + "/v1", "api_key": "sk-up-0000", "max_retries": 0}},
            "models": {m: {"provider": "up", "price": {"input": 1.0, "output": 2.0}} for m in ("local", "odd")},
            "ledger": {"path": str(tmp_path / "ledger.db")}}


def test_a_whole_answer_to_a_stream_request_is_streamed(tmp_path: Path, upstream: RunningServer) -> None:
    with serving(config(tmp_path, upstream)) as (gw, client):
        chunks = list(client.chat.completions.create(model="local", messages=USER, stream=True,
                                                     stream_options={"include_usage": True}))
        rows = attempt_rows(gw, "r.status, r.prompt_tokens, r.completion_tokens, r.cost_usd")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 40
    assert rows == [{"status": "ok", "prompt_tokens": 21, "completion_tokens": 40,
                     "cost_usd": pytest.approx((21 * 1.0 + 40 * 2.0) / 1e6)}]


def test_a_json_body_that_is_no_answer_is_still_refused(tmp_path: Path, upstream: RunningServer) -> None:
    with serving(config(tmp_path, upstream)) as (_, client), pytest.raises(openai.APIStatusError) as err:
        list(client.chat.completions.create(model="odd", messages=USER, stream=True))
    assert "asked for a stream, got a JSON body" in err.value.message
