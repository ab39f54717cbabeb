"""Property-based fuzzing of the gateway's OpenAI endpoints over real HTTP (uvicorn on loopback,
mock upstream): whatever body a client sends, the answer is a well-formed OpenAI answer or an
OpenAI error, never a 500, a traceback, a hang, or a ledger row left half-written.

Bodies are drawn by hypothesis from near-valid shapes (the fields OpenAI defines, with values of
every JSON type, out-of-range numbers, junk content parts and roles) and from raw junk (non-JSON
bytes, JSON that is not an object). The gateway has every stage on: routing with a cascade, the
exact and semantic cache, history trimming and compaction, the ledger. Hypothesis's database is
off so a run is the same on a fresh checkout (a fixed seed per test via ``derandomize``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

FUZZ = settings(max_examples=int(os.environ.get("THRIFTY_FUZZ_EXAMPLES", "200")), deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# What a well-behaved gateway may answer to a body it was sent. 5xx would be a gateway fault
# here: the mock upstream is healthy, so nothing upstream can justify one.
CLIENT_ERRORS = {400, 401, 403, 404, 405, 409, 413, 415, 422, 429}

json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                        st.floats(allow_nan=False, allow_infinity=False, width=32), st.text(max_size=12))
json_value = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                               st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                          max_leaves=6)


def body_of(valid: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]],
            junk_fields: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies that are mostly valid (so they reach the deep stages: routing, cache, compression,
    the upstream call, the ledger), with zero or one field replaced by a value of any JSON type
    or dropped, and with any subset of the optional fields (valid or junk)."""
    base = st.fixed_dictionaries(valid, optional=optional)

    def mutate(body: dict[str, Any], field: str | None, value: Any, drop: bool) -> dict[str, Any]:
        if field is None:
            return body
        out = dict(body)
        if drop:
            out.pop(field, None)
        else:
            out[field] = value
        return out

    return st.builds(mutate, base, st.one_of(st.none(), st.none(), st.sampled_from(junk_fields)), json_value,
                     st.booleans())


text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=80)
text_part = st.fixed_dictionaries({"type": st.just("text"), "text": text})
image_part = st.fixed_dictionaries({"type": st.just("image_url"),
                                    "image_url": st.fixed_dictionaries({"url": st.sampled_from(
                                        ["https://example.com/a.png", "data:image/png;base64,iVBORw0KGgo=", "x"])})})
content = st.one_of(text, st.lists(st.one_of(text_part, image_part), min_size=1, max_size=3))
good_message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user", "assistant"]), "content": content}),
    st.fixed_dictionaries({"role": st.just("user"), "content": content}, optional={"name": st.text(max_size=8)}))
message = st.one_of(
    good_message,
    st.fixed_dictionaries({"role": st.sampled_from(["tool", "function", "nobody"]), "content": content},
                          optional={"tool_call_id": json_scalar, "name": json_scalar}),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": st.none(),
                           "tool_calls": st.lists(json_value, max_size=2)}),
    json_value,
)
good_model = st.sampled_from(["auto", "cheap", "big", "route:careful"])
model = st.one_of(good_model, good_model, good_model, st.sampled_from(["route:nope", "nope", "embed"]))
# The passthrough endpoints take a catalog model ('auto' and routes choose chat models only).
catalog_model = st.one_of(st.sampled_from(["cheap", "big"]), st.sampled_from(["cheap", "big"]),
                          st.sampled_from(["auto", "route:careful", "nope", "embed"]))
number = st.one_of(st.integers(0, 2), st.floats(0, 1, allow_nan=False))  # valid for the sampling fields below
tokens = st.integers(1, 300)
chat_body = body_of(
    {"model": model, "messages": st.one_of(st.lists(good_message, min_size=1, max_size=4),
                                           st.lists(good_message, min_size=1, max_size=4),
                                           st.lists(message, min_size=1, max_size=3))},
    {"temperature": number, "top_p": number, "max_tokens": tokens, "max_completion_tokens": tokens,
     "n": st.integers(1, 3), "stream": st.booleans(),
     "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
     "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=3), max_size=5)),
     "logprobs": st.booleans(), "top_logprobs": st.integers(0, 20), "seed": tokens, "user": st.text(max_size=8),
     "metadata": st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3),
     "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])}),
     "cache": st.booleans(), "frequency_penalty": number},
    ("model", "messages", "temperature", "max_tokens", "max_completion_tokens", "n", "stream", "stream_options",
     "stop", "tools", "tool_choice", "response_format", "logprobs", "top_logprobs", "seed", "user", "metadata",
     "cache", "logit_bias", "top_p"))
completions_body = body_of(
    {"model": catalog_model, "prompt": st.one_of(text, st.lists(text, min_size=1, max_size=3))},
    {"max_tokens": tokens, "stream": st.booleans(), "n": st.integers(1, 3), "echo": st.booleans(), "suffix": text},
    ("model", "prompt", "max_tokens", "stream", "n", "echo"))
responses_body = body_of(
    {"model": catalog_model, "input": st.one_of(text, st.lists(good_message, min_size=1, max_size=3),
                                        st.lists(message, min_size=1, max_size=3))},
    {"instructions": text, "max_output_tokens": tokens, "stream": st.booleans(),
     "store": st.booleans(), "background": st.booleans()},
    ("model", "input", "instructions", "max_output_tokens", "stream", "background", "store", "tools",
     "previous_response_id"))
embeddings_body = body_of(
    {"model": st.sampled_from(["embed", "embed", "cheap", "nope"]),
     "input": st.one_of(text, st.lists(text, min_size=1, max_size=3),
                        st.lists(st.integers(0, 99), min_size=1, max_size=5))},
    {"encoding_format": st.sampled_from(["float", "base64"]), "dimensions": st.integers(1, 1536)},
    ("model", "input", "encoding_format", "dimensions"))
junk = st.one_of(st.binary(max_size=60), st.builds(lambda v: json.dumps(v).encode(), json_value))

MC = "Which one is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, RunningServer]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    mock = {"models": {"cheap": {"answer": "B"}, "big": {"answer": "B"}}}
    with run_in_thread(create_mock(MockConfig.from_dict(mock))) as upstream:
        price = {"input": 1, "output": 2}
        gw = Gateway.from_config({
            "providers": {"mock": {"base_url": upstream.url + "/v1", "max_retries": 0}},
            "models": {"cheap": {"provider": "mock", "price": price},
                       "big": {"provider": "mock", "price": {"input": 10, "output": 20}},
                       "embed": {"provider": "mock", "price": {"input": 0.02, "output": 0}}},
            "baseline": "big",
            "ledger": {"path": str(tmp / "ledger.db")},
            "cache": {"path": str(tmp / "cache.db"), "semantic": {"enabled": True},
                      "routes": {"auto": {"semantic": True}}},
            "compression": {"model": "cheap", "store": {"path": str(tmp / "compress.db")},
                            "routes": {"*": {"compaction": True, "history_max_tokens": 200}}},
            "routing": {"default_route": "careful", "routes": {
                "careful": {"tiers": [{"model": "cheap", "threshold": 0.5}, {"model": "big"}]}}},
        })
        with run_in_thread(gw.app()) as server:
            yield gw, server
        gw.close()


@pytest.fixture(scope="module")
def http(served: tuple[Gateway, RunningServer]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[1].url, timeout=30) as client:
        yield client


STATUSES: dict[str, dict[int, int]] = {}


def _check(resp: httpx.Response, sent: Any) -> None:
    """The promise every answer keeps, whatever was sent."""
    note = f"sent {sent!r}: {resp.status_code} {resp.text[:300]}"
    assert resp.status_code in (200, 201) or resp.status_code in CLIENT_ERRORS, note
    assert "Traceback" not in resp.text, note
    if resp.status_code >= 400:
        err = resp.json()["error"]
        assert isinstance(err["message"], str) and err["message"], note
        assert isinstance(err["type"], str), note
        return
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        # SSE lines end at \n (or \r): not at the other breaks str.splitlines knows (\x85, \u2028...),
        # which JSON strings may hold raw.
        events = [line[6:].rstrip("\r") for line in resp.text.split("\n") if line.startswith("data: ")]
        assert events, note
        for data in events:
            if data != "[DONE]":
                assert isinstance(json.loads(data), dict), note
        return
    assert isinstance(resp.json(), dict), note


def _post(http: httpx.Client, path: str, body: Any) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = http.post(path, content=raw, headers={"content-type": "application/json"})
    counts = STATUSES.setdefault(path, {})
    counts[resp.status_code] = counts.get(resp.status_code, 0) + 1
    _check(resp, body)


BODIES = {"/v1/chat/completions": chat_body, "/v1/completions": completions_body, "/v1/responses": responses_body,
          "/v1/embeddings": embeddings_body}


@pytest.mark.parametrize("path", list(BODIES))
@FUZZ
@given(data=st.data())
def test_every_endpoint_answers_any_body_in_the_openai_format(http: httpx.Client, path: str,
                                                              data: st.DataObject) -> None:
    _post(http, path, data.draw(BODIES[path], label="body"))


@FUZZ
@given(raw=junk, path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/responses",
                                       "/v1/embeddings"]))
def test_junk_bodies_get_a_400_in_the_openai_format(http: httpx.Client, raw: bytes, path: str) -> None:
    resp = http.post(path, content=raw, headers={"content-type": "application/json"})
    _check(resp, raw)
    try:
        is_object = isinstance(json.loads(raw), dict)
    except ValueError:
        is_object = False
    if not is_object:
        assert resp.status_code == 400, resp.text


def test_the_fuzzed_gateway_still_serves_and_its_ledger_is_whole(served: tuple[Gateway, RunningServer],
                                                                 http: httpx.Client, tmp_path: Path) -> None:
    """After the fuzzing (module order: this runs last), a plain request works and every ledger
    row is complete: a status, a cost that is a number, and its attempts' request ids exist."""
    resp = http.post("/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": MC}]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "B"
    gw = served[0]
    gw.flush()
    store = gw.ledger.store  # type: ignore[union-attr]
    rows = store.query("SELECT request_id, status, cost_usd FROM requests")
    # The bodies were mostly valid: most were served (or refused by a stage that records them).
    for path, counts in STATUSES.items():
        assert counts.get(200, 0) >= sum(counts.values()) // 3, (path, counts)
    assert len(rows) > 150
    assert all(status in ("ok", "error", "cached") and isinstance(cost, (int, float)) for _, status, cost in rows), \
        [r for r in rows if r[1] not in ("ok", "error", "cached") or not isinstance(r[2], (int, float))][:5]
    orphans = store.query("SELECT COUNT(*) FROM attempts WHERE request_id NOT IN (SELECT request_id FROM requests)")
    assert orphans[0][0] == 0


ADMIN = "sk-admin-fuzz-5d1e0c7a"

key_body = body_of(
    {"name": st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=12)},
    {"budget_usd": st.one_of(st.floats(0, 100, allow_nan=False), st.integers(0, 100)),
     "period": st.sampled_from(["day", "week", "month", "total", "hour"]),
     "rpm": st.integers(1, 1000), "tpm": st.integers(1, 10**6),
     "routes": st.lists(st.sampled_from(["careful", "cheap", "big", "auto", "*", "route:*", "nope"]), max_size=3)},
    ("name", "budget_usd", "period", "rpm", "tpm", "routes"))


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A gateway with virtual keys on and the admin API, in front of the mock upstream."""
    tmp = tmp_path_factory.mktemp("fuzz-auth")
    with run_in_thread(create_mock(MockConfig.from_dict({"models": {"cheap": {"answer": "B"}}}))) as upstream:
        gw = Gateway.from_config({
            "providers": {"mock": {"base_url": upstream.url + "/v1", "max_retries": 0}},
            "models": {"cheap": {"provider": "mock", "price": {"input": 1, "output": 2}},
                       "big": {"provider": "mock", "price": {"input": 10, "output": 20}}},
            "ledger": {"path": str(tmp / "ledger.db")},
            "auth": {"enabled": True, "admin_key": ADMIN},
            "routing": {"default_route": "careful", "routes": {
                "careful": {"tiers": [{"model": "cheap", "threshold": 0.5}, {"model": "big"}]}}},
        })
        with run_in_thread(gw.app()) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            yield client
        gw.close()


@FUZZ
@given(body=key_body, model_name=good_model, chat=st.booleans())
def test_admin_key_creation_and_the_created_keys_answer_in_the_openai_format(
        guarded: httpx.Client, body: dict[str, Any], model_name: str, chat: bool) -> None:
    """Any key-creation body gets a key or an OpenAI error; a created key either serves a chat
    request or refuses it with a 4xx (its routes, its budget), never a 500."""
    resp = guarded.post("/admin/keys", content=json.dumps(body).encode(),
                        headers={"authorization": f"Bearer {ADMIN}", "content-type": "application/json"})
    _check(resp, body)
    counts = STATUSES.setdefault("/admin/keys", {})
    counts[resp.status_code] = counts.get(resp.status_code, 0) + 1
    if resp.status_code != 201 or not chat:
        return
    key = resp.json()["key"]
    assert isinstance(key, str) and key
    answer = guarded.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                          json={"model": model_name, "messages": [{"role": "user", "content": MC}]})
    _check(answer, (body, model_name))
    counts = STATUSES.setdefault("chat with a created key", {})
    counts[answer.status_code] = counts.get(answer.status_code, 0) + 1
    listed = guarded.get("/admin/keys", headers={"authorization": f"Bearer {ADMIN}"})
    assert listed.status_code == 200 and key not in listed.text  # the key itself is shown once only


def test_the_key_fuzzing_created_keys_and_served_with_them(guarded: httpx.Client) -> None:
    """Runs after the key fuzzing (module order): it reached the deep paths, not only refusals."""
    created, chats = STATUSES.get("/admin/keys", {}), STATUSES.get("chat with a created key", {})
    assert created.get(201, 0) >= sum(created.values()) // 3, created
    assert chats.get(200, 0) >= 10 and any(code >= 400 for code in chats), chats
