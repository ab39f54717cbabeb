"""``client.responses.create(model="auto" | "route:NAME")`` through a real gateway on 127.0.0.1, in
front of the mock upstream, driven by the official openai SDK: the request is translated to a
chat completion and run by the chat pipeline (routing, cascades, the cache, the ledger), the
answer comes back as a Responses object or as Responses events converted while the chat stream
arrives; what cannot be carried is refused with a 400 naming the field; a catalog model is still
passed through to the provider's own /responses unchanged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseErrorEvent, ResponseStreamEvent
from pydantic import TypeAdapter

from fixtures.served import attempt_rows, received, reset
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.responses_events import response_events

MC = "Which option is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel"
# Every mock model refuses `metadata` without `store` on chat completions, as OpenAI does.
MOCK = {"seed": 11, "default": {"metadata_needs_store": True}, "models": {
    "cheap": {"answers": [{"pattern": "capital of France", "answer": "Paris"},
                          {"pattern": "Which option", "answer": "Mammals are warm-blooded animals."}]},
    "strong": {"answers": [{"pattern": "Which option", "answer": "B"}]},
    "cut": {"faults": {"truncate_after": 3}},
}}
ROUTING: dict[str, Any] = {
    "default_route": "chat",
    "classify": {"rules": [{"task": "quiz", "keywords": ["which option"]}]},
    "routes": {"chat": {"model": "cheap"},
               "quiz": {"tiers": [{"model": "cheap", "threshold": 0.8}, {"model": "strong"}]},
               "broken": {"model": "cut"}},
}
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}, "strict": True}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, RunningServer, RunningServer]]:
    tmp: Path = tmp_path_factory.mktemp("responses_routed")
    with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as upstream:
        gw = Gateway.from_config({
            "providers": {"mock": {"base_url": upstream.url + "/v1", "max_retries": 0}},
            "models": {m: {"provider": "mock", "price": {"input": p, "output": p}}
                       for m, p in {"cheap": 0.1, "strong": 10.0, "cut": 0.1}.items()},
            "baseline": "strong",
            "ledger": {"path": str(tmp / "ledger.db")},
            "cache": {"path": str(tmp / "cache.db")},
            "routing": ROUTING,
        })
        with run_in_thread(gw.app()) as server:
            yield gw, server, upstream
        gw.flush()


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-routed-0000", max_retries=0, timeout=20)


def test_auto_answers_text_through_the_chat_pipeline(served: tuple[Gateway, RunningServer, RunningServer]) -> None:
    _, server, upstream = served
    reset(upstream)
    # parallel_tool_calls and tool_choice without tools: fine here, a 400 on chat, so not sent.
    raw = client(server).responses.with_raw_response.create(model="auto", instructions="Answer in one word.",
                                                            input="What is the capital of France?",
                                                            parallel_tool_calls=True, tool_choice="auto")
    response = raw.parse()
    assert response.output_text == "Paris"
    assert response.status == "completed" and response.model == "cheap"
    assert response.id == "resp_" + raw.headers["x-thrifty-request-id"]
    assert response.instructions == "Answer in one word." and response.store is False
    assert response.usage is not None and response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert raw.headers["x-thrifty-model"] == "cheap" and "x-thrifty-cost-usd" in raw.headers
    # The provider was sent a chat completion (it may have no /responses at all).
    [call] = received(upstream)
    assert call["path"] == "/v1/chat/completions"
    assert call["body"]["messages"] == [{"role": "system", "content": "Answer in one word."},
                                        {"role": "user", "content": "What is the capital of France?"}]
    assert not {"parallel_tool_calls", "tool_choice"} & set(call["body"])


def test_a_cascade_route_escalates_and_the_ledger_shows_the_tiers(
        served: tuple[Gateway, RunningServer, RunningServer]) -> None:
    gw, server, _ = served
    before = len(attempt_rows(gw, "r.route, a.model, a.accepted"))
    raw = client(server).responses.with_raw_response.create(model="auto", input=MC)
    assert raw.parse().output_text == "B" and raw.parse().model == "strong"
    rows = attempt_rows(gw, "r.route, a.model, a.accepted")[before:]
    assert [(r["route"], r["model"], r["accepted"]) for r in rows] == [("quiz", "cheap", 0), ("quiz", "strong", 1)]
    named = client(server).responses.create(model="route:chat", input=[{"role": "user", "content": MC}])
    assert named.output_text == "Mammals are warm-blooded animals." and named.model == "cheap"


def test_a_repeat_is_a_cache_hit(served: tuple[Gateway, RunningServer, RunningServer]) -> None:
    _, server, _ = served
    ask = {"model": "auto", "input": "Name a colour of the sky at dusk, please.", "temperature": 0}
    first = client(server).responses.with_raw_response.create(**ask)
    second = client(server).responses.with_raw_response.create(**ask)
    assert (first.headers["x-thrifty-cache"], second.headers["x-thrifty-cache"]) == ("miss", "hit")
    assert second.parse().output_text == first.parse().output_text != ""
    assert second.parse().id != first.parse().id  # each response is its own request


def test_a_tool_call_round_trip(served: tuple[Gateway, RunningServer, RunningServer]) -> None:
    _, server, upstream = served
    c = client(server)
    question = {"role": "user", "content": "Call get_weather for Paris."}
    first = c.responses.create(model="auto", input=[question], tools=[WEATHER])  # type: ignore[list-item]
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id.startswith("call_")
    assert set(json.loads(call.arguments)) == {"city"}
    reset(upstream)
    history: list[Any] = [question, *[item.model_dump(exclude_none=True) for item in first.output],
                          {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}]
    final = c.responses.create(model="auto", input=history, tools=[WEATHER])  # type: ignore[list-item]
    assert final.output_text and not [i for i in final.output if i.type == "function_call"]
    sent = received(upstream)[0]["body"]
    assert sent["tools"] == [{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}]
    assert sent["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.call_id, "type": "function", "function": {"name": "get_weather", "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": "Sunny, 21 C"}]


def test_a_json_schema_format(served: tuple[Gateway, RunningServer, RunningServer]) -> None:
    _, server, upstream = served
    reset(upstream)
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    response = client(server).responses.create(model="auto", input="Give me a city.", text={
        "format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}})
    answer = json.loads(response.output_text)
    assert isinstance(answer["city"], str) and isinstance(answer["population"], int)
    assert received(upstream)[0]["body"]["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}}
    assert response.text is not None and response.text.format is not None and response.text.format.type == "json_schema"


def test_max_output_tokens_leaves_it_incomplete(served: tuple[Gateway, RunningServer, RunningServer]) -> None:
    _, server, upstream = served
    reset(upstream)
    response = client(server).responses.create(model="auto", input="Tell me a long story.", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[-1].status == "incomplete" and response.output_text
    assert received(upstream)[0]["body"]["max_completion_tokens"] == 3


def _merged(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events without their sequence numbers, runs of deltas as one (streams split text anywhere)."""
    out: list[dict[str, Any]] = []
    for event in events:
        event = {k: v for k, v in event.items() if k not in ("sequence_number", "delta")}
        if not (out and event["type"].endswith(".delta") and out[-1] == event):
            out.append(event)
    return out


def _events(server: RunningServer, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The raw events of a streamed request: each ``event:`` line names its data's type."""
    events: list[dict[str, Any]] = []
    with httpx.stream("POST", server.url + "/v1/responses", json={**body, "stream": True}, timeout=20) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: "):])
                assert data["type"] == name
                events.append(data)
    return events


def _plain(item: Any) -> dict[str, Any]:
    """An output item as sent, without its id (each request has its own) and what the SDK's
    stream helper adds (``parsed``)."""
    out: dict[str, Any] = item.model_dump(exclude={"id", "parsed_arguments"})
    out["content"] = [{k: v for k, v in p.items() if k != "parsed"} for p in out.get("content") or []]
    return out


@pytest.mark.parametrize("ask", [
    {"input": "Tell me about the sea."},
    {"input": "Call get_weather for Oslo.", "tools": [WEATHER]},
], ids=["text", "tool_call"])
def test_a_stream_is_the_events_of_its_answer(served: tuple[Gateway, RunningServer, RunningServer],
                                              ask: dict[str, Any]) -> None:
    _, server, _ = served
    body = {"model": "auto", **ask}
    events = _events(server, body)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    final = events[-1]["response"]
    kinds = {e["type"] for e in events}
    if "tools" in ask:
        assert {"response.function_call_arguments.delta", "response.function_call_arguments.done"} <= kinds
        assert final["output"][0]["type"] == "function_call" and final["output"][0]["name"] == "get_weather"
    else:
        assert {"response.output_text.delta", "response.output_text.done"} <= kinds
        assert sum(e["type"] == "response.output_text.delta" for e in events) > 1  # not one buffered piece
    assert final["usage"]["output_tokens"] > 0
    # The same events as thrifty builds from the whole answer (what the mock and the passthrough send).
    rebuilt = [json.loads(bytes(e).split(b"data: ", 1)[1]) for e in response_events(final, 3)]
    assert _merged(events)[2:] == _merged(rebuilt)[2:]
    # The SDK's stream helper accepts it, and its final response is the non-streamed translation's
    # of the same chat answer (cached by the first call, replayed as a stream by the second).
    whole = client(server).responses.create(**body, temperature=0)
    with client(server).responses.stream(**body, temperature=0) as stream:
        streamed = stream.get_final_response()
    for response in (streamed, whole):
        assert response.status == "completed" and response.model == "cheap"
    assert [_plain(i) for i in streamed.output] == [_plain(i) for i in whole.output]
    assert streamed.output_text == whole.output_text
    assert streamed.usage == whole.usage


def test_a_stream_cut_short_cut_at_max_output_tokens(served: tuple[Gateway, RunningServer, RunningServer]) -> None:
    events = _events(served[1], {"model": "auto", "input": "Tell me a long story.", "max_output_tokens": 3})
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_stream_that_breaks_ends_with_an_error_event(served: tuple[Gateway, RunningServer, RunningServer]) -> None:
    events = _events(served[1], {"model": "route:broken", "input": "Tell me a long story."})
    assert events[-1]["type"] == "error" and events[-1]["message"]
    with pytest.raises(openai.APIError):
        for _ in client(served[1]).responses.create(model="route:broken", input="Tell me a story.", stream=True):
            pass


@pytest.mark.parametrize(("extra", "param"), [
    ({"previous_response_id": "resp_abc"}, "previous_response_id"),
    ({"conversation": "conv_abc"}, "conversation"),
    ({"prompt": {"id": "pmpt_abc"}}, "prompt"),
    ({"background": True}, "background"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [WEATHER, {"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[1].type"),
    ({"input": [{"type": "item_reference", "id": "msg_abc"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-abc", "detail": "auto"}]}]},
     "input[0].content[0]"),
    ({"input": [{"role": "user", "content": "hi"}, {"type": "web_search_call", "id": "ws_1"}]}, "input[1].type"),
])
def test_what_cannot_be_carried_is_refused(served: tuple[Gateway, RunningServer, RunningServer],
                                           extra: dict[str, Any], param: str) -> None:
    _, server, upstream = served
    reset(upstream)
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).responses.create(**{"model": "auto", "input": "hello", **extra})
    assert caught.value.param == param
    assert "name a catalog model" in caught.value.message.lower()
    assert received(upstream) == []


def test_store_is_ignored_and_a_routed_id_is_not_stored(served: tuple[Gateway, RunningServer, RunningServer]) -> None:
    _, server, _ = served
    response = client(server).responses.create(model="auto", input="What is the capital of France?", store=True)
    assert response.output_text == "Paris" and response.store is False
    with pytest.raises(openai.NotFoundError) as caught:
        client(server).responses.retrieve(response.id)
    assert "not stored" in caught.value.message


def test_images_are_carried_as_chat_image_parts(served: tuple[Gateway, RunningServer, RunningServer]) -> None:
    _, server, upstream = served
    reset(upstream)
    url = "data:image/png;base64,iVBORw0KGgo="
    client(server).responses.create(model="auto", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is in this picture?"},
        {"type": "input_image", "image_url": url, "detail": "low"}]}])
    assert received(upstream)[0]["body"]["messages"][0]["content"] == [
        {"type": "text", "text": "What is in this picture?"}, {"type": "image_url", "image_url": {"url": url, "detail": "low"}}]


def test_a_catalog_model_is_still_passed_through(served: tuple[Gateway, RunningServer, RunningServer]) -> None:
    _, server, upstream = served
    reset(upstream)
    response = client(server).responses.create(model="cheap", input="What is the capital of France?",
                                               store=False)
    assert response.output_text == "Paris" and not response.id.startswith("resp_req_")
    [call] = received(upstream)
    assert call["path"] == "/v1/responses"
    assert call["body"] == {"model": "cheap", "input": "What is the capital of France?", "store": False}


def test_an_unknown_route_is_a_404(served: tuple[Gateway, RunningServer, RunningServer]) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(served[1]).responses.create(model="route:nope", input="hello")
    assert caught.value.param == "model" and "Unknown route 'nope'" in caught.value.message


# --- what the SDK's own types accept -------------------------------------------------------------

STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def _strict(response: dict[str, Any]) -> None:
    """``response`` is a Responses object by the SDK's own type, checked strictly (the SDK's
    client reads answers leniently, so a missing required field goes unnoticed there)."""
    Response.model_validate(response)


def _posted(server: RunningServer, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(server.url + "/v1/responses", json=body, timeout=20)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


@pytest.mark.parametrize("model", ["auto", "cheap"], ids=["routed", "mock_passthrough"])
@pytest.mark.parametrize("ask", [
    {"input": "What is the capital of France?"},
    {"input": "Call get_weather for Rome.", "tools": [WEATHER]},
    {"input": "Tell me a long story.", "max_output_tokens": 3},
], ids=["text", "tool_call", "incomplete"])
def test_every_response_and_event_validates_with_the_sdk_types(
        served: tuple[Gateway, RunningServer, RunningServer], model: str, ask: dict[str, Any]) -> None:
    server = served[1]
    body = {"model": model, **ask}
    answer = _posted(server, body)
    assert answer["usage"]["input_tokens_details"]["cache_write_tokens"] == 0
    _strict(answer)
    events = _events(server, body)
    for event in events:
        STREAM_EVENT.validate_python(event)
    _strict(events[-1]["response"])


@pytest.mark.parametrize("model", ["route:broken", "cut"], ids=["routed", "passthrough"])
def test_a_broken_stream_s_error_event_validates_with_the_sdk_type(
        served: tuple[Gateway, RunningServer, RunningServer], model: str) -> None:
    events = _events(served[1], {"model": model, "input": "Tell me a long story."})
    error = ResponseErrorEvent.model_validate(events[-1])  # its sequence_number is required
    assert error.message and error.sequence_number == len(events) - 1


def test_a_refusal_beside_text_comes_in_the_same_order_streamed_or_not() -> None:
    # No mock model answers a refusal, so the translation is driven directly: the chunks are the
    # ones thrifty streams for a whole answer (a cache hit, a cascade's), refusal before content.
    from thrifty.server import responses_chat as rc
    from thrifty.server.responses_stream import StreamTranslator
    from thrifty.streaming import response_to_chunks

    chat = {"id": "c", "created": 1, "model": "m", "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "Here is why.", "refusal": "I cannot help with that."}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    base = rc.shell({"model": "auto", "input": "x"}, "req_abc", 1, "m")
    translator = StreamTranslator(base, "req_abc")
    events = translator.start()
    for chunk in response_to_chunks(chat):
        events += translator.feed(chunk)
    events += translator.finish()
    streamed = events[-1].data["response"]
    whole = rc.response_object(chat, base, "req_abc")
    assert [p["type"] for p in whole["output"][0]["content"]] == ["refusal", "output_text"]
    assert streamed == whole
    for event in events:
        STREAM_EVENT.validate_python(event.data)



# --- metadata without store (OpenAI: 400 "The 'metadata' parameter is only allowed when 'store'
# is enabled"); thrifty reads metadata.task itself and sends metadata upstream only with store --


def _chat_bodies(upstream: RunningServer) -> list[dict[str, Any]]:
    return [c["body"] for c in received(upstream) if c["path"] == "/v1/chat/completions"]


def test_the_mock_refuses_metadata_without_store_as_openai_does(
        served: tuple[Gateway, RunningServer, RunningServer]) -> None:
    upstream = served[2]
    r = httpx.post(upstream.url + "/v1/chat/completions", json={
        "model": "cheap", "messages": [{"role": "user", "content": "hi"}], "metadata": {"task": "quiz"}})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "The 'metadata' parameter is only allowed when 'store' is enabled."
    stored = httpx.post(upstream.url + "/v1/chat/completions", json={
        "model": "cheap", "messages": [{"role": "user", "content": "hi"}], "metadata": {"task": "quiz"}, "store": True})
    assert stored.status_code == 200


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_task_label_in_metadata_routes_and_reaches_the_provider_only_with_store(
        served: tuple[Gateway, RunningServer, RunningServer], api: str) -> None:
    gw, server, upstream = served
    c = client(server)

    def ask(**extra: Any) -> Any:
        if api == "chat":
            return c.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": "What is the capital of France?"}], **extra)
        return c.responses.with_raw_response.create(model="auto", input="What is the capital of France?", **extra)

    reset(upstream)
    before = len(attempt_rows(gw, "r.route"))
    label = {"task": "quiz", "team": "search"}
    ask(metadata=label, extra_body={"cache": False})  # 200: the label routed it, OpenAI never saw it
    assert {r["route"] for r in attempt_rows(gw, "r.route")[before:]} == {"quiz"}
    sent = _chat_bodies(upstream)
    assert sent and all("metadata" not in body for body in sent)
    reset(upstream)
    ask(metadata=label, store=True, extra_body={"cache": False})
    sent = _chat_bodies(upstream)
    assert sent and all(body["metadata"] == label and body["store"] is True for body in sent)
