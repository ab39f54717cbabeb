"""Real providers' documented quirks of their OpenAI-compatible APIs, reproduced with the mock
upstream behind a real gateway on 127.0.0.1 and driven by the real ``openai`` client.

Each test names the provider documentation or report it follows (in its docstring); quirks thrifty
handled already are covered by tests elsewhere (test_usage_shapes_review.py, test_wire_compat.py,
test_provider_compat.py, test_provider_chaos.py ...).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from tests.fixtures.one_model import one_model_config
from tests.fixtures.served import attempt_rows, sent

from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

PRICE = {"input": 1.0, "output": 2.0}
ASK: Any = [{"role": "user", "content": "Tell me about the weather in Paris today please"}]
WAIT_S = 30  # longer than the provider's backoff cap (8 s): a retry is pointless, the client is told


def _limited(form: str) -> dict[str, Any]:
    return {"faults": {"status": 429, "retry_after": WAIT_S, "retry_after_form": form}}


MOCK = {"models": {
    "midstream-error": {"output_tokens": [20, 20], "faults": {"stream_error_after": 3}},
    "no-done": {"output_tokens": [20, 20], "faults": {"omit_done": True}},
    "busy": {"output_tokens": [20, 20], "faults": {"keep_alive": True}},
    "no-stream-options": {"output_tokens": [20, 20], "reject_params": ["stream_options"]},
    "no-done-cut": {"output_tokens": [20, 20], "faults": {"omit_done": True, "truncate_after": 3}},
    "limited-ms": _limited("ms"),
    "limited-date": _limited("http_date"),
    "limited-reset": _limited("ratelimit_reset"),
    "limited-seconds": _limited("seconds"),
}}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, openai.OpenAI, RunningServer]]:
    tmp = tmp_path_factory.mktemp("quirks")
    with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as mock:
        gw = Gateway.from_config({
            "providers": {"p": {"base_url": mock.url + "/v1", "api_key": "sk-test-0000", "max_retries": 2,
                                "backoff_base_s": 0.01}},
            "models": {name: {"provider": "p", "price": PRICE} for name in MOCK["models"]},
            "cache": {"enabled": False},
            "ledger": {"path": str(tmp / "ledger.db")},
        })
        with run_in_thread(gw.app()) as server:
            yield gw, openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-0000", max_retries=0,
                                    timeout=30), mock
        gw.close()


def _calls(mock: RunningServer, model: str) -> int:
    return int(httpx.get(mock.url + "/mock/stats").json()["calls"].get(model, 0))


def test_openrouter_midstream_error_is_a_failed_call(served: tuple[Gateway, openai.OpenAI, RunningServer]) -> None:
    """OpenRouter answers 200 once the model has started; a failure after that arrives as a stream
    chunk carrying a top-level ``error`` beside a choice whose finish_reason is "error", and the
    stream then ends (https://openrouter.ai/docs/api/reference/errors-and-debugging, "Handling
    errors during streaming"; https://openrouter.ai/docs/api/reference/streaming says such errors
    still come as ordinary data events). The gateway read that chunk as an answer (it has a
    ``choices`` list): the client got a cut answer with finish_reason "error" and no error, and the
    ledger recorded a successful call."""
    gw, client, _ = served
    got: list[str] = []
    with pytest.raises(openai.APIError) as failed:
        for chunk in client.chat.completions.create(model="midstream-error", messages=ASK, stream=True):
            got.extend(c.delta.content or "" for c in chunk.choices)
    assert "Provider disconnected unexpectedly" in str(failed.value)
    assert "".join(got)  # the part before the failure reached the client
    rows = attempt_rows(gw, "a.status, a.error", "a.model = 'midstream-error'")
    assert rows and rows[-1]["status"] == "error", rows
    assert "Provider disconnected unexpectedly" in (rows[-1]["error"] or "")


@pytest.mark.parametrize("model", ["limited-ms", "limited-date", "limited-reset", "limited-seconds"])
def test_every_retry_after_form_is_read(served: tuple[Gateway, openai.OpenAI, RunningServer], model: str) -> None:
    """Providers say when to come back in different headers: OpenAI and Azure OpenAI send
    ``retry-after-ms`` (the openai SDK reads it first, and Azure documents it beside Retry-After:
    https://learn.microsoft.com/azure/ai-services/openai/how-to/quota); RFC 9110 allows Retry-After
    as an HTTP date (https://developer.mozilla.org/docs/Web/HTTP/Headers/Retry-After); OpenAI's
    rate-limit headers give the wait as ``x-ratelimit-reset-requests`` / ``-tokens`` durations such
    as ``1s`` or ``6m0s`` (https://platform.openai.com/docs/guides/rate-limits, "Rate limits in
    headers"), Groq the same (https://console.groq.com/docs/rate-limits). Only Retry-After in
    seconds was read: for the others the gateway retried a 30 s limit at once, twice, and told
    the client nothing of when to come back."""
    _, client, mock = served
    before = _calls(mock, model)
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model=model, messages=ASK)
    assert _calls(mock, model) - before == 1  # a wait past the backoff cap is not retried
    assert time.monotonic() - started < 5
    assert abs(float(limited.value.response.headers["retry-after"]) - WAIT_S) <= 1


def test_a_finished_stream_without_done_is_complete(served: tuple[Gateway, openai.OpenAI, RunningServer]) -> None:
    """Several OpenAI-compatible servers end a chat stream without ``data: [DONE]`` once every
    choice has its finish_reason: text-generation-inference before 2.1.1
    (https://github.com/huggingface/text-generation-inference/pull/2221, for issue #1896),
    llama-box (https://github.com/gpustack/llama-box/issues/2), ik_llama.cpp
    (https://github.com/ikawrakow/ik_llama.cpp/issues/467). The gateway failed every such stream
    as "truncated" after the client had the whole answer. A stream cut before its finish_reason
    is still a truncation."""
    gw, client, _ = served
    text: list[str] = []
    finish: list[str] = []
    usage: list[Any] = []
    for chunk in client.chat.completions.create(model="no-done", messages=ASK, stream=True,
                                                stream_options={"include_usage": True}):
        text.extend(c.delta.content or "" for c in chunk.choices)
        finish.extend(c.finish_reason for c in chunk.choices if c.finish_reason)
        usage.extend([chunk.usage] if chunk.usage else [])
    assert "".join(text) and finish == ["stop"] and usage and usage[0].completion_tokens >= 20
    rows = attempt_rows(gw, "a.status, a.cost_source", "a.model = 'no-done'")
    assert rows[-1] == {"status": "ok", "cost_source": "computed"}
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="no-done-cut", messages=ASK, stream=True):
            pass
    assert attempt_rows(gw, "a.status", "a.model = 'no-done-cut'")[-1]["status"] == "error"


def test_a_server_refusing_stream_options_still_streams(served: tuple[Gateway, openai.OpenAI, RunningServer]) -> None:
    """The gateway adds ``stream_options.include_usage`` to every stream to price it, but many
    OpenAI-compatible servers refuse the field with a 400: "Unknown parameter: 'stream_options'"
    (https://github.com/QuantumNous/new-api/issues/418), Azure OpenAI's older api-versions
    (https://github.com/feiskyer/chatgpt-copilot/issues/173), and several Chinese vendors and
    local servers (https://github.com/14790897/MiqroForge-Desktop/issues/12). Every streamed
    request then failed with a 400 about a field the client never sent. The gateway now streams
    again without it (and keeps not sending it to that provider), counting the tokens itself."""
    gw, client, mock = served
    for _ in range(2):
        text: list[str] = []
        for chunk in client.chat.completions.create(model="no-stream-options", messages=ASK, stream=True):
            text.extend(c.delta.content or "" for c in chunk.choices)
        assert "".join(text)
    bodies = sent(mock, "no-stream-options")
    assert ["stream_options" in b for b in bodies] == [True, False, False]  # refused once, then never sent
    rows = attempt_rows(gw, "a.status, a.cost_source, a.completion_tokens", "a.model = 'no-stream-options'")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(r["cost_source"] == "estimated" and r["completion_tokens"] > 0 for r in rows)


@pytest.mark.parametrize("stream", [False, True])
def test_keep_alive_filler_is_ignored(served: tuple[Gateway, openai.OpenAI, RunningServer], stream: bool) -> None:
    """While busy, DeepSeek writes blank lines before a non-streamed answer and ``: keep-alive``
    SSE comments into a stream (https://api-docs.deepseek.com/quick_start/rate_limit); OpenRouter
    sends ``: OPENROUTER PROCESSING`` comments (https://openrouter.ai/docs/api/reference/streaming).
    Handled already (comments and blank lines are skipped, JSON allows leading whitespace): kept
    here so that it stays so."""
    gw, client, _ = served
    if stream:
        text: list[str] = []
        for chunk in client.chat.completions.create(model="busy", messages=ASK, stream=True):
            text.extend(c.delta.content or "" for c in chunk.choices)
        assert "".join(text)
    else:
        assert client.chat.completions.create(model="busy", messages=ASK).choices[0].message.content
    assert attempt_rows(gw, "a.status, a.cost_source", "a.model = 'busy'")[-1] == {"status": "ok",
                                                                                 "cost_source": "computed"}


@pytest.mark.parametrize(("headers", "status", "wait"), [
    ({"retry-after-ms": "250", "retry-after": "1"}, 429, 0.25),  # the precise figure wins
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2m59.56s",  # Groq's form
      "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "7.66s"}, 429, 179.56),
    ({"x-ratelimit-remaining-tokens": "5", "x-ratelimit-reset-tokens": "6m0s"}, 429, None),  # not spent
    ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"}, 503, None),  # not a rate limit
    ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 503, 0.0),  # a date passed: no wait
    ({"retry-after": "soon"}, 429, None),
])
def test_retry_after_headers(headers: dict[str, str], status: int, wait: float | None) -> None:
    """The wait each documented header form gives (see test_every_retry_after_form_is_read)."""
    from thrifty.providers.retry_after import retry_after

    assert retry_after(headers, status) == (pytest.approx(wait) if wait is not None else None)


async def test_packs_to_a_server_without_json_schema(tmp_path: Path) -> None:
    """DeepSeek's chat API takes ``response_format`` ``text`` and ``json_object`` only and refuses
    ``json_schema`` with a 400 "This response_format type is unavailable now"
    (https://api-docs.deepseek.com/api/create-chat-completion; reported in
    https://github.com/llm-exe/llm-exe/issues/662 and https://github.com/ItzCrazyKns/Vane/issues/969).
    With ``supports_json_mode: false`` packs never send a response_format and packing works in
    two calls; without it, packs fall back from ``json_schema`` by themselves
    (tests/integration/test_provider_quirks_2.py)."""
    from thrifty.batching import run_batch

    items = [{"id": str(i), "input": f"Review {i}: a great product"} for i in range(20)]
    mock_cfg = MockConfig.from_dict({"models": {"ds": {"response_formats": ["text", "json_object"]}}})
    with run_in_thread(create_mock(mock_cfg)) as mock:
        gw = Gateway.from_config(one_model_config(mock.url, tmp_path, supports_json_mode=False))
        try:
            results = await run_batch(gw, items, task="Summarise the review.", model="ds", pack=10)
        finally:
            await gw.aclose()
        assert all(r.status == "ok" and r.produced == "packed" for r in results)
        assert httpx.get(mock.url + "/mock/requests?limit=200").json()["total"] == 2  # two packs of ten
