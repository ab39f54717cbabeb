"""The cost of ``background: true`` Responses API requests, reconciled: created queued (no usage,
so the ledger starts from an offline estimate), the first retrieve that relays the finished
response writes its real tokens and cost over the estimate, once, from any gateway sharing the
ledger database (SQLite file or PostgreSQL). Real gateways on 127.0.0.1 in front of the mock
upstream, driven by the official openai SDK."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from thrifty.gateway import Gateway
from thrifty.ledger.migrations import MIGRATIONS
from thrifty.ledger.store import SQLiteStore, SQLStore
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.server.stored_responses import FAILED_TYPE

UPSTREAM_KEY = "sk-upstream-background-0000"
ADMIN = "admin-background-0000"
# USD per million tokens; the mock model reports cached prompt prefixes and reasoning tokens.
IN, CACHED, OUT = 2.0, 0.5, 8.0
# Over 1,024 tokens: the mock's prompt cache reports the prefix as cached when it is sent again.
PREFIX = " ".join(f"Rule {i}: answer in plain words." for i in range(220))


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    behaviour = {"reasoning_tokens": [24, 24], "prompt_cache": True}
    app = create_mock(MockConfig.from_dict({"seed": 5, "api_key": UPSTREAM_KEY, "models": {"gpt-up": behaviour}}))
    with run_in_thread(app) as server:
        yield server


def config(mock_url: str, ledger: dict[str, Any]) -> dict[str, Any]:
    return {
        "providers": {"a": {"base_url": mock_url + "/v1", "api_key": UPSTREAM_KEY, "max_retries": 0}},
        "models": {"gpt": {"provider": "a", "upstream_model": "gpt-up",
                           "price": {"input": IN, "cached_input": CACHED, "output": OUT}}},
        "default_model": "gpt",
        "ledger": ledger,
        "auth": {"enabled": True, "admin_key": ADMIN},
    }


@pytest.fixture(params=["sqlite", "postgres"])
def gateways(request: pytest.FixtureRequest, mock: RunningServer, tmp_path: Any
             ) -> Iterator[tuple[Gateway, Gateway, RunningServer, RunningServer, dict[str, str]]]:
    """Two gateway instances sharing one ledger database (keys, stored ids, ledger rows)."""
    if request.param == "postgres":
        ledger: dict[str, Any] = {"dsn": request.getfixturevalue("pg_dsn")}
    else:
        ledger = {"path": str(tmp_path / "ledger.db")}
    gw1 = Gateway.from_config(config(mock.url, ledger))
    gw2 = Gateway.from_config(config(mock.url, ledger))
    assert gw1.ops.keys is not None
    keys = {"a": gw1.ops.keys.create("tenant-a")[1], "b": gw1.ops.keys.create("tenant-b")[1]}
    with run_in_thread(gw1.app()) as s1, run_in_thread(gw2.app()) as s2:
        yield gw1, gw2, s1, s2, keys
    gw1.close()
    gw2.close()


def client(server: RunningServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=30)


def store(gw: Gateway) -> SQLStore:
    assert gw.ledger is not None
    return gw.ledger.store


def rows(gw: Gateway, request_id: str) -> dict[str, tuple[Any, ...]]:
    """The request's row and its (single) attempt row: tokens, cost and baseline / cost source."""
    cols = "prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, cost_usd"
    req = store(gw).query(f"SELECT {cols}, baseline_cost_usd FROM requests WHERE request_id = ?", (request_id,))
    att = store(gw).query(f"SELECT {cols}, cost_source FROM attempts WHERE request_id = ?", (request_id,))
    assert len(req) == 1 and len(att) == 1
    return {"request": req[0], "attempt": att[0]}


def pending(gw: Gateway, response_id: str) -> int:
    return int(store(gw).query("SELECT pending FROM stored_responses WHERE response_id = ?", (response_id,))[0][0])


def expected(usage: Any) -> tuple[tuple[int, int, int, int], float]:
    """The usage's tokens as the ledger keeps them, and its price computed here from the config."""
    cached = usage.input_tokens_details.cached_tokens
    reasoning = usage.output_tokens_details.reasoning_tokens
    usd = ((usage.input_tokens - cached) * IN + cached * CACHED + usage.output_tokens * OUT) / 1e6
    return (usage.input_tokens, cached, usage.output_tokens, reasoning), usd


def test_a_finished_background_response_replaces_the_estimate_once(
        gateways: tuple[Gateway, Gateway, RunningServer, RunningServer, dict[str, str]]) -> None:
    gw1, gw2, s1, s2, keys = gateways
    c1, c2 = client(s1, keys["a"]), client(s2, keys["a"])
    c1.responses.create(model="gpt", input=PREFIX + " First question?")  # primes the prompt cache
    assert gw1.ledger is not None
    gw1.flush()
    gw1.ledger.flush_interval_s = 5.0  # the next create's rows stay in gw1's writer buffer for a while

    created = c1.responses.create(model="gpt", input=PREFIX + " Second question?", background=True)
    assert created.status == "queued" and created.usage is None
    # Another instance sees it finished while gw1 still holds the row: nothing to amend yet, and
    # the claim is rolled back, not lost.
    first = c2.responses.retrieve(created.id)
    assert first.status == "completed" and first.usage is not None
    assert pending(gw2, created.id) == 1
    gw1.flush()
    estimate = rows(gw1, created._request_id or "")
    assert estimate["attempt"][2] == 0 and estimate["attempt"][5] == "estimated"  # prompt only, counted offline

    # The owner's retrieve: the estimate is replaced by the priced usage.
    gw1.ledger.flush_interval_s = 0.05
    again = c1.responses.retrieve(created.id)
    assert again.usage == first.usage
    tokens, usd = expected(first.usage)
    assert tokens[1] > 0 and tokens[3] == 24  # cached input and reasoning tokens were reported
    got = rows(gw1, created._request_id or "")
    assert got["attempt"][:4] == tokens and got["attempt"][4] == pytest.approx(usd, rel=1e-9)
    assert got["attempt"][5] == "computed"
    assert got["request"][:4] == tokens and got["request"][4] == pytest.approx(usd, rel=1e-9)
    assert got["request"][5] == pytest.approx(usd, rel=1e-9)  # passthrough: baseline = cost, no saving
    assert pending(gw1, created.id) == 0

    # Exactly once: a later retrieve on either instance (gw2 still remembers it as pending) must
    # not write again; a marker in the row shows whether anything did.
    store(gw1).execute("UPDATE requests SET cost_usd = 123.0 WHERE request_id = ?", (created._request_id,))
    c2.responses.retrieve(created.id)
    c1.responses.retrieve(created.id)
    assert rows(gw1, created._request_id or "")["request"][4] == 123.0


def test_the_row_still_in_the_writer_buffer_is_amended_not_overwritten(
        gateways: tuple[Gateway, Gateway, RunningServer, RunningServer, dict[str, str]]) -> None:
    gw1, _, s1, _, keys = gateways
    c = client(s1, keys["a"])
    assert gw1.ledger is not None
    gw1.ledger.flush_interval_s = 5.0  # without the amendment's flush, the row would not be there yet
    created = c.responses.create(model="gpt", input="Name a river.", background=True)
    done = c.responses.retrieve(created.id)
    assert done.status == "completed" and done.usage is not None
    gw1.ledger.flush_interval_s = 0.05
    gw1.flush()
    tokens, usd = expected(done.usage)
    got = rows(gw1, created._request_id or "")
    assert got["request"][:4] == tokens and got["request"][4] == pytest.approx(usd, rel=1e-9)
    assert got["attempt"][:4] == tokens and got["attempt"][4] == pytest.approx(usd, rel=1e-9)


def test_a_streamed_replay_amends_from_its_last_event(
        gateways: tuple[Gateway, Gateway, RunningServer, RunningServer, dict[str, str]]) -> None:
    gw1, _, s1, _, keys = gateways
    c = client(s1, keys["a"])
    created = c.responses.create(model="gpt", input="Describe a lake in detail.", background=True)
    final = None
    for event in c.responses.retrieve(created.id, stream=True):
        if event.type == "response.completed":
            final = event.response
    assert final is not None and final.usage is not None
    gw1.flush()
    tokens, usd = expected(final.usage)
    got = rows(gw1, created._request_id or "")
    assert got["request"][:4] == tokens and got["request"][4] == pytest.approx(usd, rel=1e-9)
    assert pending(gw1, created.id) == 0


def test_other_requests_and_other_tenants_change_nothing(
        gateways: tuple[Gateway, Gateway, RunningServer, RunningServer, dict[str, str]]) -> None:
    gw1, _, s1, _, keys = gateways
    mine, theirs = client(s1, keys["a"]), client(s1, keys["b"])
    plain = mine.responses.create(model="gpt", input="A plain question.")
    background = mine.responses.create(model="gpt", input="A background question.", background=True)
    gw1.flush()
    before = {r._request_id: rows(gw1, r._request_id or "") for r in (plain, background)}
    assert pending(gw1, plain.id) == 0 and pending(gw1, background.id) == 1

    mine.responses.retrieve(plain.id)  # not a background response: its row was right from the start
    with pytest.raises(openai.NotFoundError):
        theirs.responses.retrieve(background.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.cancel(background.id)
    gw1.flush()
    assert {r._request_id: rows(gw1, r._request_id or "") for r in (plain, background)} == before
    assert pending(gw1, background.id) == 1

    # Its owner's retrieve still amends it.
    done = mine.responses.retrieve(background.id)
    assert done.usage is not None
    assert rows(gw1, background._request_id or "")["request"][2] == done.usage.output_tokens > 0


def status(gw: Gateway, request_id: str) -> tuple[Any, ...]:
    return store(gw).query("SELECT status, error_type, error FROM requests WHERE request_id = ?", (request_id,))[0]


def test_a_response_cancelled_while_queued_never_ran_and_costs_nothing(
        gateways: tuple[Gateway, Gateway, RunningServer, RunningServer, dict[str, str]]) -> None:
    gw1, _, s1, s2, keys = gateways
    cancelled = client(s1, keys["a"]).responses.create(model="gpt", input="Never mind.", background=True)
    gw1.flush()
    estimate = rows(gw1, cancelled._request_id or "")
    assert estimate["request"][0] > 0 and estimate["request"][4] > 0  # the prompt, counted offline

    # Cancelled through the other instance: the provider's answer has no usage, it never ran.
    answer = client(s2, keys["a"]).responses.cancel(cancelled.id)
    assert answer.status == "cancelled" and answer.usage is None
    got = rows(gw1, cancelled._request_id or "")
    assert got["request"][:5] == (0, 0, 0, 0, 0.0) and got["request"][5] == 0.0
    assert got["attempt"][:5] == (0, 0, 0, 0, 0.0) and got["attempt"][5] == "computed"
    assert status(gw1, cancelled._request_id or "") == ("ok", None, None)  # cancelling is not a failure
    assert pending(gw1, cancelled.id) == 0


@pytest.fixture(scope="module")
def failing_mock() -> Iterator[RunningServer]:
    behaviour = {"faults": {"background_fail": True}}
    app = create_mock(MockConfig.from_dict({"seed": 5, "api_key": UPSTREAM_KEY, "models": {"gpt-up": behaviour}}))
    with run_in_thread(app) as server:
        yield server


def test_a_failed_background_run_is_a_failed_request_at_no_cost(
        failing_mock: RunningServer, tmp_path: Any) -> None:
    gw = Gateway.from_config(config(failing_mock.url, {"path": str(tmp_path / "ledger.db")}))
    try:
        assert gw.ops.keys is not None
        key = gw.ops.keys.create("tenant-a")[1]
        with run_in_thread(gw.app()) as server:
            c = client(server, key)
            created = c.responses.create(model="gpt", input="Write a long report.", background=True)
            gw.flush()
            assert status(gw, created._request_id or "") == ("ok", None, None)
            done = c.responses.retrieve(created.id)
        assert done.status == "failed" and done.usage is None and done.error is not None
        got = rows(gw, created._request_id or "")
        assert got["request"][:5] == (0, 0, 0, 0, 0.0)
        state, kind, text = status(gw, created._request_id or "")
        assert (state, kind) == ("error", FAILED_TYPE)
        assert text == f"server_error: {done.error.message}"
        assert UPSTREAM_KEY not in text
    finally:
        gw.close()


def test_the_migration_adds_pending_to_an_existing_ledger(tmp_path: Any) -> None:
    path = str(tmp_path / "old.db")
    old = SQLiteStore(path)
    old._conn = old._connect()
    old.conn.execute("CREATE TABLE _thrifty_migrations (name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION)")
    for name, statements in MIGRATIONS[:4]:  # a ledger from before 005_background_usage
        for sql in statements:
            old.conn.execute(sql)
        old.conn.execute("INSERT INTO _thrifty_migrations VALUES (?, 0)", (name,))
    old.conn.execute("INSERT INTO stored_responses VALUES ('resp_old', 'req_old', 1.0, 'gpt', 'a', NULL, 't')")
    old.conn.commit()
    old.close()
    assert SQLiteStore(path).query("SELECT response_id, pending FROM stored_responses") == [("resp_old", 0)]


@pytest.mark.parametrize("limiter", ["memory", "redis"])
def test_the_key_budget_gets_the_real_cost_not_the_estimate(
        limiter: str, mock: RunningServer, tmp_path: Any, request: pytest.FixtureRequest) -> None:
    import secrets

    import httpx

    cfg = config(mock.url, {"path": str(tmp_path / "ledger.db")})
    if limiter == "redis":
        cfg["redis_url"] = request.getfixturevalue("redis_url")
        cfg["auth"]["redis_prefix"] = "bg" + secrets.token_hex(4)
    gw = Gateway.from_config(cfg)
    try:
        assert gw.ops.keys is not None
        key, secret = gw.ops.keys.create("tenant-a", budget_usd=5.0)
        with run_in_thread(gw.app()) as server:
            def spent() -> float:
                shown = httpx.get(f"{server.url}/admin/keys/{key.key_id}", headers={"authorization": f"Bearer {ADMIN}"})
                assert shown.status_code == 200, shown.text
                usage = shown.json()["usage"]
                assert usage["reserved_usd"] == pytest.approx(0.0, abs=1e-12)
                return float(usage["spent_usd"])

            c = client(server, secret)
            created = c.responses.create(model="gpt", input="Describe a mountain in detail.", background=True)
            gw.flush()
            estimate = rows(gw, created._request_id or "")["request"][4]
            assert spent() == pytest.approx(estimate, rel=1e-9)
            done = c.responses.retrieve(created.id)
            assert done.usage is not None and done.usage.output_tokens > 0
            _, usd = expected(done.usage)
            assert usd > estimate * 2  # the estimate had no output
            assert spent() == pytest.approx(usd, rel=1e-9)
            c.responses.retrieve(created.id)  # once: a second retrieve changes nothing
            assert spent() == pytest.approx(usd, rel=1e-9)

            cancelled = c.responses.create(model="gpt", input="Never mind this one.", background=True)
            c.responses.cancel(cancelled.id)
            assert spent() == pytest.approx(usd, rel=1e-9)  # it never ran: its estimate is taken back
    finally:
        gw.close()
