"""The dashboard's strategies and `thrifty report --by strategy` with rows of the passthrough
endpoints (embeddings, responses, legacy completions) beside chat's strategies."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.rows import NOW
from fixtures.rows import dashboard_row as row
from thrifty.ledger.report import spend_report
from thrifty.ledger.store import SQLiteStore
from thrifty.server.dashboard import dashboard_data

PASSTHROUGHS = ("embeddings", "responses", "completions")


def test_every_strategy_is_listed_in_order_with_a_label(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "l.db"))
    # A passthrough's baseline is its own cost: it claims no saving.
    store.write([row(1), row(2, strategy="passthrough", baseline_cost_usd=0.01),
                 row(3, strategy="responses", baseline_cost_usd=0.01),
                 row(4, strategy="responses", baseline_cost_usd=0.01),
                 row(5, strategy="completions", cost_usd=0.02, baseline_cost_usd=0.02)], [])
    strategies = dashboard_data(store, "24h", now=NOW)["strategies"]
    assert [s["strategy"] for s in strategies] == ["routing", "cascade", "cache", "compression", "batching",
                                                  "passthrough", *PASSTHROUGHS]
    by = {s["strategy"]: s for s in strategies}
    # Chat through one model is not to be read as "every passthrough".
    assert by["passthrough"]["label"] == "chat, model as asked"
    assert (by["responses"]["label"], by["completions"]["label"]) == ("responses API", "legacy completions")
    assert by["responses"]["requests"] == 2 and by["responses"]["spend_usd"] == pytest.approx(0.02)
    assert by["embeddings"]["requests"] == 0  # listed before any embeddings request is served
    assert all(by[s]["saved_usd"] == 0 for s in (*PASSTHROUGHS, "passthrough"))
    report = {r.group: r for r in spend_report(store, "strategy")}
    assert report["responses"].requests == 2 and report["responses"].saved_usd == 0
    assert report["completions"].baseline_usd == report["completions"].spend_usd == pytest.approx(0.02)
