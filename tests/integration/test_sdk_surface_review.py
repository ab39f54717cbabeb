"""The gateway's HTTP API as an app using the official openai SDK sees it: what the provider says
when it fails reaches the SDK's exception whole, whatever shape the provider's server writes its
errors in (or when it reports one inside a 200 answer), the SDK's other resources are told what
is served, and every answer carries the request id the SDK exposes.

Real servers on 127.0.0.1: the gateway, the mock upstream, and small upstreams that answer the
way vLLM, TGI and OpenRouter do when they fail.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fixtures.served import attempt_rows, serving
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.server import RunningServer, run_in_thread

USER = [{"role": "user", "content": "Hello there"}]
LONG = ("This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
        "(4000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion.")
TGI = ("Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs` tokens "
       "and 1000 `max_new_tokens`")
GEMINI = "Function calling with a response mime type: 'application/json' is unsupported"
# model -> (HTTP status, body) the failing upstream answers chat requests for that model with.
FAILURES: dict[str, tuple[int, Any]] = {
    # vLLM before its OpenAI-shaped errors (and FastChat, LMDeploy): the fields at the top level.
    "vllm": (400, {"object": "error", "message": LONG, "type": "BadRequestError", "param": "max_tokens",
                   "code": 400}),
    # TGI, Ollama's native API, LM Studio: the error as a string.
    "tgi": (422, {"error": TGI, "error_type": "validation"}),
    # Gemini's OpenAI-compatible endpoint: the error object in a list.
    "gemini": (400, [{"error": {"code": 400, "message": GEMINI, "status": "INVALID_ARGUMENT"}}]),
    # FastAPI's validation answer.
    "fastapi": (422, {"detail": [{"loc": ["body", "temperature"], "msg": "Input should be less than or equal to 2",
                                  "type": "less_than_equal"}]}),
    # OpenRouter once the model started: HTTP 200, the error in place of the answer.
    "midway": (200, {"error": {"code": 502, "message": "Provider returned error: model overloaded"}}),
    "midway-limited": (200, {"error": {"code": 429, "message": "Rate limit exceeded: free-models-per-min"}}),
    # A server that answers errors as one JSON object with a 200, even to a request for a stream.
    "loading": (200, {"error": {"code": 503, "message": "No instances available: model is loading"}}),
}


async def _chat(request: Request) -> Response:
    body = await request.json()
    status, error = FAILURES[body["model"]]
    if body.get("stream") and status == 200 and body["model"] != "loading":
        async def events() -> AsyncIterator[bytes]:
            yield b"data: " + json.dumps(error).encode() + b"\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")
    return JSONResponse(error, status_code=status)


async def _passthrough(request: Request) -> Response:
    return JSONResponse(FAILURES["midway"][1])  # every passthrough endpoint fails midway


@pytest.fixture(scope="module")
def failing() -> Iterator[RunningServer]:
    routes = [Route("/v1/chat/completions", _chat, methods=["POST"]),
              *(Route(f"/v1/{path}", _passthrough, methods=["POST"]) for path in ("embeddings", "completions",
                                                                                "responses"))]
    with run_in_thread(Starlette(routes=routes)) as server:
        yield server


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock()) as server:
        yield server


def config(tmp_path: Path, upstream: RunningServer, models: list[str]) -> dict[str, Any]:
    return {"providers": {"up": {"base_url": upstream.url + "/v1", "api_key": "sk-up-0000", "max_retries": 0}},
            "models": {m: {"provider": "up", "price": {"input": 1.0, "output": 2.0}} for m in models},
            "ledger": {"path": str(tmp_path / "ledger.db")}}


@pytest.mark.parametrize(("model", "status", "sdk_error", "says", "param"), [
    ("vllm", 400, openai.BadRequestError, LONG, "max_tokens"),
    ("tgi", 422, openai.UnprocessableEntityError, TGI, None),
    ("gemini", 400, openai.BadRequestError, GEMINI, None),
    ("fastapi", 422, openai.UnprocessableEntityError, "body.temperature: Input should be less than or equal to 2",
     None),
])
def test_a_providers_error_reaches_the_sdk_whole_in_any_shape(
        tmp_path: Path, failing: RunningServer, model: str, status: int, sdk_error: type[openai.APIStatusError],
        says: str, param: str | None) -> None:
    # Read as OpenAI's shape alone, these reached the app as raw JSON cut at 200 characters (the
    # vLLM message lost "Please reduce the length of the messages or completion.") without `param`.
    with serving(config(tmp_path, failing, [model])) as (_, client), pytest.raises(sdk_error) as err:
        client.chat.completions.create(model=model, messages=USER)
    assert err.value.status_code == status
    body = err.value.body
    assert isinstance(body, dict)
    assert body["message"] == f"up: upstream returned HTTP {status}: {says}"
    assert body["param"] == param and "{" not in body["message"]


def test_an_error_inside_a_200_answer_keeps_the_providers_reason(tmp_path: Path, failing: RunningServer) -> None:
    # OpenRouter answers 200 and puts the error in the body once the model started. The app got
    # "response has no 'choices' array", without the reason.
    with serving(config(tmp_path, failing, ["midway"])) as (_, client), \
            pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="midway", messages=USER)
    assert err.value.status_code == 502 and err.value.response.headers["x-should-retry"] == "false"
    assert "model overloaded" in err.value.message and "choices" not in err.value.message


@pytest.mark.parametrize("stream", [False, True])
def test_a_rate_limit_inside_a_200_answer_is_a_rate_limit(
        tmp_path: Path, failing: RunningServer, stream: bool) -> None:
    # Also as a stream's first event: it was a 502 the SDK may not retry, not the 429 it backs off on.
    with serving(config(tmp_path, failing, ["midway-limited"])) as (_, client), \
            pytest.raises(openai.RateLimitError) as err:
        reply = client.chat.completions.create(model="midway-limited", messages=USER, stream=stream)
        if stream:
            list(reply)
    assert err.value.code == "upstream_rate_limited" and "free-models-per-min" in err.value.message


def test_a_json_error_answering_a_stream_keeps_its_reason(tmp_path: Path, failing: RunningServer) -> None:
    # Read as SSE lines, the JSON passed for a stream "ended before [DONE] (truncated)".
    with serving(config(tmp_path, failing, ["loading"])) as (_, client), \
            pytest.raises(openai.InternalServerError) as err:
        list(client.chat.completions.create(model="loading", messages=USER, stream=True))
    assert "model is loading" in err.value.message and "truncated" not in err.value.message


@pytest.mark.parametrize(("endpoint", "stream"), [
    ("embeddings", False), ("completions", False), ("responses", False), ("completions", True), ("responses", True)])
def test_an_error_inside_a_200_answer_fails_the_passthrough_endpoints(
        tmp_path: Path, failing: RunningServer, endpoint: str, stream: bool) -> None:
    # Relayed as a success, the SDK returned an object full of None (or raised "No embedding data
    # received") and the ledger recorded an ok request at an estimated cost; asked for a stream,
    # the client was told "asked for a stream, got a JSON body", without the reason.
    with serving(config(tmp_path, failing, ["midway"])) as (gw, client):
        with pytest.raises(openai.InternalServerError) as err:
            if endpoint == "embeddings":
                client.embeddings.create(model="midway", input="hello", encoding_format="float")
            elif endpoint == "completions":
                reply: Any = client.completions.create(model="midway", prompt="hello", stream=stream)
            else:
                reply = client.responses.create(model="midway", input="hello", stream=stream)
            if stream:
                list(reply)
        assert "model overloaded" in err.value.message and err.value.status_code == 502
        rows = attempt_rows(gw, "r.strategy, r.status, a.status AS attempt, r.cost_usd")
    assert rows == [{"strategy": endpoint, "status": "error", "attempt": "error", "cost_usd": 0.0}]


@pytest.mark.parametrize("call", ["retrieve", "delete", "messages", "containers", "evals"])
def test_the_sdks_other_resources_are_told_what_is_served(tmp_path: Path, mock: RunningServer, call: str) -> None:
    # Stored chat completions (`store: true`) live at the provider; these calls got a bare
    # "No route for ..." (code not_found), which reads like a wrong base_url.
    with serving(config(tmp_path, mock, ["cheap"])) as (_, client), pytest.raises(openai.NotFoundError) as err:
        if call == "retrieve":
            client.chat.completions.retrieve("chatcmpl-123")
        elif call == "delete":
            client.chat.completions.delete("chatcmpl-123")
        elif call == "messages":
            client.chat.completions.messages.list("chatcmpl-123")
        elif call == "containers":
            client.containers.list()
        else:
            client.evals.list()
    assert err.value.code == "unsupported_endpoint" and err.value.request_id
    assert "thrifty does not serve" in err.value.message and "POST /v1/chat/completions" in err.value.message


def test_the_model_list_and_a_model_carry_the_request_id(tmp_path: Path, mock: RunningServer) -> None:
    # OpenAI sends x-request-id on every answer; the SDK exposes it as `_request_id`.
    with serving(config(tmp_path, mock, ["cheap"])) as (_, client):
        listed = client.models.with_raw_response.list()
        one = client.models.with_raw_response.retrieve("cheap")
        assert "cheap" in {m.id for m in listed.parse()} and one.parse().id == "cheap"
        for raw in (listed, one):
            assert raw.request_id and raw.request_id.startswith("req_")
            assert raw.headers["x-thrifty-request-id"] == raw.request_id
