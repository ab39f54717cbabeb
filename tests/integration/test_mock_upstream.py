"""The mock upstream over real HTTP, driven by the official openai SDK (sync and async) and aiohttp.

One server per module (started on a free loopback port); tests that count calls use their own
model names or POST /mock/reset, so they do not depend on order.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import openai
import pytest

from thrifty.mock import MockConfig, RunningServer, create_app, run_in_thread
from thrifty.tokens import count_messages

KEY = "sk-test-abcdefgh1234"
QUESTION: Any = [{"role": "user", "content": "Which option is right? A) 1 B) 2 C) 3 D) 4"}]

CONFIG = {
    "seed": 11,
    "models": {
        "strong": {"answers": [{"pattern": "Which option", "answer": "The answer is B."}]},
        "reasoner": {
            "reasoning_tokens": [50, 50],
            "usage_convention": "deepseek",
            "price": {"input": 1, "output": 2},
        },
        "flaky": {"faults": {"fail_first": 2, "fail_status": 503, "retry_after": 0.01}},
        "tooly": {"tool_calls": "always"},
    },
}


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with run_in_thread(create_app(MockConfig.from_dict(CONFIG))) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=10)


@pytest.fixture
def aclient(server: RunningServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=10)


def test_deterministic_answer_and_usage(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
    second = client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
    assert first.object == "chat.completion" and first.id.startswith("chatcmpl-") and first.id != second.id
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.choices[0].message.role == "assistant" and first.choices[0].finish_reason == "stop"
    usage = first.usage
    assert usage is not None and usage.prompt_tokens == count_messages(QUESTION)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 0
    strong = client.chat.completions.create(model="strong", messages=QUESTION)
    assert strong.choices[0].message.content == "The answer is B."


async def test_async_stream_with_usage_matches_non_stream(aclient: openai.AsyncOpenAI) -> None:
    plain = await aclient.chat.completions.create(model="gpt-4o", messages=QUESTION)
    stream = await aclient.chat.completions.create(
        model="gpt-4o", messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage


async def test_raw_sse_framing(server: RunningServer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            server.url + "/v1/chat/completions",
            json={"model": "m", "messages": QUESTION, "stream": True},
        ) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = (await response.read()).decode()
    events = [line for line in raw.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(e[6:]) for e in events[:-1])  # no include_usage


def test_n_max_tokens_json_and_logprobs(client: openai.OpenAI) -> None:
    many = client.chat.completions.create(model="m", messages=QUESTION, n=3)
    assert [c.index for c in many.choices] == [0, 1, 2]
    cut = client.chat.completions.create(model="m", messages=QUESTION, max_tokens=3)
    assert (
        cut.choices[0].finish_reason == "length"
        and cut.usage is not None
        and cut.usage.completion_tokens == 3
    )
    js = client.chat.completions.create(model="m", messages=QUESTION, response_format={"type": "json_object"})
    wrapped = json.loads(js.choices[0].message.content or "")
    assert set(wrapped) == {"answer"} and isinstance(wrapped["answer"], str) and wrapped["answer"]  # docs: {"answer": ...}
    lp = client.chat.completions.create(model="m", messages=QUESTION, logprobs=True, top_logprobs=2)
    content = lp.choices[0].logprobs.content if lp.choices[0].logprobs else None
    assert content and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_tool_call(client: openai.OpenAI) -> None:
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    result = client.chat.completions.create(model="tooly", messages=QUESTION, tools=tools)
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call: Any = choice.message.tool_calls[0]
    assert call.function.name == "lookup" and "q" in json.loads(call.function.arguments)
    stream = client.chat.completions.create(model="tooly", messages=QUESTION, tools=tools, stream=True)
    deltas = [c.choices[0].delta for c in stream if c.choices]
    args = "".join(tc.function.arguments or "" for d in deltas for tc in d.tool_calls or [] if tc.function)
    assert args == call.function.arguments


def test_reasoning_and_deepseek_usage(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(model="reasoner", messages=QUESTION)
    usage: Any = result.usage
    assert usage.completion_tokens_details.reasoning_tokens == 50
    assert usage.completion_tokens > 50
    extra = usage.model_extra
    assert extra["prompt_cache_hit_tokens"] + extra["prompt_cache_miss_tokens"] == usage.prompt_tokens
    assert extra["cost"] == pytest.approx((usage.prompt_tokens * 1 + usage.completion_tokens * 2) / 1e6)


def test_429_with_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model="m", messages=QUESTION, extra_headers={"x-mock-behaviour": "status=429;retry_after=2"}
        )
    assert info.value.response.headers["retry-after"] == "2"
    assert info.value.code == "rate_limit_exceeded"


def test_500_and_503(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="m", messages=QUESTION, extra_headers={"x-mock-behaviour": "status=500"}
        )
    assert info.value.status_code == 500 and info.value.type == "server_error"
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="m", messages=QUESTION, extra_headers={"x-mock-behaviour": "status=503"}
        )
    assert info.value.status_code == 503


def test_fail_first_n_then_succeed_and_reset(server: RunningServer, client: openai.OpenAI) -> None:
    httpx.post(server.url + "/mock/reset")
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="flaky", messages=QUESTION)
    assert client.chat.completions.create(model="flaky", messages=QUESTION).choices
    httpx.post(server.url + "/mock/reset")
    retrying = client.with_options(max_retries=2)  # the SDK honours retry-after-ms (10 ms)
    assert retrying.chat.completions.create(model="flaky", messages=QUESTION).choices
    assert httpx.get(server.url + "/mock/stats").json()["fail_first_calls"]["flaky"] == 3


def test_hang_times_out_without_blocking_others(server: RunningServer, client: openai.OpenAI) -> None:
    errors: list[BaseException] = []

    def received() -> int:
        return int(httpx.get(server.url + "/mock/stats", timeout=5).json()["requests"])

    def hang() -> None:
        try:
            # Long enough that the other request is served well before it, even on a loaded machine.
            client.with_options(timeout=3.0).chat.completions.create(
                model="m", messages=QUESTION, extra_headers={"x-mock-behaviour": "hang"}
            )
        except BaseException as exc:
            errors.append(exc)

    before = received()
    thread = threading.Thread(target=hang)
    thread.start()
    deadline = time.monotonic() + 10  # the hung request has arrived (a fixed sleep only hoped so)
    while received() == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert received() == before + 1
    assert client.chat.completions.create(model="m", messages=QUESTION).choices
    assert thread.is_alive()  # served while the hung request is still waiting
    thread.join(5)
    assert len(errors) == 1 and isinstance(errors[0], openai.APITimeoutError)


def test_latency_header(client: openai.OpenAI) -> None:
    start = time.monotonic()
    client.chat.completions.create(
        model="m", messages=QUESTION, extra_headers={"x-mock-behaviour": "latency_ms=200"}
    )
    assert time.monotonic() - start >= 0.2


async def test_truncated_stream(aclient: openai.AsyncOpenAI, server: RunningServer) -> None:
    stream = await aclient.chat.completions.create(
        model="m", messages=QUESTION, stream=True, extra_headers={"x-mock-behaviour": "truncate_after=3"}
    )
    received = 0
    with pytest.raises((openai.APIConnectionError, httpx.RemoteProtocolError)):
        async for _ in stream:
            received += 1
    assert received == 3
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            server.url + "/v1/chat/completions",
            json={"model": "m", "messages": QUESTION, "stream": True},
            headers={"x-mock-behaviour": "truncate_after=2"},
        ) as response,
    ):
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


def test_malformed_body(client: openai.OpenAI) -> None:
    with pytest.raises((openai.APIResponseValidationError, json.JSONDecodeError, ValueError)):
        client.chat.completions.create(
            model="m", messages=QUESTION, extra_headers={"x-mock-behaviour": "malformed"}
        )


def test_bad_requests_get_openai_errors(server: RunningServer, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="m", messages=QUESTION, extra_headers={"x-mock-behaviour": "bogus=1"}
        )
    assert "unknown key" in info.value.message
    response = httpx.post(server.url + "/v1/chat/completions", content=b"{not json")
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


def test_authorization_is_redacted(server: RunningServer, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "record me"}])
    recorded = httpx.get(server.url + "/mock/requests", params={"limit": 1}).json()["data"]
    assert recorded[0]["body"]["messages"][0]["content"] == "record me"
    assert recorded[0]["headers"]["authorization"] == "...1234"
    assert KEY not in json.dumps(httpx.get(server.url + "/mock/requests").json())


def test_allow_list_api_key_and_models() -> None:
    config = MockConfig.from_dict({"allowed_models": ["cheap", "strong"], "api_key": KEY})
    with run_in_thread(create_app(config)) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in client.models.list()] == ["cheap", "strong"]
        assert client.chat.completions.create(model="cheap", messages=QUESTION).choices
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model="gpt-5", messages=QUESTION)
        assert info.value.code == "model_not_found"
        wrong_key = openai.OpenAI(base_url=running.url + "/v1", api_key="sk-test-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong_key.chat.completions.create(model="cheap", messages=QUESTION)
        port = running.port
    assert not running.thread.is_alive()
    with socket.socket() as sock:  # stopped cleanly: nothing listens on the port any more
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        sock.bind(("127.0.0.1", port))


def test_cli_serves(tmp_path: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "b.yaml"
    config.write_text("models:\n  demo:\n    answer: hello from yaml\n", encoding="utf-8")
    cmd = [
        sys.executable,
        "-m",
        "thrifty.cli.main",
        "mock-upstream",
        "--port",
        str(port),
        "--config",
        str(config),
    ]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30  # slow imports on a loaded machine
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health")
                break
            except httpx.ConnectError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
        reply = client.chat.completions.create(model="demo", messages=QUESTION)
        assert reply.choices[0].message.content == "hello from yaml"
    finally:
        process.terminate()
        process.wait(10)
