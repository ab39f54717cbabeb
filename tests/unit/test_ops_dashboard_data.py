"""Dashboard aggregates over the ledger (SQLite here; PostgreSQL in tests/integration)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.rows import NOW
from fixtures.rows import dashboard_row as row
from thrifty.errors import InvalidRequestError
from thrifty.ledger.store import SQLiteStore
from thrifty.ops.keys import KeyStore
from thrifty.server.dashboard import dashboard_data


def test_aggregates(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "l.db"))
    key, _ = KeyStore(store).create("team-a", budget_usd=10)
    rows = [
        row(1, key_id=key.key_id, task="faq"),
        row(2, key_id=key.key_id, task="faq", ts=NOW - 3 * 3600),
        row(3, strategy="cascade", tier="premium", escalations=1, cost_usd=0.06, task="code"),
        row(4, strategy="cascade", tier="small", cost_usd=0.02),
        row(5, strategy="cache", cache_status="hit", cost_usd=0.0, baseline_cost_usd=None, cache_saved_usd=0.04),
        row(6, cache_status="miss", compression_saved_usd=0.005),
        row(7, strategy="batch", cost_usd=0.02),
        row(8, status="error", cost_usd=None, baseline_cost_usd=None, served_model=None, tier=None),
        row(9, ts=NOW - 3 * 86400),  # outside 24h, inside 7d
    ]
    store.write(rows, [])
    d = dashboard_data(store, "24h", now=NOW)
    t = d["totals"]
    assert t["requests"] == 8 and t["errors"] == 1
    assert t["spend_usd"] == pytest.approx(0.01 + 0.01 + 0.06 + 0.02 + 0 + 0.01 + 0.02)
    assert t["cache_hit_rate"] == pytest.approx(0.5) and t["cache_lookups"] == 2
    assert t["escalation_rate"] == pytest.approx(0.5) and t["escalations"] == 1
    saved = {s["strategy"]: s["saved_usd"] for s in d["strategies"]}
    assert set(saved) >= {"routing", "cascade", "cache", "compression", "batching"}
    # Row 6's saving (0.04) holds compression's share (0.005): the chart shows that apart.
    assert saved["routing"] == pytest.approx(0.04 * 3 - 0.005)
    assert saved["cascade"] == pytest.approx(-0.01 + 0.03)
    assert saved["cache"] == pytest.approx(0.04)
    assert saved["compression"] == pytest.approx(0.005)
    assert saved["batching"] == pytest.approx(0.03)
    assert t["saved_usd"] == pytest.approx(sum(saved.values()))
    assert {x["tier"]: x["requests"] for x in d["tiers"]} == {"small": 6, "premium": 1}
    assert d["tasks"][0]["task"] == "code" and {x["task"] for x in d["tasks"]} == {"(none)", "faq", "code"}
    top = {k["key_id"]: k for k in d["keys"]}
    assert top[key.key_id]["name"] == "team-a" and top[key.key_id]["requests"] == 2
    assert top[key.key_id]["budget_usd"] == 10
    assert len(d["series"]) == 2 and d["bucket_s"] == 3600  # two hourly buckets with traffic
    assert sum(p["requests"] for p in d["series"]) == 8
    assert dashboard_data(store, "7d", now=NOW)["totals"]["requests"] == 9
    with pytest.raises(InvalidRequestError):
        dashboard_data(store, "1y", now=NOW)


def test_the_dashboard_counts_savings_by_the_reports_rule(tmp_path: Path) -> None:
    """An unpriced request claims no saving and a failed request's spend is a loss, as in
    `thrifty report`: the two totals agree."""
    from thrifty.ledger.report import spend_report

    store = SQLiteStore(str(tmp_path / "l.db"))
    store.write([
        row(1),  # saved 0.04
        row(2, cost_usd=None),  # price unknown: claims nothing (was the whole 0.05)
        row(3, status="error", cost_usd=0.002, baseline_cost_usd=None, served_model=None),  # a loss of 0.002
        row(4, compression_saved_usd=0.005),  # saved 0.04: compression's 0.005 is inside the baseline's difference
    ], [])
    totals = dashboard_data(store, "24h", now=NOW)["totals"]
    assert totals["saved_usd"] == pytest.approx(0.04 + 0.04 - 0.002)
    assert totals["compression_saved_usd"] == pytest.approx(0.005)
    (report,) = spend_report(store)
    assert report.saved_usd == pytest.approx(totals["saved_usd"])
