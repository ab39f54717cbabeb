"""POST /v1/responses and /v1/completions through a real gateway on 127.0.0.1, in front of the
mock upstream, driven by the official openai SDK: answers and streams pass through unchanged,
usage (the Responses API's input/output tokens, cached and reasoning tokens included) is priced
into one ledger row per request and one attempt row per upstream call, and keys, retries,
provider compat and errors apply as for chat and embeddings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.tokens import count_messages, count_text

SEED = 5
UPSTREAM_KEY = "sk-upstream-passthrough-0000"
PRICE = {"input": 1.0, "output": 2.0, "cached_input": 0.25}  # USD per million tokens
# Over 1,024 tokens, so the mock's prompt cache (OpenAI's rule) reports a cached prefix.
LONG = "Read this policy carefully before you answer. " * 140


def cost(prompt: int, completion: int, cached: int = 0) -> float:
    return ((prompt - cached) * PRICE["input"] + cached * PRICE["cached_input"] + completion * PRICE["output"]) / 1e6


@pytest.fixture(scope="module")
def mock() -> Iterator[tuple[RunningServer, Any]]:
    app = create_mock(MockConfig.from_dict({"seed": SEED, "api_key": UPSTREAM_KEY, "models": {
        "cachey-up": {"prompt_cache": True},
        "thinker-up": {"reasoning_tokens": [20, 40]},
        "broken": {"faults": {"status": 500}},
        "flaky": {"faults": {"fail_first": 1, "fail_status": 503}},
        "cut": {"faults": {"truncate_after": 4}}}}))
    with run_in_thread(app) as server:
        yield server, app.state.mock


def no_usage(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """An in-process upstream that sends no usage: the gateway must count the text itself."""
    if path == "/responses":
        return {"object": "response", "status": "completed", "model": body["model"], "output": [
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "four words of answer"}]}]}
    return {"object": "text_completion", "model": body["model"], "choices": [{"index": 0, "text": "four words of answer"}]}


def gateway_config(mock_url: str, tmp: Path, auth: bool = False) -> dict[str, Any]:
    mock = {"base_url": mock_url + "/v1", "api_key": UPSTREAM_KEY, "max_retries": 1, "backoff_base_s": 0.01}
    return {
        "providers": {"mock": mock,
                      "old": {**mock, "compat": {"developer_role": "system", "drop_params": ["store", "metadata"]}},
                      "inproc": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"gpt": {"provider": "mock", "upstream_model": "gpt-up", "aliases": ["g"], "price": PRICE},
                   "cachey": {"provider": "mock", "upstream_model": "cachey-up", "price": PRICE},
                   "thinker": {"provider": "mock", "upstream_model": "thinker-up", "price": PRICE},
                   "broken": {"provider": "mock", "price": PRICE},
                   "flaky": {"provider": "mock", "price": PRICE},
                   "cut": {"provider": "mock", "price": PRICE},
                   "legacy": {"provider": "old", "upstream_model": "legacy-up", "price": PRICE},
                   "inproc": {"provider": "inproc", "price": PRICE}},
        "default_model": "gpt",
        "ledger": {"path": str(tmp / "ledger.db")},
        "auth": {"enabled": auth, "admin_key": "admin-passthrough-test-0000"},
    }


@pytest.fixture(scope="module")
def served(mock: tuple[RunningServer, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, RunningServer]]:
    tmp = tmp_path_factory.mktemp("passthrough")
    inproc = FunctionProvider(lambda b: chat_response(b["model"], "ok"), name="inproc", post=no_usage)
    gw = Gateway.from_config(gateway_config(mock[0].url, tmp), providers={"inproc": inproc})
    with run_in_thread(gw.app()) as server:
        yield gw, server
    gw.close()


def client(server: RunningServer, key: str = "sk-client-0000", base: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + base, api_key=key, max_retries=0, timeout=30)


def direct(mock: tuple[RunningServer, Any], path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The mock's own answer to ``body`` (deterministic: the same text and usage)."""
    r = httpx.post(mock[0].url + path, json=body, headers={"authorization": f"Bearer {UPSTREAM_KEY}"}, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def last_upstream_body(mock: tuple[RunningServer, Any]) -> dict[str, Any]:
    body = mock[1].recorder.last(1)[0]["body"]
    assert isinstance(body, dict)
    return body


def rows(gw: Gateway, request_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    gw.flush()
    assert gw.ledger is not None
    store = gw.ledger.store
    cols = ("strategy, requested_model, served_model, prompt_tokens, cached_tokens, completion_tokens, "
            "reasoning_tokens, cost_usd, baseline_cost_usd, status, error_type, n_attempts, stream, key_id")
    found = store.query(f"SELECT {cols} FROM requests WHERE request_id = ?", [request_id])
    assert len(found) == 1, found
    req = dict(zip([c.strip() for c in cols.split(",")], found[0], strict=True))
    acols = "model, purpose, status, prompt_tokens, completion_tokens, cost_usd, cost_source"
    att = [dict(zip([c.strip() for c in acols.split(",")], r, strict=True)) for r in
           store.query(f"SELECT {acols} FROM attempts WHERE request_id = ? ORDER BY seq", [request_id])]
    return req, att


# --- /v1/responses -------------------------------------------------------------------------


def test_responses_create_passes_through_and_is_recorded(served: tuple[Gateway, RunningServer],
                                                         mock: tuple[RunningServer, Any]) -> None:
    gw, server = served
    raw = client(server).responses.with_raw_response.create(
        model="g", input="What is the capital of France?", instructions="Answer briefly.", max_output_tokens=200)
    resp = raw.parse()
    sent = last_upstream_body(mock)
    assert sent == {"model": "gpt-up", "input": "What is the capital of France?", "instructions": "Answer briefly.",
                    "max_output_tokens": 200}
    expected = direct(mock, "/v1/responses", sent)
    assert resp.output_text == expected["output"][0]["content"][0]["text"] and resp.output_text
    assert resp.model == "gpt-up" and raw.headers["x-thrifty-model"] == "gpt"
    assert resp.usage is not None and resp.usage.model_dump() == expected["usage"] | {
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0, "cache_write_tokens_details": None},
        "output_tokens_details": {"reasoning_tokens": 0}}
    usage = expected["usage"]
    price = cost(usage["input_tokens"], usage["output_tokens"])
    assert float(raw.headers["x-thrifty-cost-usd"]) == pytest.approx(price, abs=1e-8)
    assert float(raw.headers["x-thrifty-latency-ms"]) >= 0

    req, att = rows(gw, raw.headers["x-thrifty-request-id"])
    assert {k: req[k] for k in ("strategy", "requested_model", "served_model", "prompt_tokens", "completion_tokens",
                                "status", "n_attempts", "stream")} == {
        "strategy": "responses", "requested_model": "g", "served_model": "gpt",
        "prompt_tokens": usage["input_tokens"], "completion_tokens": usage["output_tokens"],
        "status": "ok", "n_attempts": 1, "stream": 0}
    assert req["cost_usd"] == pytest.approx(price) and req["baseline_cost_usd"] == pytest.approx(price)
    assert [(a["model"], a["purpose"], a["status"], a["cost_source"]) for a in att] == [
        ("gpt", "responses", "ok", "computed")]


def test_responses_cached_and_reasoning_tokens_are_priced(served: tuple[Gateway, RunningServer]) -> None:
    gw, server = served
    c = client(server)
    first = c.responses.create(model="cachey", input=[{"role": "user", "content": LONG + "First question?"}])
    raw = c.responses.with_raw_response.create(
        model="cachey", input=[{"role": "user", "content": [{"type": "input_text", "text": LONG + "Second?"}]}])
    second = raw.parse()
    assert first.usage is not None and first.usage.input_tokens_details.cached_tokens == 0
    assert second.usage is not None
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached >= 1024 and cached < second.usage.input_tokens
    req, att = rows(gw, raw.headers["x-thrifty-request-id"])
    assert (req["prompt_tokens"], req["cached_tokens"]) == (second.usage.input_tokens, cached)
    assert att[0]["cost_source"] == "computed"
    assert req["cost_usd"] == pytest.approx(cost(second.usage.input_tokens, second.usage.output_tokens, cached))

    raw = c.responses.with_raw_response.create(model="thinker", input="Think about this.")
    thought = raw.parse()
    assert thought.usage is not None
    reasoning = thought.usage.output_tokens_details.reasoning_tokens
    assert 20 <= reasoning <= 40 and thought.usage.output_tokens > reasoning
    req, _ = rows(gw, raw.headers["x-thrifty-request-id"])
    # output_tokens already include the reasoning: billed once, not twice.
    assert (req["completion_tokens"], req["reasoning_tokens"]) == (thought.usage.output_tokens, reasoning)
    assert req["cost_usd"] == pytest.approx(cost(thought.usage.input_tokens, thought.usage.output_tokens))


def test_responses_stream_passes_events_through(served: tuple[Gateway, RunningServer],
                                               mock: tuple[RunningServer, Any]) -> None:
    gw, server = served
    with client(server).responses.with_streaming_response.create(
            model="gpt", input="Tell me about rivers.", stream=True) as raw:
        request_id = raw.headers["x-thrifty-request-id"]
        assert raw.headers["x-thrifty-model"] == "gpt"
        events = list(raw.parse())
    sent = last_upstream_body(mock)
    assert sent == {"model": "gpt-up", "input": "Tell me about rivers.", "stream": True}
    expected = direct(mock, "/v1/responses", {k: v for k, v in sent.items() if k != "stream"})
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-1] == "response.completed" and kinds.count("response.output_text.delta") >= 2
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == expected["output"][0]["content"][0]["text"]
    final = events[-1].response  # type: ignore[union-attr]
    assert final.usage is not None and final.usage.input_tokens == expected["usage"]["input_tokens"]

    req, att = rows(gw, request_id)
    usage = expected["usage"]
    assert (req["strategy"], req["status"], req["stream"]) == ("responses", "ok", 1)
    assert (req["prompt_tokens"], req["completion_tokens"]) == (usage["input_tokens"], usage["output_tokens"])
    assert req["cost_usd"] == pytest.approx(cost(usage["input_tokens"], usage["output_tokens"]))
    assert [(a["purpose"], a["status"], a["cost_source"]) for a in att] == [("responses", "ok", "computed")]


def test_responses_stream_bytes_are_the_providers(served: tuple[Gateway, RunningServer]) -> None:
    _, server = served
    with httpx.stream("POST", server.url + "/v1/responses", json={"model": "gpt", "input": "Hi", "stream": True},
                      timeout=30) as r:
        body = r.read().decode()
    assert r.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in body.split("\n\n") if b]
    # Each event keeps its `event:` line (the SDK reads it) and there is no `[DONE]`.
    assert all(b.startswith("event: response.") and "\ndata: {" in b for b in blocks)
    assert "[DONE]" not in body and blocks[-1].startswith("event: response.completed")


def test_truncated_responses_stream_raises_and_is_an_error_row(served: tuple[Gateway, RunningServer]) -> None:
    gw, server = served
    with client(server).responses.with_streaming_response.create(model="cut", input="Long answer?", stream=True) as raw:
        request_id = raw.headers["x-thrifty-request-id"]
        with pytest.raises(openai.APIError) as err:
            list(raw.parse())
    assert "truncated" in err.value.message
    req, att = rows(gw, request_id)
    assert (req["status"], req["error_type"]) == ("error", "UpstreamError")  # the connection dropped mid-stream
    # The prompt reached the provider: the attempt is priced (its input counted offline).
    assert att[0]["status"] == "error" and att[0]["prompt_tokens"] > 0 and att[0]["cost_usd"] > 0


# --- /v1/completions -------------------------------------------------------------------------


def test_completions_create_passes_through_and_is_recorded(served: tuple[Gateway, RunningServer],
                                                           mock: tuple[RunningServer, Any]) -> None:
    gw, server = served
    raw = client(server).completions.with_raw_response.create(model="gpt", prompt="Once upon a time", max_tokens=40,
                                                              temperature=0.2, echo=False)
    resp = raw.parse()
    sent = last_upstream_body(mock)
    assert sent == {"model": "gpt-up", "prompt": "Once upon a time", "max_tokens": 40, "temperature": 0.2,
                    "echo": False}
    expected = direct(mock, "/v1/completions", sent)
    assert resp.object == "text_completion" and resp.model == "gpt-up"
    assert [c.text for c in resp.choices] == [c["text"] for c in expected["choices"]]
    assert resp.usage is not None and resp.usage.prompt_tokens == count_text("Once upon a time")
    price = cost(resp.usage.prompt_tokens, resp.usage.completion_tokens)
    assert float(raw.headers["x-thrifty-cost-usd"]) == pytest.approx(price, abs=1e-8)
    req, att = rows(gw, raw.headers["x-thrifty-request-id"])
    assert (req["strategy"], req["served_model"], req["prompt_tokens"], req["completion_tokens"], req["stream"]) == (
        "completions", "gpt", resp.usage.prompt_tokens, resp.usage.completion_tokens, 0)
    assert req["cost_usd"] == pytest.approx(price) and req["baseline_cost_usd"] == pytest.approx(price)
    assert [(a["purpose"], a["status"], a["cost_source"]) for a in att] == [("completions", "ok", "computed")]


def test_completions_stream_without_usage_asked(served: tuple[Gateway, RunningServer],
                                                mock: tuple[RunningServer, Any]) -> None:
    gw, server = served
    with client(server).completions.with_streaming_response.create(
            model="gpt", prompt="Write a haiku", max_tokens=30, stream=True) as raw:
        request_id = raw.headers["x-thrifty-request-id"]
        chunks = list(raw.parse())
    # thrifty asked upstream for the usage chunk to price the stream...
    sent = last_upstream_body(mock)
    assert sent["stream_options"] == {"include_usage": True}
    # ...and the client, which did not, gets none: every chunk has a choice and no usage.
    assert chunks and all(c.choices and c.usage is None for c in chunks)
    text = "".join(c.choices[0].text for c in chunks)
    expected = direct(mock, "/v1/completions", {k: v for k, v in sent.items() if k not in ("stream", "stream_options")})
    assert text == expected["choices"][0]["text"]
    req, att = rows(gw, request_id)
    usage = expected["usage"]
    assert (req["prompt_tokens"], req["completion_tokens"], req["stream"]) == (
        usage["prompt_tokens"], usage["completion_tokens"], 1)
    assert req["cost_usd"] == pytest.approx(cost(usage["prompt_tokens"], usage["completion_tokens"]))
    assert att[0]["cost_source"] == "computed"  # the provider's usage, not an offline count


def test_completions_stream_with_usage_asked(served: tuple[Gateway, RunningServer]) -> None:
    _, server = served
    with httpx.stream("POST", server.url + "/v1/completions", timeout=30, json={
            "model": "gpt", "prompt": "Write a haiku", "max_tokens": 30, "stream": True,
            "stream_options": {"include_usage": True}}) as r:
        body = r.read().decode()
    blocks = [b for b in body.split("\n\n") if b]
    assert blocks[-1] == "data: [DONE]"
    import json

    usage_chunk = json.loads(blocks[-2][len("data: "):])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] > 0
    stream = client(server).completions.create(model="gpt", prompt="Write a haiku", max_tokens=30, stream=True,
                                               stream_options={"include_usage": True})
    last = list(stream)[-1]
    assert last.usage is not None and last.usage.total_tokens == usage_chunk["usage"]["total_tokens"]


def test_completions_without_v1_and_prompt_lists(served: tuple[Gateway, RunningServer]) -> None:
    _, server = served
    resp = client(server, base="").completions.create(model="gpt", prompt=["one", "two"], max_tokens=5)
    assert sorted(c.index for c in resp.choices) == [0, 1]
    assert resp.usage is not None and resp.usage.prompt_tokens == count_text("one") + count_text("two")


# --- both: usage the provider left out, errors, retries, compat, keys --------------------------


@pytest.mark.parametrize("endpoint", ["responses", "completions"])
def test_missing_usage_is_counted_offline_and_marked_estimated(served: tuple[Gateway, RunningServer],
                                                               endpoint: str) -> None:
    gw, server = served
    c = client(server)
    if endpoint == "responses":
        raw: Any = c.responses.with_raw_response.create(model="inproc", input="count these words")
    else:
        raw = c.completions.with_raw_response.create(model="inproc", prompt="count these words")
    req, att = rows(gw, raw.headers["x-thrifty-request-id"])
    prompt = count_messages([{"role": "user", "content": "count these words"}])
    answer = count_text("four words of answer")
    assert (req["prompt_tokens"], req["completion_tokens"]) == (prompt, answer)
    assert req["cost_usd"] == pytest.approx(cost(prompt, answer)) and att[0]["cost_source"] == "estimated"


def test_in_process_provider_cannot_stream_these(served: tuple[Gateway, RunningServer]) -> None:
    _, server = served
    with pytest.raises(openai.BadRequestError) as err:
        list(client(server).responses.create(model="inproc", input="x", stream=True))
    assert err.value.code == "unsupported_endpoint" and "inproc" in err.value.message


# `auto` and routes on /v1/responses are served by the chat pipeline (test_responses_routed.py).
@pytest.mark.parametrize(("endpoint", "model"), [("responses", "nope"), ("completions", "nope"),
                                                 ("completions", "auto"), ("completions", "route:any")])
def test_unknown_models_and_routes_are_404s(served: tuple[Gateway, RunningServer], endpoint: str,
                                            model: str) -> None:
    gw, server = served
    body = {"model": model, "input": "x"} if endpoint == "responses" else {"model": model, "prompt": "x"}
    r = httpx.post(f"{server.url}/v1/{endpoint}", json=body, timeout=30)
    err = r.json()["error"]
    assert r.status_code == 404 and err["code"] == "model_not_found" and err["param"] == "model"
    assert f"'{model}' does not exist" in err["message"] and "gpt" in err["message"]
    if model != "nope":  # says why `auto` works on chat but not here
        assert "routes choose chat models" in err["message"]
    req, att = rows(gw, r.headers["x-request-id"])
    assert (req["strategy"], req["status"], req["error_type"], att) == (endpoint, "error", "NotFoundError", [])


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/responses", {"input": "x"}, "model"),
    ("/v1/responses", {"model": "gpt"}, "input"),
    ("/v1/responses", {"model": "gpt", "input": 5}, "input"),
    ("/v1/responses", {"model": "gpt", "input": ["not an item"]}, "input"),
    ("/v1/responses", {"model": "gpt", "input": "x", "max_output_tokens": "9"}, "max_output_tokens"),
    ("/v1/responses", {"model": "gpt", "input": "x", "stream": "yes"}, "stream"),
    ("/v1/completions", {"model": "gpt"}, "prompt"),
    ("/v1/completions", {"model": "gpt", "prompt": ""}, "prompt"),
    ("/v1/completions", {"model": "gpt", "prompt": [1, "a"]}, "prompt"),
    ("/v1/completions", {"model": "gpt", "prompt": "x", "max_tokens": 1.5}, "max_tokens"),
    ("/v1/completions", {"model": "gpt", "prompt": "x", "stream_options": "usage"}, "stream_options"),
])
def test_bad_bodies_are_400s(served: tuple[Gateway, RunningServer], path: str, body: dict[str, Any],
                             param: str) -> None:
    _, server = served
    r = httpx.post(server.url + path, json=body, timeout=30)
    err = r.json()["error"]
    assert r.status_code == 400 and err["type"] == "invalid_request_error" and err["param"] == param
    assert r.headers["x-request-id"].startswith("req_")


def test_upstream_failure_is_a_502_after_retries(served: tuple[Gateway, RunningServer],
                                                 mock: tuple[RunningServer, Any]) -> None:
    gw, server = served
    before = mock[1].faults.calls.get("broken", 0)
    with pytest.raises(openai.InternalServerError) as err:
        client(server).responses.create(model="broken", input="x")
    assert err.value.status_code == 502 and "HTTP 500" in err.value.message
    assert err.value.response.headers["x-should-retry"] == "false"
    assert mock[1].faults.calls["broken"] - before == 2  # the provider's max_retries: 1
    req, att = rows(gw, str(err.value.request_id))
    assert (req["status"], req["error_type"], req["n_attempts"]) == ("error", "UpstreamStatusError", 2)
    assert (req["requested_model"], req["served_model"], req["cost_usd"]) == ("broken", None, 0.0)
    assert [a["status"] for a in att] == ["error", "error"]

    with pytest.raises(openai.InternalServerError):  # a stream fails before its first event the same way
        list(client(server).completions.create(model="broken", prompt="x", stream=True))


def test_retryable_failure_is_retried(served: tuple[Gateway, RunningServer]) -> None:
    gw, server = served
    raw = client(server).completions.with_raw_response.create(model="flaky", prompt="again", max_tokens=5)
    assert raw.parse().choices
    req, att = rows(gw, raw.headers["x-thrifty-request-id"])
    assert req["status"] == "ok" and req["n_attempts"] == 2 and [a["status"] for a in att] == ["error", "ok"]


def test_provider_compat_applies(served: tuple[Gateway, RunningServer], mock: tuple[RunningServer, Any]) -> None:
    _, server = served
    client(server).responses.create(
        model="legacy", store=False, metadata={"app": "x"}, max_output_tokens=50,
        input=[{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "Hi"}])
    assert last_upstream_body(mock) == {
        "model": "legacy-up", "max_output_tokens": 50,
        "input": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]}


def test_virtual_keys_apply_as_for_chat(mock: tuple[RunningServer, Any], tmp_path: Path) -> None:
    gw = Gateway.from_config(gateway_config(mock[0].url, tmp_path, auth=True))
    assert gw.ops.keys is not None
    limited, secret = gw.ops.keys.create("responses-app", routes=["gpt"])
    with run_in_thread(gw.app()) as server:
        raw = client(server, key=secret).responses.with_raw_response.create(model="gpt", input="allowed")
        assert raw.parse().output_text
        with pytest.raises(openai.PermissionDeniedError) as denied:
            client(server, key=secret).completions.create(model="thinker", prompt="refused")
        with pytest.raises(openai.AuthenticationError):
            client(server, key="thr-not-a-real-key-0000").responses.create(model="gpt", input="x")
    assert denied.value.code == "model_not_allowed" and "'thinker'" in denied.value.message
    req, _ = rows(gw, raw.headers["x-thrifty-request-id"])
    assert req["key_id"] == limited.key_id and req["status"] == "ok"
    gw.flush()
    assert gw.ledger is not None
    # Refused requests never reach the pipeline, as for chat: only the allowed one is recorded.
    assert gw.ledger.store.query("SELECT COUNT(*) FROM requests")[0][0] == 1
    gw.close()
