"""Prompt-cache writes in the ledger and `thrifty report`: a `cache_write_tokens` column on requests
and attempts (SQLite and PostgreSQL, added in place by migration 008), filled on gateway calls,
streams and Batch API answers, shown by the report in every format, and a provider batch's normal
price paying the writes at the cache-write price rather than as plain input.

The mock upstream reports writes as OpenRouter does (``usage_convention: openrouter``,
``prompt_tokens_details.cache_write_tokens`` inside ``prompt_tokens``)."""

from __future__ import annotations

import csv
import io
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
from thrifty.batching.deferred import run_deferred
from thrifty.gateway import Gateway
from thrifty.ledger.spill import append_spill, import_spill
from thrifty.ledger.store import SQLStore, open_store
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

M = 1e6
PRICE = {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75}
# Over 1,024 tokens: the mock's prompt cache writes its whole 128-token blocks on first sight.
LONG = "The quarterly ledger of the shop lists every sale and every refund. " * 110
MOCK = {"models": {"claude": {"answers": [{"pattern": ".", "answer": "positive"}],
                              "usage_convention": "openrouter", "prompt_cache": True}}}


@pytest.fixture
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as server:
        yield server


def _config(mock: RunningServer, tmp: Path, dsn: str | None = None) -> dict[str, Any]:
    ledger: dict[str, Any] = {"dsn": dsn} if dsn else {"path": str(tmp / "ledger.db")}
    return {"providers": {"m": {"base_url": mock.url + "/v1", "api_key": "sk-test-upstream-1234", "max_retries": 0}},
            "models": {"claude": {"provider": "m", "price": PRICE}},
            "cache": {"enabled": False}, "ledger": ledger,
            "batching": {"deferred": {"poll_interval_s": 0.05}}}


def _serve_calls(cfg: dict[str, Any]) -> None:
    """One call that writes the prompt to the cache, one that reads it back, one streamed write."""
    gw = Gateway.from_config(cfg)
    with run_in_thread(gw.app()) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-0000", max_retries=0)
        for tail in ("first", "first"):
            client.chat.completions.create(model="claude", messages=[{"role": "user", "content": LONG + tail}])
        for _ in client.chat.completions.create(model="claude", stream=True,
                                                messages=[{"role": "user", "content": "Streamed. " + LONG}]):
            pass
    gw.flush()
    gw.close()


async def _batch(cfg: dict[str, Any]) -> None:
    gw = Gateway.from_config(cfg)
    try:
        job, _ = await run_deferred(gw, [{"id": "b1", "input": "Batched. " + LONG}], task="Classify.",
                                    model="claude", labels=["positive", "negative"], interval=0.05)
    finally:
        await gw.aclose()
    assert job.status == "finished"


def _report(capsys: pytest.CaptureFixture[str], cfg_path: Path, fmt: str) -> str:
    code, out, err = run_main(capsys, "report", "-c", str(cfg_path), "-f", fmt)
    assert code == 0, err
    return out


def _check_ledger_and_report(store: SQLStore, capsys: pytest.CaptureFixture[str], cfg_path: Path) -> None:
    attempts = store.query("SELECT prompt_tokens, cached_tokens, cache_write_tokens, completion_tokens, cost_usd,"
                           " batch FROM attempts ORDER BY ts, seq")
    requests = store.query("SELECT cache_write_tokens FROM requests")
    assert len(attempts) == 4 and len(requests) == 4
    writes = [int(a[2]) for a in attempts]
    # The first call and the stream write their prompt, the second reads it, the batch writes its own.
    assert sorted(w > 0 for w in writes) == [False, True, True, True], attempts
    assert sum(int(r[0]) for r in requests) == sum(writes)
    for prompt, cached, written, completion, cost, batch in attempts:
        fresh = prompt - cached - written
        usd = (fresh * PRICE["input"] + cached * PRICE["cached_input"] + written * PRICE["cache_write"]
               + completion * PRICE["output"]) / M
        assert float(cost) == pytest.approx(usd / 2 if batch else usd)  # the ledger's cost already had them

    data = json.loads(_report(capsys, cfg_path, "json"))[0]
    assert data["cache_write_tokens"] == sum(writes)
    # The batch call's normal price pays its writes at the write price: twice its batch cost.
    batch_row = next(a for a in attempts if a[5])
    assert data["provider_batch_calls"] == 1
    assert data["provider_batch_normal_usd"] == pytest.approx(2 * float(batch_row[4]))
    assert data["provider_batch_saved_usd"] == pytest.approx(float(batch_row[4]))
    assert data["provider_batch_normal_usd"] - data["provider_batch_spend_usd"] == \
        pytest.approx(data["provider_batch_saved_usd"])
    # Baseline (the same model, at normal prices) minus spend is the batch's half: the figures add up.
    assert data["saved_usd"] == pytest.approx(data["provider_batch_saved_usd"])

    rows = list(csv.DictReader(io.StringIO(_report(capsys, cfg_path, "csv"))))
    assert int(rows[0]["cache_write_tokens"]) == sum(writes)
    table = _report(capsys, cfg_path, "table")
    assert "cache write tok" in table and str(sum(writes)) in table


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def dsn(request: pytest.FixtureRequest) -> str | None:
    """The ledger each test runs on: None for the SQLite file in tmp_path, else PostgreSQL's DSN."""
    return request.getfixturevalue("pg_dsn") if request.param == "postgres" else None


def _store(tmp_path: Path, dsn: str | None) -> SQLStore:
    return open_store(None if dsn else str(tmp_path / "ledger.db"), dsn, check=dsn is None)


def test_the_ledger_records_cache_writes_and_the_report_prices_them(
        mock: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], dsn: str | None) -> None:
    import asyncio

    cfg = _config(mock, tmp_path, dsn)
    cfg_path = tmp_path / "thrifty.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    _serve_calls(cfg)
    asyncio.run(_batch(cfg))
    store = _store(tmp_path, dsn)
    try:
        _check_ledger_and_report(store, capsys, cfg_path)
    finally:
        store.close()


_OLD_REQUEST = ("INSERT INTO requests (request_id, ts, key_id, tenant, task, route, requested_model, served_model,"
                " tier, strategy, prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, cost_usd,"
                " baseline_cost_usd, cache_status, cache_saved_usd, compression_saved_tokens, compression_saved_usd,"
                " n_attempts, escalations, latency_ms, status, error_type, error, stream, batch) VALUES"
                " ('old-1', 1000.0, NULL, 'default', NULL, NULL, 'claude', 'claude', NULL, 'routing', 100, 0, 10, 0,"
                " 0.5, 1.5, NULL, 0, 0, 0, 1, 0, 5.0, 'ok', NULL, NULL, FALSE, FALSE)")
_OLD_ATTEMPT = ("INSERT INTO attempts (request_id, seq, ts, model, provider, tier, purpose, prompt_tokens,"
                " cached_tokens, completion_tokens, reasoning_tokens, cost_usd, cost_source, latency_ms, status,"
                " error, score, score_reason, accepted, batch) VALUES ('old-1', 0, 1000.0, 'claude', 'm', NULL,"
                " 'answer', 100, 0, 10, 0, 0.5, 'computed', 5.0, 'ok', NULL, NULL, NULL, NULL, FALSE)")


def _check_upgraded(store: SQLStore, capsys: pytest.CaptureFixture[str], cfg_path: Path) -> None:
    assert store.query("SELECT request_id, prompt_tokens, cache_write_tokens FROM requests") == [("old-1", 100, 0)]
    assert store.query("SELECT request_id, cache_write_tokens FROM attempts") == [("old-1", 0)]
    assert store.query("SELECT name FROM _thrifty_migrations WHERE name = '008_cache_write_tokens'")
    data = json.loads(_report(capsys, cfg_path, "json"))[0]
    assert (data["requests"], data["spend_usd"], data["baseline_usd"], data["cache_write_tokens"]) == (1, 0.5, 1.5, 0)


def test_an_old_ledger_is_upgraded_in_place_and_keeps_its_rows(
        mock: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], dsn: str | None) -> None:
    old_ledger(tmp_path / "ledger.db", dsn, "008", _OLD_REQUEST, _OLD_ATTEMPT)
    cfg_path = tmp_path / "thrifty.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(mock, tmp_path, dsn)))
    store = _store(tmp_path, dsn)
    try:
        _check_upgraded(store, capsys, cfg_path)
    finally:
        store.close()


def test_rows_spilled_before_the_column_still_import(tmp_path: Path) -> None:
    """A spill file written by the previous version (no cache_write_tokens) imports after the upgrade."""
    spill = tmp_path / "ledger.db.failed.jsonl"
    store = open_store(str(tmp_path / "ledger.db"))
    try:
        from fixtures.rows import att, req

        append_spill(str(spill), [(req(1, "claude", 0.5, 1.5), [att(1)])])
        lines = []
        for line in spill.read_text().splitlines():
            row = json.loads(line)
            row["request"].pop("cache_write_tokens", None)
            for a in row["attempts"]:
                a.pop("cache_write_tokens", None)
            lines.append(json.dumps(row))
        spill.write_text("\n".join(lines) + "\n")
        result = import_spill(store, str(spill))
        assert (result.requests, result.new) == (1, 1)
        assert store.query("SELECT request_id, cache_write_tokens FROM requests") == [("r1", 0)]
    finally:
        store.close()


def test_a_gateway_cache_hit_records_no_cache_writes(mock: RunningServer, tmp_path: Path) -> None:
    # Found by review: a hit carries the stored answer's usage, its writes included, so every hit
    # added writes to the report that no provider was paid for.
    cfg = {**_config(mock, tmp_path), "cache": {"enabled": True}}
    gw = Gateway.from_config(cfg)
    with run_in_thread(gw.app()) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-0000", max_retries=0)
        for _ in range(2):
            client.chat.completions.create(model="claude", temperature=0, messages=[{"role": "user", "content": LONG}])
    gw.flush()
    gw.close()
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        rows = db.execute("SELECT cache_status, cache_write_tokens FROM requests ORDER BY ts").fetchall()
    assert [status for status, _ in rows] == ["miss", "hit"]
    assert rows[0][1] > 1000 and rows[1][1] == 0
