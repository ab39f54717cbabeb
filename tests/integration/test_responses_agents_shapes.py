"""Request shapes OpenAI's Agents SDK (``openai-agents`` 0.24.0, default ``OpenAIResponsesModel``)
sends to ``POST /v1/responses`` with ``model: "auto"`` or a route, replayed with the plain openai
client through a real gateway in front of the mock upstream (the project does not depend on the
Agents SDK). Each body below is trimmed from one the SDK sent to thrifty."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response

from fixtures.served import reset
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.server.responses_chat import response_object, shell
from thrifty.server.responses_stream import StreamTranslator
from thrifty.streaming import response_to_chunks

WEATHER = {"name": "get_weather", "type": "function", "description": "The weather in a city.", "strict": True,
           "parameters": {"properties": {"city": {"title": "City", "type": "string"}}, "required": ["city"],
                          "title": "get_weather_args", "type": "object", "additionalProperties": False}}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, RunningServer]]:
    tmp: Path = tmp_path_factory.mktemp("responses_agents")
    with run_in_thread(create_mock(MockConfig.from_dict({"seed": 5}))) as upstream:
        gw = Gateway.from_config({
            "providers": {"mock": {"base_url": upstream.url + "/v1", "max_retries": 0}},
            "models": {"cheap": {"provider": "mock", "price": {"input": 0.1, "output": 0.1}}},
            "ledger": {"path": str(tmp / "ledger.db")},
            "routing": {"default_route": "chat", "routes": {"chat": {"model": "cheap"}}},
        })
        with run_in_thread(gw.app()) as server:
            yield server, upstream
        gw.flush()


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-agents-0000", max_retries=0, timeout=20)


def chat_sent(upstream: RunningServer) -> dict[str, Any]:
    """The one chat completion body the mock upstream received since the last reset."""
    [call] = httpx.get(upstream.url + "/mock/requests?limit=10").json()["data"]
    assert call["path"] == "/v1/chat/completions"
    body: dict[str, Any] = call["body"]
    return body


def test_text_after_a_turn_s_function_call_joins_its_assistant_message(
        served: tuple[RunningServer, RunningServer]) -> None:
    """OpenAI's Responses streams may put a turn's text after its function call; the SDK replays
    the items in that order. Chat refuses an assistant message with tool_calls that is not followed
    by their tool messages (OpenAI: 400 "An assistant message with 'tool_calls' must be followed by
    tool messages..."), so the text must join the message holding the calls."""
    server, upstream = served
    reset(upstream)
    body: dict[str, Any] = {"model": "auto", "include": [], "instructions": "Use tools.", "tools": [WEATHER], "input": [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
         "arguments": "{\"city\":\"Paris\"}", "status": "completed"},
        {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "Let me check.", "annotations": [], "logprobs": []}]},
        {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
        {"role": "user", "content": "Thanks, and tomorrow?"}]}
    client(server).post("/responses", cast_to=Response, body=body)
    assert chat_sent(upstream)["messages"] == [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        {"role": "user", "content": "Thanks, and tomorrow?"}]


# ModelSettings(top_logprobs=2, prompt_cache_retention="24h"): the SDK adds the logprobs include.
LOGPROBS: dict[str, Any] = {"model": "auto", "include": ["message.output_text.logprobs"], "instructions": "x",
                            "input": [{"content": "Say hi logprobs", "role": "user"}], "tools": [], "top_logprobs": 2}


def test_prompt_cache_retention_reaches_the_chat_completion(served: tuple[RunningServer, RunningServer]) -> None:
    """Chat completions take ``prompt_cache_retention`` as the Responses API does."""
    server, upstream = served
    reset(upstream)
    client(server).post("/responses", cast_to=Response, body={**LOGPROBS, "prompt_cache_retention": "24h"})
    assert chat_sent(upstream)["prompt_cache_retention"] == "24h"


def test_top_logprobs_are_asked_of_chat_and_come_back_in_the_output_text(
        served: tuple[RunningServer, RunningServer]) -> None:
    server, upstream = served
    reset(upstream)
    response = client(server).post("/responses", cast_to=Response, body=LOGPROBS)
    sent = chat_sent(upstream)
    assert (sent["logprobs"], sent["top_logprobs"]) == (True, 2)
    part = response.output[0].content[0]  # type: ignore[union-attr]
    assert part.type == "output_text" and part.logprobs
    assert "".join(lp.token for lp in part.logprobs) == part.text
    assert all(len(lp.top_logprobs) == 2 and lp.bytes == list(lp.token.encode()) for lp in part.logprobs)
    assert response.top_logprobs == 2
    # Without the include, the Responses API returns none, and chat is not asked for any.
    reset(upstream)
    plain = client(server).post("/responses", cast_to=Response, body={**LOGPROBS, "include": []})
    assert "logprobs" not in chat_sent(upstream) and not plain.output[0].content[0].logprobs  # type: ignore[union-attr]


def test_streamed_top_logprobs_come_with_each_delta_and_the_done_events(
        served: tuple[RunningServer, RunningServer]) -> None:
    server, upstream = served
    reset(upstream)
    deltas: list[Any] = []
    done: list[Any] = []
    with client(server).responses.create(**{**LOGPROBS, "stream": True}) as stream:  # type: ignore[call-overload]
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas += event.logprobs
            elif event.type == "response.output_text.done":
                done = event.logprobs
            elif event.type == "response.completed":
                completed = event.response
    assert chat_sent(upstream)["logprobs"] is True
    assert deltas and [lp.token for lp in deltas] == [lp.token for lp in done]
    assert [lp.token for lp in completed.output[0].content[0].logprobs] == [lp.token for lp in done]  # type: ignore[union-attr]


def test_a_bad_top_logprobs_is_a_400_naming_it(served: tuple[RunningServer, RunningServer]) -> None:
    server, _ = served
    with pytest.raises(openai.BadRequestError) as info:
        client(server).post("/responses", cast_to=Response, body={**LOGPROBS, "top_logprobs": 21})
    assert json.loads(info.value.response.text)["error"]["param"] == "top_logprobs"


def test_logprobs_of_a_whole_answer_replayed_as_a_stream_reach_the_done_events() -> None:
    """A cascade (or a provider that ignored ``stream``) replays a whole chat answer as chunks,
    every logprob on the finishing chunk with no text: the streamed Responses answer must end
    with the same logprobs as the unstreamed one (they were dropped: ``.done`` had none)."""
    tokens = [{"token": t, "logprob": -0.1, "bytes": list(t.encode()), "top_logprobs": []} for t in ("Hi", " there")]
    chat = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "cheap",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"},
                         "finish_reason": "stop", "logprobs": {"content": tokens}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    base = shell(LOGPROBS, "req_lp", 1, "cheap")
    whole = response_object(chat, dict(base), "req_lp")
    translator = StreamTranslator(dict(base), "req_lp")
    events = [*translator.start(), *(e for c in response_to_chunks(chat) for e in translator.feed(c)),
              *translator.finish()]
    payloads = [json.loads(bytes(e).split(b"data: ", 1)[1]) for e in events]
    done = next(p for p in payloads if p["type"] == "response.output_text.done")
    completed = payloads[-1]["response"]
    assert [lp["token"] for lp in done["logprobs"]] == ["Hi", " there"]
    assert completed["output"][0]["content"][0]["logprobs"] == whole["output"][0]["content"][0]["logprobs"]
