"""POST /v1/embeddings through a real gateway on 127.0.0.1, in front of the mock upstream,
driven by the official openai SDK: vectors and usage pass through unchanged, the catalog,
virtual keys and the ledger apply as for chat, and upstream failures map as chat's do."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from thrifty.gateway import Gateway
from thrifty.ledger.report import spend_report
from thrifty.ledger.store import open_store
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.embeddings import DEFAULT_DIMENSIONS, vector
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.tokens import count_text

SEED = 11
UPSTREAM = "text-embedding-3-small"
PRICE_IN = 0.02  # USD per million input tokens
ADMIN = "admin-embeddings-test-key-123456"


def no_usage_embeddings(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """An in-process upstream that sends no usage: the gateway must count the input itself."""
    assert path == "/embeddings"
    return {"object": "list", "model": body["model"], "data": [{"object": "embedding", "index": 0, "embedding": [1.0]}]}


@pytest.fixture(scope="module")
def mock() -> Iterator[tuple[RunningServer, Any]]:
    app = create_mock(MockConfig.from_dict({"seed": SEED, "models": {
        "broken": {"faults": {"status": 500}},
        "flaky": {"faults": {"fail_first": 1, "fail_status": 503}}}}))
    with run_in_thread(app) as server:
        yield server, app.state.mock


def gateway_config(mock_url: str, tmp: Path, auth: bool) -> dict[str, Any]:
    return {
        "providers": {"mock": {"base_url": mock_url + "/v1", "api_key": "sk-upstream-emb-0000", "max_retries": 1,
                               "backoff_base_s": 0.01},
                      "inproc": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"embed": {"provider": "mock", "upstream_model": UPSTREAM, "aliases": ["emb"],
                             "price": {"input": PRICE_IN, "output": 0}},
                   "other": {"provider": "mock", "price": {"input": 1, "output": 1}},
                   "broken": {"provider": "mock", "price": {"input": 1, "output": 1}},
                   "flaky": {"provider": "mock", "price": {"input": 1, "output": 1}},
                   "inproc": {"provider": "inproc", "price": {"input": 1, "output": 1}}},
        "ledger": {"path": str(tmp / "ledger.db")},
        "auth": {"enabled": auth, "admin_key": ADMIN},
    }


@pytest.fixture(scope="module")
def served(mock: tuple[RunningServer, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, RunningServer]]:
    tmp = tmp_path_factory.mktemp("emb")
    inproc = FunctionProvider(lambda b: chat_response(b["model"], "ok"), name="inproc", post=no_usage_embeddings)
    gw = Gateway.from_config(gateway_config(mock[0].url, tmp, auth=False), providers={"inproc": inproc})
    with run_in_thread(gw.app()) as server:
        yield gw, server
    gw.close()


def client(server: RunningServer, key: str = "sk-client-0000", base: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + base, api_key=key, max_retries=0)


def last_upstream_body(mock: tuple[RunningServer, Any]) -> dict[str, Any]:
    body = mock[1].recorder.last(1)[0]["body"]
    assert isinstance(body, dict)
    return body


def request_rows(gw: Gateway, request_id: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    gw.flush()
    assert gw.ledger is not None
    store = gw.ledger.store
    req = store.query("SELECT strategy, requested_model, served_model, prompt_tokens, completion_tokens, cost_usd, "
                      "baseline_cost_usd, status, error_type, n_attempts, key_id FROM requests WHERE request_id = ?",
                      [request_id])
    att = store.query("SELECT model, purpose, status, prompt_tokens, cost_usd, cost_source FROM attempts "
                      "WHERE request_id = ? ORDER BY seq", [request_id])
    return req, att


def test_single_input_float_vectors_pass_through(served: tuple[Gateway, RunningServer],
                                                 mock: tuple[RunningServer, Any]) -> None:
    gw, server = served
    raw = client(server).embeddings.with_raw_response.create(model="embed", input="hello world",
                                                             encoding_format="float", user="u-42")
    resp = raw.parse()
    expected = vector(SEED, UPSTREAM, "hello world", DEFAULT_DIMENSIONS)
    assert len(resp.data) == 1 and resp.data[0].index == 0
    assert resp.data[0].embedding == pytest.approx(expected, abs=1e-12)
    assert math.isclose(sum(v * v for v in resp.data[0].embedding), 1.0, rel_tol=1e-9)
    tokens = count_text("hello world")
    assert resp.usage.prompt_tokens == tokens and resp.usage.total_tokens == tokens
    # The provider's JSON unchanged (upstream model name); the header names the catalog model.
    assert resp.model == UPSTREAM and raw.headers["x-thrifty-model"] == "embed"
    assert float(raw.headers["x-thrifty-cost-usd"]) == pytest.approx(tokens * PRICE_IN / 1e6)
    sent = last_upstream_body(mock)
    assert sent == {"model": UPSTREAM, "input": "hello world", "encoding_format": "float", "user": "u-42"}

    req, att = request_rows(gw, raw.headers["x-thrifty-request-id"])
    cost = tokens * PRICE_IN / 1e6
    assert len(req) == 1
    strategy, requested, served_model, pt, ct, cost_usd, baseline, status, error_type, n_attempts, key_id = req[0]
    assert (strategy, requested, served_model, pt, ct, status, error_type, n_attempts, key_id) == (
        "embeddings", "embed", "embed", tokens, 0, "ok", None, 1, None)
    assert cost_usd == pytest.approx(cost) and baseline == pytest.approx(cost)
    assert [(m, p, s, t, c) for m, p, s, t, _, c in att] == [("embed", "embeddings", "ok", tokens, "computed")]
    assert att[0][4] == pytest.approx(cost)


def test_batch_input_with_alias_and_dimensions(served: tuple[Gateway, RunningServer],
                                               mock: tuple[RunningServer, Any]) -> None:
    _, server = served
    texts = ["alpha", "beta gamma", "delta"]
    resp = client(server).embeddings.create(model="emb", input=texts, dimensions=8, encoding_format="float")
    assert [d.index for d in resp.data] == [0, 1, 2]
    for d, text in zip(resp.data, texts, strict=True):
        assert d.embedding == pytest.approx(vector(SEED, UPSTREAM, text, 8), abs=1e-12)
    assert len({tuple(d.embedding) for d in resp.data}) == 3
    assert resp.usage.prompt_tokens == sum(count_text(t) for t in texts)
    assert last_upstream_body(mock)["dimensions"] == 8 and last_upstream_body(mock)["model"] == UPSTREAM


def test_base64_encoding_passes_through(served: tuple[Gateway, RunningServer], mock: tuple[RunningServer, Any]) -> None:
    _, server = served
    # The SDK asks for base64 by default and decodes it itself.
    resp = client(server).embeddings.create(model="embed", input="vector me")
    assert last_upstream_body(mock)["encoding_format"] == "base64"
    assert resp.data[0].embedding == pytest.approx(vector(SEED, UPSTREAM, "vector me", DEFAULT_DIMENSIONS), abs=1e-6)
    # On the wire the vector stays the provider's base64 string (4 bytes per float32).
    r = httpx.post(server.url + "/v1/embeddings", json={"model": "embed", "input": "vector me",
                                                        "encoding_format": "base64", "dimensions": 4})
    assert r.status_code == 200
    emb = r.json()["data"][0]["embedding"]
    assert isinstance(emb, str) and len(emb) == 24  # base64 of 16 bytes


def test_token_id_inputs_and_the_path_without_v1(served: tuple[Gateway, RunningServer]) -> None:
    _, server = served
    resp = client(server, base="").embeddings.create(model="embed", input=[[1, 2, 3], [4, 5]],
                                                     encoding_format="float")
    assert len(resp.data) == 2 and resp.usage.prompt_tokens == 5
    assert resp.data[1].embedding == pytest.approx(vector(SEED, UPSTREAM, [4, 5], DEFAULT_DIMENSIONS), abs=1e-12)


def test_unknown_model_is_chats_404(served: tuple[Gateway, RunningServer]) -> None:
    gw, server = served
    with pytest.raises(openai.NotFoundError) as err:
        client(server).embeddings.create(model="nope", input="x")
    assert err.value.code == "model_not_found" and err.value.param == "model"
    assert "The model 'nope' does not exist" in err.value.message and "embed" in err.value.message
    req, att = request_rows(gw, str(err.value.request_id))
    assert [(r[0], r[7], r[8], r[5]) for r in req] == [("embeddings", "error", "NotFoundError", 0.0)] and att == []


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x"}, "model"),
    ({"model": "", "input": "x"}, "model"),
    ({"model": "embed"}, "input"),
    ({"model": "embed", "input": ""}, "input"),
    ({"model": "embed", "input": []}, "input"),
    ({"model": "embed", "input": ["ok", ""]}, "input"),
    ({"model": "embed", "input": ["a", 1]}, "input"),
    ({"model": "embed", "input": [[1, 2], []]}, "input"),
    ({"model": "embed", "input": [True, False]}, "input"),
    ({"model": "embed", "input": {"text": "x"}}, "input"),
])
def test_bad_input_is_a_400(served: tuple[Gateway, RunningServer], body: dict[str, Any], param: str) -> None:
    _, server = served
    r = httpx.post(server.url + "/v1/embeddings", json=body)
    err = r.json()["error"]
    assert r.status_code == 400 and err["type"] == "invalid_request_error" and err["param"] == param
    assert r.headers["x-request-id"].startswith("req_")


def test_upstream_500_is_a_502_with_one_error_row(served: tuple[Gateway, RunningServer],
                                                   mock: tuple[RunningServer, Any]) -> None:
    gw, server = served
    before = mock[1].faults.calls.get("broken", 0)
    with pytest.raises(openai.InternalServerError) as err:
        client(server).embeddings.create(model="broken", input="x")
    assert err.value.status_code == 502 and "HTTP 500" in err.value.message
    assert err.value.response.headers["x-should-retry"] == "false"
    assert mock[1].faults.calls["broken"] - before == 2  # the provider's max_retries: 1
    req, att = request_rows(gw, str(err.value.request_id))
    assert len(req) == 1
    assert (req[0][0], req[0][7], req[0][8], req[0][5], req[0][6], req[0][9]) == (
        "embeddings", "error", "UpstreamStatusError", 0.0, None, 2)
    assert [a[2] for a in att] == ["error", "error"]


def test_retryable_failure_is_retried(served: tuple[Gateway, RunningServer]) -> None:
    gw, server = served
    raw = client(server).embeddings.with_raw_response.create(model="flaky", input="again", encoding_format="float")
    assert len(raw.parse().data) == 1
    req, att = request_rows(gw, raw.headers["x-thrifty-request-id"])
    assert req[0][7] == "ok" and req[0][9] == 2 and [a[2] for a in att] == ["error", "ok"]


def test_missing_usage_is_counted_offline_and_marked_estimated(served: tuple[Gateway, RunningServer]) -> None:
    gw, server = served
    raw = client(server).embeddings.with_raw_response.create(model="inproc", input="count these words",
                                                             encoding_format="float")
    assert raw.parse().data[0].embedding == [1.0]
    req, att = request_rows(gw, raw.headers["x-thrifty-request-id"])
    tokens = count_text("count these words")
    assert req[0][3] == tokens and req[0][5] == pytest.approx(tokens * 1.0 / 1e6)
    assert att[0][5] == "estimated"


def test_report_claims_no_saving_for_embeddings(served: tuple[Gateway, RunningServer]) -> None:
    gw, server = served
    client(server).embeddings.create(model="embed", input="one more", encoding_format="float")
    with pytest.raises(openai.InternalServerError):  # a failed request: a loss of $0, not a saving
        client(server).embeddings.create(model="broken", input="x")
    gw.flush()
    assert gw.ledger is not None
    store = gw.ledger.store
    (row,) = [r for r in spend_report(store, by="strategy") if r.group == "embeddings"]
    spend, n, errors = store.query("SELECT SUM(cost_usd), COUNT(*), SUM(CASE WHEN status = 'ok' THEN 0 ELSE 1 END) "
                                   "FROM requests WHERE strategy = 'embeddings'")[0]
    assert row.requests == n and row.errors == errors and errors >= 1
    assert row.spend_usd == pytest.approx(spend) and row.spend_usd > 0
    assert row.saved_usd == 0.0 and row.baseline_usd == pytest.approx(row.spend_usd)
    assert row.completion_tokens == 0 and row.unpriced_requests == 0


def test_virtual_keys_apply_as_for_chat(mock: tuple[RunningServer, Any], tmp_path: Path) -> None:
    gw = Gateway.from_config(gateway_config(mock[0].url, tmp_path, auth=True))
    assert gw.ops.keys is not None
    limited, secret = gw.ops.keys.create("rag-app", routes=["embed"])
    with run_in_thread(gw.app()) as server:
        raw = client(server, key=secret).embeddings.with_raw_response.create(model="embed", input="allowed")
        assert len(raw.parse().data) == 1
        with pytest.raises(openai.PermissionDeniedError) as denied:
            client(server, key=secret).embeddings.create(model="other", input="refused")
        with pytest.raises(openai.AuthenticationError):
            client(server, key="thr-not-a-real-key-0000").embeddings.create(model="embed", input="x")
    assert denied.value.code == "model_not_allowed" and "'other'" in denied.value.message
    req, _ = request_rows(gw, raw.headers["x-thrifty-request-id"])
    assert req[0][10] == limited.key_id and req[0][7] == "ok"
    gw.flush()
    store = open_store(str(tmp_path / "ledger.db"))
    # Refused requests never reach the pipeline, as for chat: only the allowed one is recorded.
    assert store.query("SELECT COUNT(*) FROM requests")[0][0] == 1
    gw.close()
