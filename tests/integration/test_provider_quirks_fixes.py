"""Review findings on the provider quirks handling (tests/integration/test_provider_quirks.py):
the ``stream_options`` refusal learned from unrelated errors and before the retry worked, an
``error`` beside ``choices`` missed on non-streamed answers, legacy text-completion streams
failing on a server that refuses ``stream_options``, a stream without [DONE] accepted with a
whole choice missing (``n > 1``), and an all-null ``error`` beside an answer failing it.

Real servers on 127.0.0.1: the gateway (driven by the real ``openai`` client) and a small
scripted upstream that answers as the servers named in each test do.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fixtures.served import attempt_rows, serving
from thrifty.gateway import Gateway
from thrifty.mock.server import run_in_thread

ASK: Any = [{"role": "user", "content": "Tell me about the weather in Paris today please"}]
PRICE = {"input": 1.0, "output": 2.0}
SEEN: dict[str, list[dict[str, Any]]] = {}  # model -> bodies the upstream received, oldest first
REFUSED = {"error": {"message": "Unrecognized request argument supplied: stream_options", "type":
                     "invalid_request_error", "param": "stream_options", "code": None}}


def _vllm_400(body: dict[str, Any]) -> dict[str, Any]:
    """vLLM's validation 400 for an unrelated field: it quotes the whole request body."""
    return {"object": "error", "type": "BadRequestError", "param": None, "code": 400,
            "message": "1 validation error for ChatCompletionRequest\n  Value error, `max_tokens` must be at "
                       f"least 1, got -5. [type=value_error, input_value={body!r}, input_type=dict]"}


def _chunk(model: str, choices: list[dict[str, Any]], **extra: Any) -> bytes:
    event = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
             "choices": choices, **extra}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def _delta(index: int, text: str, finish: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": {"role": "assistant", "content": text}, "finish_reason": finish}


def _sse(parts: list[bytes]) -> StreamingResponse:
    return StreamingResponse(iter(parts), media_type="text/event-stream")


async def _chat(request: Request) -> Response:
    body = await request.json()
    model = body["model"]
    SEEN.setdefault(model, []).append(body)
    if model == "vllm-strict":  # refuses anything but its own validation, quoting the body
        return JSONResponse(_vllm_400(body), status_code=400)
    if model == "refuse-then-fail":  # refuses stream_options, then fails the retry too
        return JSONResponse(REFUSED if "stream_options" in body else {"error": {"message": "overloaded"}},
                            status_code=400 if "stream_options" in body else 503)
    if model in ("n2-cut", "n2-whole"):  # no [DONE]: a server that ends on the finish_reasons
        parts = [_chunk(model, [_delta(0, "Sunny ")]), _chunk(model, [_delta(0, "today.", "stop")])]
        if model == "n2-whole":
            parts += [_chunk(model, [_delta(1, "Rainy.", "stop")])]
        return _sse(parts)
    error = {"code": None, "message": None} if model == "null-error" else {
        "code": 502, "message": "Provider disconnected unexpectedly"}
    if body.get("stream"):
        return _sse([_chunk(model, [_delta(0, "Sunny ")]),
                     _chunk(model, [_delta(0, "today.", "stop")], error=error), b"data: [DONE]\n\n"])
    return JSONResponse({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model, "error": error,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sunny"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}})


async def _completions(request: Request) -> Response:
    """Legacy text completions from a server that refuses ``stream_options`` (older Azure OpenAI)."""
    body = await request.json()
    SEEN.setdefault(body["model"], []).append(body)
    if "stream_options" in body:
        return JSONResponse(REFUSED, status_code=400)
    chunks = [{"id": "cmpl-1", "object": "text_completion", "created": 1, "model": body["model"],
               "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
              for text, finish in (("Sunny ", None), ("today.", "stop"))]
    return _sse([b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"])


MODELS = ("vllm-strict", "refuse-then-fail", "n2-cut", "n2-whole", "error-beside", "null-error", "legacy")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, openai.OpenAI]]:
    tmp: Path = tmp_path_factory.mktemp("quirks_fixes")
    app = Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"]),
                            Route("/v1/completions", _completions, methods=["POST"])])
    with run_in_thread(app) as upstream, serving({
        "providers": {"p": {"base_url": upstream.url + "/v1", "api_key": "sk-test-0000", "max_retries": 0}},
        "models": {name: {"provider": "p", "price": PRICE} for name in MODELS},
        "cache": {"enabled": False},
        "ledger": {"path": str(tmp / "ledger.db")},
    }) as (gw, client):
        yield gw, client
        gw.close()


def _stream_text(client: openai.OpenAI, model: str, **kw: Any) -> str:
    out: list[str] = []
    for chunk in client.chat.completions.create(model=model, messages=ASK, stream=True, **kw):
        out.extend(c.delta.content or "" for c in chunk.choices)
    return "".join(out)


def test_an_unrelated_400_quoting_the_body_is_no_refusal(served: tuple[Gateway, openai.OpenAI],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """vLLM's validation 400s quote the whole request body, ``stream_options`` included: read as a
    refusal of the field (it was "mentioned"), the stream was asked again without it and the model
    was never sent it again for the life of the process, with a false "refused stream_options"
    warning; its usage went unreported from then on."""
    _, client = served
    caplog.set_level(logging.WARNING, logger="thrifty.providers")
    for _ in range(2):
        with pytest.raises(openai.BadRequestError, match="max_tokens"):
            _stream_text(client, "vllm-strict")
    assert ["stream_options" in b for b in SEEN["vllm-strict"]] == [True, True]
    assert "refused stream_options" not in caplog.text


def test_the_refusal_is_learned_only_once_the_retry_streams(served: tuple[Gateway, openai.OpenAI],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A refusal whose retry failed too (here a 503) was learned anyway, and logged as "streaming
    without it from now on" before anything streamed: the next request went without the field."""
    _, client = served
    caplog.set_level(logging.WARNING, logger="thrifty.providers")
    for _ in range(2):
        with pytest.raises(openai.APIStatusError):
            _stream_text(client, "refuse-then-fail")
    assert ["stream_options" in b for b in SEEN["refuse-then-fail"]] == [True, False, True, False]
    assert "refused stream_options" not in caplog.text


def settled_rows(gw: Gateway, where: str, n: int, wait_s: float = 10.0) -> list[dict[str, Any]]:
    """The attempts ``where`` selects once there are ``n`` of them: a stream's row is recorded by
    the server when its stream ends, which may be just after the client read the last byte."""
    deadline = time.monotonic() + wait_s
    while True:
        rows = attempt_rows(gw, "a.status", where)
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


@pytest.mark.parametrize("stream", [False, True])
def test_an_error_beside_the_choices_fails_the_call(served: tuple[Gateway, openai.OpenAI], stream: bool) -> None:
    """OpenRouter reports a failure after the model started as an ``error`` beside ``choices``
    (openrouter.ai/docs/api/reference/errors-and-debugging). Streams saw it; a non-streamed answer
    passed for a success (its ``choices`` list was never checked for an ``error`` beside it)."""
    gw, client = served
    with pytest.raises(openai.APIError, match="Provider disconnected unexpectedly"):
        if stream:
            _stream_text(client, "error-beside")
        else:
            client.chat.completions.create(model="error-beside", messages=ASK)
    assert attempt_rows(gw, "a.status", "a.model = 'error-beside'")[-1]["status"] == "error"


@pytest.mark.parametrize("stream", [False, True])
def test_an_all_null_error_beside_an_answer_is_no_error(served: tuple[Gateway, openai.OpenAI], stream: bool) -> None:
    """Some proxies always write an ``error`` field, null-filled when nothing failed: read as an
    error ("no message"), a whole answer failed."""
    gw, client = served
    if stream:
        assert _stream_text(client, "null-error") == "Sunny today."
    else:
        assert client.chat.completions.create(model="null-error", messages=ASK).choices[0].message.content == "Sunny"
    assert attempt_rows(gw, "a.status", "a.model = 'null-error'")[-1]["status"] == "ok"


def test_a_legacy_stream_to_a_server_refusing_stream_options(served: tuple[Gateway, openai.OpenAI]) -> None:
    """Streamed ``/v1/completions`` add ``stream_options.include_usage`` too, but had neither the
    retry without it nor the learned refusal of chat streams: every streamed legacy completion
    to such a server (older Azure OpenAI api-versions) failed with a 400 the client never caused."""
    gw, client = served
    for _ in range(2):
        text = "".join(c.choices[0].text for c in client.completions.create(
            model="legacy", prompt="The weather in Paris", stream=True) if c.choices)
        assert text == "Sunny today."
    assert ["stream_options" in b for b in SEEN["legacy"]] == [True, False, False]
    assert [r["status"] for r in settled_rows(gw, "a.model = 'legacy'", 2)] == ["ok", "ok"]


def test_a_stream_without_done_needs_every_asked_choice(served: tuple[Gateway, openai.OpenAI]) -> None:
    """A stream that ends without [DONE] is whole once every choice has its finish_reason (older
    TGI, llama-box); with ``n: 2``, one finished choice and the other never seen passed for whole."""
    gw, client = served
    with pytest.raises(openai.APIError, match="truncated"):
        _stream_text(client, "n2-cut", n=2)
    assert attempt_rows(gw, "a.status", "a.model = 'n2-cut'")[-1]["status"] == "error"
    assert _stream_text(client, "n2-whole", n=2) == "Sunny today.Rainy."
