"""OpenAI wire compatibility, as an app that only swaps its base_url sees it.

A real gateway on 127.0.0.1 in front of the mock upstream, driven with the official openai SDK
(and raw httpx where the SDK would hide the wire): request shapes reach the upstream unchanged,
responses and streams parse, errors are OpenAI error bodies with the request id SDKs read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pydantic
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.providers.function import FunctionProvider

USER = [{"role": "user", "content": "What is the capital of France?"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOL_PROMPT = [{"role": "user", "content": "get_weather for Paris please"}]


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict({"models": {"broken": {"faults": {"status": 500}}}}))) as server:
        yield server


def in_process_answer(body: dict[str, Any]) -> dict[str, Any]:
    """An upstream reply with the message fields the mock never produces: a refusal, a legacy
    function call, logprobs (served by an in-process provider, which streams via response_to_chunks)."""
    last = body["messages"][-1]["content"]
    if "refuse" in last:
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
        finish = "stop"
    else:
        message = {"role": "assistant", "content": None,
                   "function_call": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}
        finish = "function_call"
    logprobs = {"content": [{"token": "I", "logprob": -0.1, "bytes": [73], "top_logprobs": []}], "refusal": None}
    return {"id": "chatcmpl-inproc", "object": "chat.completion", "created": 1, "model": "inproc",
            "system_fingerprint": "fp_inproc",
            "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}


@pytest.fixture(scope="module")
def server(mock: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp: Path = tmp_path_factory.mktemp("wire")
    gw = Gateway.from_config({
        "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-upstream-000", "max_retries": 0},
                      "inproc": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"cheap": {"provider": "mock", "price": {"input": 0.1, "output": 0.2}},
                   "broken": {"provider": "mock", "price": {"input": 0.1, "output": 0.2}},
                   "inproc": {"provider": "inproc", "price": {"input": 0.1, "output": 0.2}}},
        "ledger": {"path": str(tmp / "ledger.db")},
        "server": {"max_body_bytes": 50_000},
    }, providers={"inproc": FunctionProvider(in_process_answer, name="inproc")})

    async def boom(request: Request) -> Response:
        raise RuntimeError("a bug outside the chat handler")

    gw.extra_routes.append(Route("/boom", boom, methods=["GET"]))  # an extension route that crashes
    with run_in_thread(gw.app()) as running:
        yield running
    gw.close()


def client(server: RunningServer, base: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + base, api_key="sk-client-0000", max_retries=0)


def upstream_body(mock: RunningServer) -> dict[str, Any]:
    """The body the mock upstream received last."""
    data = httpx.get(mock.url + "/mock/requests?limit=1").json()["data"]
    body: dict[str, Any] = data[-1]["body"]
    return body


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}
TOOL_TURNS = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}}}


@pytest.mark.parametrize("fields", [
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "Describe this"}, IMAGE]}]},
    {"messages": TOOL_PROMPT, "tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": False},
    {"messages": TOOL_PROMPT, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    {"messages": USER, "functions": [TOOLS[0]["function"]], "function_call": "auto"},
    {"messages": USER, "response_format": {"type": "json_object"}},
    {"messages": USER, "response_format": SCHEMA},
    {"messages": USER, "max_completion_tokens": 7, "n": 2, "seed": 3, "user": "u-1", "stop": ["\n\n"]},
    {"messages": USER, "max_tokens": 7, "logit_bias": {"50256": -100}, "reasoning_effort": "low",
     "metadata": {"team": "a"}, "store": True},
    {"messages": [{"role": "developer", "content": "Be terse."}, *USER], "a_future_param": {"x": [1]}},
    {"messages": TOOL_TURNS, "tools": TOOLS},
], ids=["parts", "tools", "tool-choice", "functions", "json-object", "json-schema", "limits", "misc",
        "developer+unknown", "tool-turns"])
def test_request_shapes_reach_the_upstream_unchanged(
        server: RunningServer, mock: RunningServer, fields: dict[str, Any]) -> None:
    known = {"messages", "tools", "tool_choice", "functions", "function_call", "response_format", "n", "seed",
             "user", "stop", "max_tokens", "max_completion_tokens", "logit_bias", "reasoning_effort", "metadata",
             "store", "parallel_tool_calls"}
    kwargs = {k: v for k, v in fields.items() if k in known}
    extra = {k: v for k, v in fields.items() if k not in known}
    reply = client(server).chat.completions.create(model="cheap", extra_body=extra or None, **kwargs)
    assert reply.choices and reply.object == "chat.completion"
    body = upstream_body(mock)
    assert {k: body.get(k) for k in fields} == fields
    assert "stream_options" not in body and "stream" not in body


def test_assistant_turns_without_content_are_forwarded(server: RunningServer, mock: RunningServer) -> None:
    # A refused reply and an audio reply come back from the SDK with content null (or none):
    # sending the conversation on must not be a 400 from the gateway.
    messages = [
        {"role": "user", "content": "Say something rude."},
        {"role": "assistant", "content": None, "refusal": "I can't help with that."},
        {"role": "user", "content": "Then say hello."},
        {"role": "assistant", "audio": {"id": "audio_1"}},
        {"role": "user", "content": "Thanks."},
    ]
    reply = client(server).chat.completions.create(model="cheap", messages=messages)  # type: ignore[arg-type]
    assert reply.choices[0].message.content
    assert upstream_body(mock)["messages"] == messages


def _sse(server: RunningServer, body: dict[str, Any]) -> tuple[httpx.Headers, list[str]]:
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={"model": "cheap", "stream": True, **body},
                      headers={"authorization": "Bearer sk-client-0000"}, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return r.headers, [line for line in r.iter_lines() if line]


def test_stream_wire_shape(server: RunningServer) -> None:
    headers, lines = _sse(server, {"messages": TOOL_PROMPT, "tools": TOOLS})
    assert headers["x-request-id"] == headers["x-thrifty-request-id"]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)  # not asked for
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert calls and all(isinstance(tc["index"], int) for tc in calls)
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["id"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    _, lines = _sse(server, {"messages": USER, "stream_options": {"include_usage": True}})
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert lines[-1] == "data: [DONE]" and chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == chunks[-1]["usage"]["prompt_tokens"] + \
        chunks[-1]["usage"]["completion_tokens"] > 0
    assert all(not c.get("usage") for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


class City(pydantic.BaseModel):
    city: str


def test_sdk_helpers_parse_responses_and_streams(server: RunningServer) -> None:
    c = client(server)
    parsed = c.chat.completions.parse(model="cheap", messages=USER, response_format=City)
    assert isinstance(parsed.choices[0].message.parsed, City)
    with c.chat.completions.stream(model="cheap", messages=TOOL_PROMPT,
                                   tools=[openai.pydantic_function_tool(City, name="get_weather")],
                                   stream_options={"include_usage": True}) as stream:
        kinds = {event.type for event in stream}
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in kinds
    call = final.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert isinstance(call.function.parsed_arguments, City) and final.usage and final.usage.total_tokens > 0  # type: ignore[union-attr]

    async def async_stream() -> str:
        ac = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-client-0000", max_retries=0)
        async with ac, ac.chat.completions.stream(model="cheap", messages=USER, response_format=City) as s:
            async for _ in s:
                pass
            done = await s.get_final_completion()
        assert isinstance(done.choices[0].message.parsed, City)
        return done.choices[0].finish_reason

    assert asyncio.run(async_stream()) == "stop"


@pytest.mark.parametrize("prompt", ["Please refuse.", "Call the legacy function."])
def test_a_stream_made_from_a_whole_answer_keeps_every_field(server: RunningServer, prompt: str) -> None:
    # Buffered cascades and in-process providers turn a whole answer into chunks: the streamed
    # message must be the one a non-streaming call returns (refusal, function_call, logprobs).
    c = client(server)
    messages = [{"role": "user", "content": prompt}]
    full = c.chat.completions.create(model="inproc", messages=messages, logprobs=True)  # type: ignore[arg-type]
    with c.chat.completions.stream(model="inproc", messages=messages, logprobs=True) as stream:  # type: ignore[arg-type]
        for _ in stream:
            pass
        streamed = stream.get_final_completion()
    want, got = full.choices[0], streamed.choices[0]
    assert (got.message.refusal, got.message.function_call) == (want.message.refusal, want.message.function_call)
    assert want.message.refusal or want.message.function_call
    assert got.finish_reason == want.finish_reason
    assert got.logprobs and want.logprobs and got.logprobs.content == want.logprobs.content
    assert streamed.system_fingerprint == full.system_fingerprint == "fp_inproc"


def test_request_id_is_the_header_sdks_read(server: RunningServer) -> None:
    raw = client(server).chat.completions.with_raw_response.create(model="cheap", messages=USER)
    assert raw.parse()._request_id == raw.headers["x-thrifty-request-id"]
    with pytest.raises(openai.NotFoundError) as err:
        client(server).chat.completions.create(model="no-such-model", messages=USER)
    assert err.value.request_id and err.value.request_id.startswith("req_")
    assert err.value.code == "model_not_found" and err.value.param == "model"


def test_models_list_shape_with_and_without_v1(server: RunningServer) -> None:
    listing = httpx.get(server.url + "/v1/models").json()
    assert listing["object"] == "list" and listing["data"]
    for obj in listing["data"]:
        assert obj["object"] == "model" and isinstance(obj["id"], str)
        assert isinstance(obj["created"], int) and isinstance(obj["owned_by"], str)
    # /chat/completions is served without the /v1 prefix, so the model list must be too.
    bare = client(server, base="")
    assert "cheap" in {m.id for m in bare.models.list()}
    assert bare.models.retrieve("cheap").id == "cheap"
    assert bare.chat.completions.create(model="cheap", messages=USER).choices


@pytest.mark.parametrize("call", ["moderations", "images"])
def test_unserved_openai_endpoints_say_what_is_served(server: RunningServer, call: str) -> None:
    # /v1/completions and /v1/responses are served now (tests/integration/test_passthrough_http.py).
    c = client(server)
    with pytest.raises(openai.NotFoundError) as err:
        if call == "moderations":
            c.moderations.create(input="hello")
        else:
            c.images.generate(prompt="hello")
    path = "/v1/moderations" if call == "moderations" else "/v1/images/generations"
    assert err.value.code == "unsupported_endpoint" and err.value.request_id
    assert path in err.value.message and "POST /v1/chat/completions" in err.value.message
    assert "POST /v1/responses" in err.value.message


@pytest.mark.parametrize(("method", "path", "content", "headers", "status", "needle"), [
    ("POST", "/v1/chat/completions", b"{not json", {}, 400, "not valid JSON"),
    ("POST", "/v1/chat/completions", b'{"messages": []}', {}, 400, "'model'"),
    ("POST", "/v1/chat/completions", b'{"model": "cheap"}', {}, 400, "'messages'"),
    ("POST", "/v1/chat/completions", b'{"model": "cheap", "messages": "hi"}', {}, 400, "'messages'"),
    ("POST", "/v1/chat/completions", b'{"model": "cheap", "messages": [{"role": "user", "content": "x"}], '
     b'"max_tokens": "5"}', {}, 400, "'max_tokens'"),
    ("POST", "/v1/chat/completions", b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', {},
     404, "does not exist"),
    ("POST", "/v1/chat/completions", b'{"model": "cheap", "messages": [{"role": "user", "content": "'
     + b"x" * 60_000 + b'"}]}', {}, 413, "limit"),
    ("POST", "/v1/chat/completions", b"model=cheap&messages=hi",
     {"content-type": "application/x-www-form-urlencoded"}, 400, "Content-Type is 'application/x-www-form-urlencoded'"),
    ("GET", "/v1/chat/completions", b"", {}, 405, "allowed: POST"),
    ("DELETE", "/v1/models", b"", {}, 405, "DELETE is not allowed on /v1/models"),
    ("GET", "/v2/whatever", b"", {}, 404, "POST /v1/chat/completions"),
    ("GET", "/boom", b"", {}, 500, "Internal error (request id req_"),
])
def test_errors_are_openai_bodies_with_request_ids(server: RunningServer, method: str, path: str, content: bytes,
                                                    headers: dict[str, str], status: int, needle: str) -> None:
    r = httpx.request(method, server.url + path, content=content or None,
                      headers={"content-type": "application/json", **headers}, timeout=30)
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and needle in err["message"]
    assert r.headers["x-request-id"] == r.headers["x-thrifty-request-id"]


def test_sdk_does_not_retry_what_the_gateway_already_retried(server: RunningServer, mock: RunningServer) -> None:
    # The provider's max_retries (0 here) and fallbacks are thrifty's retry policy; an SDK with its
    # default max_retries=2 must not multiply the upstream calls behind a 502.
    def calls() -> int:
        return int(httpx.get(mock.url + "/mock/stats").json()["calls"].get("broken", 0))

    before = calls()
    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-0000")  # default retries
    with pytest.raises(openai.APIStatusError) as err:
        sdk.chat.completions.create(model="broken", messages=USER)
    assert calls() - before == 1
    assert err.value.status_code == 502 and err.value.response.headers["x-should-retry"] == "false"
