"""OpenAI's ``service_tier`` priced as billed: a call served at "flex" pays the batch price (or the
model's configured flex price), one served at "priority" its priority price (configured, or
genai-prices'), and the tier the response reports wins over the one asked for. The ledger keeps
the tier served (a ``service_tier`` column on requests and attempts, migration 009, SQLite and
PostgreSQL) and ``thrifty report --by service_tier`` groups by it. The baseline stays standard.

Real gateway, real ``openai`` client, and the mock upstream echoing ``service_tier`` as OpenAI
does (flex and priority honoured, "auto" served at "default"; per model configurable)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from fixtures.cli_run import run_main
from fixtures.rows import old_ledger
from thrifty.gateway import Gateway
from thrifty.ledger.store import SQLStore, open_store
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

M = 1e6
STANDARD = {"input": 2.0, "output": 8.0}
TIERED = {**STANDARD, "flex_input": 0.5, "flex_output": 3.0, "priority_input": 5.0, "priority_output": 20.0}
SILENT = {"auto": None, "default": None, "flex": None, "priority": None}
MOCK = {"models": {"g-downgrade": {"service_tiers": {"flex": "default", "auto": "priority"}},
                   "g-silent": {"service_tiers": SILENT}}}
HI = [{"role": "user", "content": "Say hello to the accounting team."}]


@pytest.fixture
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def dsn(request: pytest.FixtureRequest) -> str | None:
    """None for the SQLite file in tmp_path, else a fresh PostgreSQL database's DSN."""
    return request.getfixturevalue("pg_dsn") if request.param == "postgres" else None


def _config(mock: RunningServer, tmp: Path, dsn: str | None) -> dict[str, Any]:
    upstream = {"base_url": mock.url + "/v1", "api_key": "sk-test-upstream-1234", "max_retries": 0}
    ledger: dict[str, Any] = {"dsn": dsn} if dsn else {"path": str(tmp / "ledger.db")}
    return {
        # "o" is priced (and billed) as OpenAI: it honours the tier asked for when its answer is silent.
        "providers": {"m": upstream, "o": {**upstream, "price_provider": "openai"}},
        "models": {
            "plain": {"provider": "m", "upstream_model": "g", "price": STANDARD},
            "tiered": {"provider": "m", "upstream_model": "g", "price": TIERED},
            "downgrade": {"provider": "m", "upstream_model": "g-downgrade", "price": TIERED},
            "silent-openai": {"provider": "o", "upstream_model": "g-silent", "price": STANDARD},
            "silent-other": {"provider": "m", "upstream_model": "g-silent", "price": STANDARD},
            "gpt-4o": {"provider": "o"},  # genai-prices' OpenAI price, priority variant included
            "big": {"provider": "m", "upstream_model": "g", "price": {"input": 10.0, "output": 40.0}},
        },
        "baseline": "big",
        "cache": {"enabled": False},
        "ledger": ledger,
    }


def _calls(client: openai.OpenAI) -> list[tuple[str, str | None, str | None]]:
    """(model, tier asked, tier the client saw) for each call made, in order."""
    plan: list[tuple[str, str | None, bool]] = [
        ("plain", "flex", False), ("plain", "flex", True), ("plain", "priority", False), ("plain", None, False),
        ("tiered", "flex", False), ("tiered", "priority", True),
        ("downgrade", "flex", False), ("downgrade", "auto", False),
        ("silent-openai", "flex", False), ("silent-openai", "auto", False), ("silent-other", "flex", True),
        ("gpt-4o", "priority", False),
    ]
    seen: list[tuple[str, str | None, str | None]] = []
    for model, tier, stream in plan:
        extra: dict[str, Any] = {"service_tier": tier} if tier else {}
        if stream:
            tiers = {c.service_tier for c in client.chat.completions.create(
                model=model, messages=HI, stream=True, stream_options={"include_usage": True}, **extra)}
            seen.append((model, tier, next(iter(tiers - {None}), None)))
        else:
            seen.append((model, tier, client.chat.completions.create(model=model, messages=HI, **extra).service_tier))
    return seen


def _store(tmp_path: Path, dsn: str | None) -> SQLStore:
    return open_store(None if dsn else str(tmp_path / "ledger.db"), dsn, check=dsn is None)


def test_each_call_is_priced_at_the_tier_that_served_it(
        mock: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], dsn: str | None) -> None:
    cfg = _config(mock, tmp_path, dsn)
    gw = Gateway.from_config(cfg)
    with run_in_thread(gw.app()) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-0000", max_retries=0)
        seen = _calls(client)
    gw.flush()
    gw.close()
    # The mock answers as OpenAI: what was asked, "auto" as default; its configured exceptions.
    assert [s[2] for s in seen] == ["flex", "flex", "priority", "default", "flex", "priority",
                                    "default", "priority", None, None, None, "priority"]
    store = _store(tmp_path, dsn)
    try:
        rows = store.query("SELECT a.model, a.prompt_tokens, a.completion_tokens, a.cost_usd, a.cost_source,"
                           " a.service_tier, r.service_tier, r.baseline_cost_usd FROM attempts a"
                           " JOIN requests r ON a.request_id = r.request_id ORDER BY r.ts, a.seq")
        assert len(rows) == len(seen)
        # Per call: the (input, output) rates it was billed at, its cost source and the tier recorded.
        expected = [
            ((1.0, 4.0), "computed", "flex"),  # no flex price: the batch price (half)
            ((1.0, 4.0), "computed", "flex"),  # the same, streamed: the tier came in the chunks
            ((2.0, 8.0), "estimated", "priority"),  # no priority price known: standard, a floor
            ((2.0, 8.0), "computed", "default"),
            ((0.5, 3.0), "computed", "flex"),  # the configured flex price
            ((5.0, 20.0), "computed", "priority"),  # the configured priority price, streamed
            ((2.0, 8.0), "computed", "default"),  # asked flex, served default: billed standard
            ((5.0, 20.0), "computed", "priority"),  # asked auto, served priority
            ((1.0, 4.0), "computed", "flex"),  # silent answer, OpenAI: billed the tier asked
            ((2.0, 8.0), "computed", None),  # silent, "auto": no tier named, standard
            ((2.0, 8.0), "computed", None),  # silent, a provider that ignores the field: standard
            ((4.25, 17.0), "computed", "priority"),  # genai-prices' gpt-4o priority rates
        ]
        for row, (rates, source, tier) in zip(rows, expected, strict=True):
            _, p, c, cost, src, a_tier, r_tier, baseline = row
            assert cost == pytest.approx((p * rates[0] + c * rates[1]) / M), row
            assert (src, a_tier, r_tier) == (source, tier, tier), row
            # The baseline is the premium model at its standard price, whatever tier served.
            assert baseline == pytest.approx((p * 10.0 + c * 40.0) / M), row
        cfg_path = tmp_path / "thrifty.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        code, out, err = run_main(capsys, "report", "-c", str(cfg_path), "--by", "service_tier", "-f", "json")
        assert code == 0, err
        groups = {g["group"]: g["requests"] for g in json.loads(out)}
        assert groups == {"flex": 4, "priority": 4, "default": 2, "(none)": 2}
    finally:
        store.close()


def test_an_old_ledger_gains_the_column_and_keeps_its_rows(tmp_path: Path, dsn: str | None) -> None:
    """A ledger migrated up to 008 (the previous version) gets ``service_tier`` in place; its rows
    read NULL (standard, as they were priced)."""
    insert = ("INSERT INTO requests (request_id, ts, tenant, requested_model, strategy, prompt_tokens,"
              " cached_tokens, completion_tokens, reasoning_tokens, cost_usd, cache_saved_usd,"
              " compression_saved_tokens, compression_saved_usd, n_attempts, escalations, latency_ms, status,"
              " stream, batch) VALUES ('old-1', 1000.0, 'default', 'plain', 'routing', 10, 0, 5, 0, 0.1, 0, 0, 0,"
              " 1, 0, 5.0, 'ok', FALSE, FALSE)")
    old_ledger(tmp_path / "ledger.db", dsn, "009", insert)
    store = _store(tmp_path, dsn)
    try:
        assert store.query("SELECT request_id, service_tier FROM requests") == [("old-1", None)]
        assert store.query("SELECT count(*) FROM attempts WHERE service_tier IS NULL") == [(0,)]
        assert store.query("SELECT name FROM _thrifty_migrations WHERE name = '009_service_tier'")
    finally:
        store.close()


def test_a_bad_tier_price_is_a_one_line_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = {"providers": {"m": {"base_url": "http://127.0.0.1:9/v1"}},
           "models": {"plain": {"provider": "m", "price": {**STANDARD, "flex_input": -1}}}}
    path = tmp_path / "thrifty.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, _, err = run_main(capsys, "report", "-c", str(path))
    assert code != 0 and "flex_input" in err and "Traceback" not in err


def test_a_responses_api_call_is_priced_at_the_tier_its_response_names(mock: RunningServer, tmp_path: Path) -> None:
    """The Responses API (passed through, streamed or not): the tier comes in the response object
    (or the stream's last event) and prices the call, as for chat; a provider that is not OpenAI
    (no tier honoured when silent) is still priced at the tier its answer names."""
    gw = Gateway.from_config(_config(mock, tmp_path, None))
    with run_in_thread(gw.app()) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-0000", max_retries=0)
        assert client.responses.create(model="plain", input="Say hello.", service_tier="flex").service_tier == "flex"
        with client.responses.stream(model="plain", input="Say hello.", service_tier="flex") as events:
            assert events.get_final_response().service_tier == "flex"
        client.responses.create(model="plain", input="Say hello.")
        # A background run: priced, and its rows' tier set, when it is retrieved finished.
        queued = client.responses.create(model="plain", input="Say hello.", service_tier="flex", background=True)
        assert client.responses.retrieve(queued.id).status == "completed"
    gw.flush()
    gw.close()
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        rows = db.execute("SELECT a.prompt_tokens, a.completion_tokens, a.cost_usd, a.service_tier, r.service_tier "
                          "FROM attempts a JOIN requests r ON a.request_id = r.request_id "
                          "WHERE a.purpose = 'responses' ORDER BY a.ts, a.seq").fetchall()
    assert [r[3] for r in rows] == ["flex", "flex", "default", "flex"]
    assert [r[4] for r in rows] == ["flex", "flex", "default", "flex"]  # the request rows say so too
    for (p, c, cost, tier, _) in rows:
        half = 0.5 if tier == "flex" else 1.0  # "plain" has no flex price: the batch price
        assert cost == pytest.approx((p * STANDARD["input"] + c * STANDARD["output"]) * half / M)


def test_a_provider_with_tiers_of_its_own_is_priced_at_its_standard_rate() -> None:
    """Groq reports `service_tier` too ("on_demand", "flex") but bills flex at its on-demand
    price: a tier named by a known provider other than OpenAI is kept but priced at the standard
    rate (not OpenAI's batch price, not flagged estimated), unless the model's tier rates are
    configured. An estimated call keeps the tier it was priced at."""
    from thrifty.catalog import resolve_price
    from thrifty.cost import call_cost
    from thrifty.pipeline.accounting import priced_usage
    from thrifty.types import ChatRequest, Usage

    usage = Usage(prompt_tokens=1000, completion_tokens=1000)
    groq = resolve_price("groq-model", "groq-model", STANDARD, "groq")
    assert groq is not None and groq.foreign_tiers and not groq.honours_service_tier
    standard = call_cost(usage, groq)
    for tier in ("flex", "on_demand", "performance"):
        cost = call_cost(usage, groq, service_tier=tier)
        assert (cost.usd, cost.source, cost.service_tier) == (standard.usd, "computed", tier)
    configured = resolve_price("groq-model", "groq-model", TIERED, "groq")
    assert configured is not None
    assert call_cost(usage, configured, service_tier="flex").usd == pytest.approx((1000 * 0.5 + 1000 * 3.0) / M)

    openai_price = resolve_price("g", "g", STANDARD, "openai")
    request = ChatRequest.from_body({"model": "g", "messages": HI, "service_tier": "flex"})
    _, cost = priced_usage(None, request, {"service_tier": "flex", "choices": [{"message": {"content": "hi"}}]},
                           openai_price, model="g")
    assert (cost.source, cost.service_tier) == ("estimated", "flex")  # counted offline, still flex
