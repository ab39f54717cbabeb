"""A provider that ignores ``stream: true`` on ``/v1/responses`` and ``/v1/completions`` (older
vLLM and llama.cpp builds, some proxies) and answers one whole JSON answer: the client that asked
for a stream gets that answer as the stream the endpoint sends (the openai SDK's helpers included),
and the ledger records the call once at the answer's usage. Before, the client got a 502 ("asked
for a stream, got a JSON body") for a call the provider had answered and billed. A 200 JSON body
that reports an error is still that error.

Real servers on 127.0.0.1: the gateway; the mock upstream with ``ignore_stream``; and a small
upstream answering items the mock never makes (function calls, reasoning, a web search, a failed
run) and errors in a 200 body.
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

from fixtures.served import attempt_rows, sent, serving
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

PRICE = {"input": 1.0, "output": 2.0}  # USD per million tokens
# Long enough to come in many deltas (completions ask for max_tokens=200 to get all of it).
ANSWER = "A whole answer sent in one piece although the client asked for a stream of it. " * 3
ROW = "r.strategy, r.status, r.stream, r.prompt_tokens, r.completion_tokens, r.cost_usd, a.cost_source"


def cost(prompt: int, completion: int) -> float:
    return (prompt * PRICE["input"] + completion * PRICE["output"]) / 1e6


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    app = create_mock(MockConfig.from_dict({"seed": 3, "models": {
        "deaf": {"answer": ANSWER, "faults": {"ignore_stream": True}},
        "doomed": {"faults": {"background_fail": True}}}}))
    with run_in_thread(app) as server:
        yield server


REASONED = {
    "id": "resp_tools", "object": "response", "created_at": 1_700_000_000, "status": "completed", "model": "tools",
    "error": None, "incomplete_details": None,
    "output": [
        {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Look the weather up first."}]},
        {"id": "ws_1", "type": "web_search_call", "status": "completed",
         "action": {"type": "search", "query": "weather Paris"}},
        {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "get_weather", "status": "completed",
         "arguments": '{"city": "Paris", "unit": "celsius", "days": 3}'},
        {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed", "content": [
            {"type": "output_text", "text": "Checking the forecast for Paris now, one moment.", "annotations": []},
            {"type": "refusal", "refusal": "I will not guess it."}]},
    ],
    "usage": {"input_tokens": 30, "output_tokens": 50, "total_tokens": 80,
              "output_tokens_details": {"reasoning_tokens": 12}},
}
FAILED = {"id": "resp_failed", "object": "response", "created_at": 1_700_000_000, "status": "failed",
          "model": "failed", "output": [], "error": {"code": "server_error", "message": "The model crashed."},
          "usage": {"input_tokens": 9, "output_tokens": 0, "total_tokens": 9}}
ERROR = {"error": {"message": "The engine is overloaded, try later.", "type": "server_error", "code": 503}}


async def _responses(request: Request) -> Response:
    model = (await request.json())["model"]
    return JSONResponse({"tools": REASONED, "failed": FAILED}.get(model, ERROR))


async def _completions(request: Request) -> Response:
    body = await request.json()
    if body["model"] == "tools":  # a whole completion with two choices, one with logprobs
        return JSONResponse({"id": "cmpl-2", "object": "text_completion", "created": 1, "model": "tools", "choices": [
            {"index": 1, "text": "second choice text here", "logprobs": None, "finish_reason": "length"},
            {"index": 0, "text": " hi", "finish_reason": "stop",
             "logprobs": {"tokens": [" hi"], "token_logprobs": [-0.1], "top_logprobs": None, "text_offset": [0]}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}})
    return JSONResponse(ERROR)


@pytest.fixture(scope="module")
def odd() -> Iterator[RunningServer]:
    app = Starlette(routes=[Route("/v1/responses", _responses, methods=["POST"]),
                            Route("/v1/completions", _completions, methods=["POST"])])
    with run_in_thread(app) as server:
        yield server


def config(tmp_path: Path, mock: RunningServer, odd: RunningServer) -> dict[str, Any]:
    return {"providers": {"mock": {"base_url": mock.url + "/v1", "max_retries": 0},
                          "odd": {"base_url": odd.url + "/v1", "max_retries": 0}},
            "models": {"deaf": {"provider": "mock", "price": PRICE}, "doomed": {"provider": "mock", "price": PRICE},
                       **{m: {"provider": "odd", "price": PRICE} for m in ("tools", "failed", "err")}},
            "ledger": {"path": str(tmp_path / "ledger.db")}}


def test_the_stream_helper_gets_a_whole_responses_answer(tmp_path: Path, mock: RunningServer,
                                                         odd: RunningServer) -> None:
    with serving(config(tmp_path, mock, odd)) as (gw, client):
        with client.responses.stream(model="deaf", input="Tell me something.") as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
        rows = attempt_rows(gw, ROW)
    assert sent(mock, "deaf")[-1]["stream"] is True  # the upstream was asked for a stream and ignored it
    assert final.output_text == ANSWER and "".join(deltas) == ANSWER and len(deltas) > 3
    assert final.status == "completed" and final.usage is not None
    usage = final.usage
    assert rows == [{"strategy": "responses", "status": "ok", "stream": 1, "prompt_tokens": usage.input_tokens,
                     "completion_tokens": usage.output_tokens,
                     "cost_usd": pytest.approx(cost(usage.input_tokens, usage.output_tokens)),
                     "cost_source": "computed"}]


def test_create_stream_sends_every_event_in_order(tmp_path: Path, mock: RunningServer, odd: RunningServer) -> None:
    with serving(config(tmp_path, mock, odd)) as (gw, client):
        events = list(client.responses.create(model="deaf", input="Tell me something.", stream=True))
        cut = list(client.responses.create(model="deaf", input="Tell me something.", max_output_tokens=5, stream=True))
        rows = attempt_rows(gw, ROW)
    kinds = [e.type for e in events]
    assert kinds[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.output_text.delta"]
    assert kinds[-5:] == ["response.output_text.delta", "response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    last = events[-1]
    assert last.type == "response.completed" and last.response.usage is not None
    assert cut[-1].type == "response.incomplete" and cut[-1].response.usage is not None
    assert [(r["status"], r["completion_tokens"]) for r in rows] == [
        ("ok", last.response.usage.output_tokens), ("ok", cut[-1].response.usage.output_tokens)]


def test_function_calls_reasoning_and_other_items_arrive_as_their_events(tmp_path: Path, mock: RunningServer,
                                                                         odd: RunningServer) -> None:
    with serving(config(tmp_path, mock, odd)) as (gw, client):
        with client.responses.stream(model="tools", input="Weather in Paris?") as stream:
            kinds = [e.type for e in stream]
            final = stream.get_final_response()
        rows = attempt_rows(gw, ROW)
    for kind in ("response.reasoning_summary_text.delta", "response.function_call_arguments.delta",
                 "response.function_call_arguments.done", "response.refusal.delta", "response.output_text.delta"):
        assert kind in kinds
    assert kinds.count("response.output_item.added") == kinds.count("response.output_item.done") == 4
    assert [item.type for item in final.output] == ["reasoning", "web_search_call", "function_call", "message"]
    call = final.output[2]
    assert call.type == "function_call" and call.arguments == REASONED["output"][2]["arguments"]  # type: ignore[index]
    assert final.output_text == "Checking the forecast for Paris now, one moment."
    assert rows[0]["prompt_tokens"] == 30 and rows[0]["completion_tokens"] == 50
    assert rows[0]["cost_usd"] == pytest.approx(cost(30, 50)) and len(rows) == 1


def test_a_failed_response_ends_in_response_failed_and_is_ledgered_as_an_error(tmp_path: Path, mock: RunningServer,
                                                                               odd: RunningServer) -> None:
    with serving(config(tmp_path, mock, odd)) as (gw, client):
        events = list(client.responses.create(model="failed", input="Hello?", stream=True))
        rows = attempt_rows(gw, ROW)
    assert [e.type for e in events] == ["response.created", "response.in_progress", "response.failed"]
    assert rows == [{"strategy": "responses", "status": "error", "stream": 1, "prompt_tokens": 9,
                     "completion_tokens": 0, "cost_usd": pytest.approx(cost(9, 0)), "cost_source": "computed"}]


def test_legacy_completions_stream_a_whole_completion(tmp_path: Path, mock: RunningServer, odd: RunningServer) -> None:
    with serving(config(tmp_path, mock, odd)) as (gw, client):
        plain = list(client.completions.create(model="deaf", prompt="Say it.", max_tokens=200, stream=True))
        counted = list(client.completions.create(model="deaf", prompt="Say it.", max_tokens=200, stream=True,
                                                 stream_options={"include_usage": True}))
        two = list(client.completions.create(model="tools", prompt="Say it.", n=2, stream=True))
        rows = attempt_rows(gw, ROW)
    assert sent(mock, "deaf")[-1]["stream"] is True
    text = "".join(c.choices[0].text for c in plain if c.choices)
    assert text.strip() == ANSWER.strip()
    assert len([c for c in plain if c.choices and c.choices[0].text]) > 1
    assert all(c.usage is None for c in plain)  # the client did not ask for usage: none is sent
    usage = counted[-1].usage
    assert usage is not None and not counted[-1].choices
    assert rows[0]["completion_tokens"] == rows[1]["completion_tokens"] == usage.completion_tokens
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"] and rows[0]["stream"] == 1
    assert rows[0]["cost_usd"] == pytest.approx(cost(usage.prompt_tokens, usage.completion_tokens))
    by_index: dict[int, str] = {}
    for chunk in two:
        for choice in chunk.choices:
            by_index[choice.index] = by_index.get(choice.index, "") + choice.text
    assert by_index == {0: " hi", 1: "second choice text here"}
    assert [c.choices[0].logprobs is not None for c in two if c.choices and c.choices[0].index == 0] == [True]
    assert (rows[2]["prompt_tokens"], rows[2]["completion_tokens"]) == (7, 9)


@pytest.mark.parametrize("endpoint", ["responses", "completions"])
def test_an_error_in_a_200_body_is_still_that_error(tmp_path: Path, mock: RunningServer, odd: RunningServer,
                                                    endpoint: str) -> None:
    def call(model: str) -> list[Any]:
        if endpoint == "responses":
            return list(client.responses.create(model=model, input="Hello?", stream=True))
        return list(client.completions.create(model=model, prompt="Hello?", stream=True))

    with serving(config(tmp_path, mock, odd)) as (gw, client):
        assert call("deaf")  # a whole answer streams...
        with pytest.raises(openai.APIStatusError) as err:  # ...an error body does not
            call("err")
        rows = attempt_rows(gw, "r.status, a.error")
    assert err.value.status_code == 502  # the gateway's status for a provider's 5xx, as on chat
    assert "reported error 503 in its answer: The engine is overloaded, try later." in err.value.message
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert "overloaded" in rows[1]["error"]


def test_the_mock_replays_a_failed_background_response_as_response_failed(tmp_path: Path, mock: RunningServer,
                                                                         odd: RunningServer) -> None:
    # The events now come from the shared builder, which reads the status; the mock's own copy
    # took the first output item of a response that has none and broke off the replay.
    with serving(config(tmp_path, mock, odd)) as (_, client):
        queued = client.responses.create(model="doomed", input="Hello?", background=True)
        events = list(client.responses.retrieve(queued.id, stream=True))
    assert [e.type for e in events] == ["response.created", "response.in_progress", "response.failed"]
    assert events[-1].response.error is not None and events[-1].response.error.code == "server_error"
