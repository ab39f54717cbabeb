"""The dashboard in headless Chromium (Debian's, driven by Playwright): loads, draws, filters.

A screenshot is kept in test-artifacts/dashboard.png.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from thrifty.gateway import Gateway
from thrifty.ledger.records import RequestRow
from thrifty.mock.server import RunningServer, run_in_thread

pytestmark = pytest.mark.browser

ADMIN = "dash-admin-key-1"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def synthetic_rows(key_ids: list[str], now: float, n: int = 400) -> list[RequestRow]:
    """A week of varied traffic: every strategy, tier, task, cache outcome and some errors."""
    rng = random.Random(3)
    tiers = {"routing": ["nano", "small", "medium"], "cascade": ["small", "large", "premium"],
             "cache": ["small"], "batch": ["medium"], "passthrough": ["premium"]}
    rows = []
    for i in range(n):
        strategy = rng.choice(["routing", "routing", "cascade", "cache", "batch", "passthrough"])
        baseline = rng.uniform(0.002, 0.02)
        cost = 0.0 if strategy == "cache" else baseline * rng.uniform(0.05, 0.6 if strategy != "passthrough" else 1)
        rows.append(RequestRow(
            request_id=f"syn-{i}", ts=now - rng.uniform(0, 7 * 86400), key_id=rng.choice([*key_ids, None]),
            tenant="t", task=rng.choice(["faq", "code", "summarize", "extract", None]), route="support",
            requested_model="auto", served_model="m", tier=rng.choice(tiers[strategy]), strategy=strategy,
            prompt_tokens=rng.randint(50, 900), cached_tokens=0, completion_tokens=rng.randint(10, 400),
            reasoning_tokens=0, cost_usd=cost, baseline_cost_usd=baseline,
            cache_status="hit" if strategy == "cache" else rng.choice(["miss", "miss", None]),
            cache_saved_usd=baseline if strategy == "cache" else 0.0, compression_saved_tokens=0,
            compression_saved_usd=rng.choice([0.0, 0.0, 0.0005]),
            n_attempts=1, escalations=1 if strategy == "cascade" and rng.random() < 0.3 else 0, latency_ms=100.0,
            status="ok" if rng.random() > 0.03 else "error", error_type=None, error=None, stream=False, batch=False))
    return [dataclasses.replace(r, error_type="UpstreamError") if r.status == "error" else r for r in rows]


@pytest.fixture
def dashboard_server(tmp_path: Path) -> Iterator[tuple[RunningServer, dict[str, Any]]]:
    cfg: dict[str, Any] = {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}},
        "models": {"m": {"provider": "p", "price": {"input": 1, "output": 2}}},
        "ledger": {"path": str(tmp_path / "ledger.db")},
        "auth": {"enabled": True, "admin_key": ADMIN},
    }
    gw = Gateway.from_config(cfg)
    assert gw.ops.keys is not None and gw.ops.store is not None
    keys = [gw.ops.keys.create(name)[0].key_id for name in ("support-bot", "search", "batch-jobs")]
    gw.ops.store.write(synthetic_rows(keys, time.time()), [])
    with run_in_thread(gw.app()) as server:
        yield server, {"keys": keys}
    gw.close()


def launch(chromium_path: str) -> Any:
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
    return pw, browser


def test_dashboard_loads_with_data_and_draws_charts(
    dashboard_server: tuple[RunningServer, dict[str, Any]], chromium_path: str
) -> None:
    server, _ = dashboard_server
    pw, browser = launch(chromium_path)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(f"{server.url}/dashboard?period=7d#key={ADMIN}")
        page.wait_for_selector("body[data-ready='1']", timeout=15_000)
        # The key left the URL (history.replaceState) and is not in the page.
        assert ADMIN not in page.url and ADMIN not in page.content()
        # Spend vs baseline: two drawn series with one point per 6-hour bucket.
        assert page.locator("#chart-spend path.series.spend").count() == 1
        assert page.locator("#chart-spend path.series.baseline").count() == 1
        assert page.locator("#chart-spend circle.spend").count() >= 20
        d = page.locator("#chart-spend path.series.spend").get_attribute("d") or ""
        assert d.count("L") >= 19
        strategies = page.locator("#chart-strategies rect.bar").evaluate_all("els => els.map(e => e.dataset.label)")
        assert {"routing", "cascade", "cache", "compression", "batching"} <= set(strategies)
        widths = page.locator("#chart-strategies rect.bar").evaluate_all(
            "els => els.map(e => e.getBBox().width)")
        assert max(widths) > 50  # bars really have extent, not only elements
        assert page.locator("#chart-tiers path.slice").count() == 5
        assert page.locator("#chart-rates rect.bar").count() == 2
        assert page.locator("#chart-tasks rect.bar").count() == 5
        assert page.locator("#chart-keys rect.bar").count() == 4
        names = page.locator("#table-keys tbody td:nth-child(2)").all_inner_texts()
        assert {"support-bot", "search", "batch-jobs"} <= set(names)
        assert page.locator("#cards .card").count() == 6
        week = int(page.locator("#cards .card").nth(3).locator("b").inner_text().split()[0])
        assert week == 400
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        # Filtering by period refetches and redraws: fewer requests in 24 h than in the week.
        page.click("button[data-period='24h']")
        # The click handler rewrites the URL and clears data-ready in the same tick (the page's CSP
        # forbids the eval that wait_for_function would need).
        page.wait_for_url("**/dashboard?period=24h")
        page.wait_for_selector("body[data-ready='1']", timeout=15_000)
        day = int(page.locator("#cards .card").nth(3).locator("b").inner_text().split()[0])
        assert 0 < day < week
        assert page.locator("#chart-spend path.series.spend").count() == 1
        assert errors == []
    finally:
        browser.close()
        pw.stop()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


def test_dashboard_asks_for_the_admin_key(
    dashboard_server: tuple[RunningServer, dict[str, Any]], chromium_path: str
) -> None:
    server, _ = dashboard_server
    pw, browser = launch(chromium_path)
    try:
        page = browser.new_page()
        page.goto(f"{server.url}/dashboard")
        page.wait_for_selector("#login:not([hidden])", timeout=15_000)
        page.fill("#admin-key", ADMIN)
        page.click("#login button[type=submit]")
        page.wait_for_selector("body[data-ready='1']", timeout=15_000)
        assert page.locator("#chart-spend path.series").count() == 2
    finally:
        browser.close()
        pw.stop()
