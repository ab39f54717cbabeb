"""The finance view over real HTTP: the figures people read (`thrifty report`, a budget refusal,
/metrics, the dashboard) say what the ledger holds, and a real dollar amount never reads as zero.

A call to a cheap model costs well under a millionth of a dollar: six decimals showed its spend,
the cache's saving and a small test budget as 0.000000."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from fixtures.cli_run import run_main
from thrifty.cost import usd_text
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

ADMIN = "finance-admin-key-1"
TINY = {"input": 0.005, "output": 0.01}  # USD per million tokens: a small local-class model
MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict({"default": {"output_tokens": [20, 20]}}))) as server:
        yield server


def _config(mock: RunningServer, tmp: Path, **extra: Any) -> dict[str, Any]:
    return {
        "providers": {"m": {"base_url": mock.url + "/v1", "api_key": "sk-test-0000", "max_retries": 0}},
        "models": {"tiny": {"provider": "m", "price": TINY},
                   "premium": {"provider": "m", "price": {"input": 10, "output": 40}}},
        "baseline": "premium",
        "ledger": {"path": str(tmp / "ledger.db")},
        **extra,
    }


def _by_hand(usage: Any) -> float:
    return (usage.prompt_tokens * TINY["input"] + usage.completion_tokens * TINY["output"]) / 1e6


def _row(table: str, label: str) -> list[str]:
    """The cells of the table line whose first cell is ``label``."""
    for line in table.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│")]
        if len(cells) > 2 and cells[1] == label:
            return cells[1:-1]
    raise AssertionError(f"no {label!r} row in:\n{table}")


def test_report_shows_a_cheap_models_real_spend_and_cache_saving(
        mock: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(mock, tmp_path, cache={"path": str(tmp_path / "cache.db")})
    gw = Gateway.from_config(cfg)
    with run_in_thread(gw.app()) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-0000", max_retries=0)
        answered = client.chat.completions.create(model="tiny", messages=MSGS, temperature=0)  # type: ignore[arg-type]
        hit = client.chat.completions.with_raw_response.create(model="tiny", messages=MSGS, temperature=0)  # type: ignore[arg-type]
        assert hit.headers["x-thrifty-cache"] == "hit"
    gw.close()
    spent = _by_hand(answered.usage)
    assert 0 < spent < 5e-7  # below six decimals' last place: the case that printed 0.000000
    config = tmp_path / "thrifty.yaml"
    config.write_text(yaml.safe_dump(cfg))

    code, out, err = run_main(capsys, "report", "--config", str(config), "--by", "model")
    assert code == 0, err
    head, tiny = _row(out, "model"), _row(out, "tiny")
    cell = dict(zip(head, tiny, strict=True))
    assert cell["spend $"] == usd_text(spent) != "0.000000"
    assert float(cell["spend $"]) == pytest.approx(spent, rel=0.05)
    assert cell["saved %"] == ">99.9"  # it cost something: not "100.0"
    # The hit avoided the same call: what the cache saved is that call's cost, not zero.
    assert cell["cache $"] == usd_text(spent) != "0.000000"
    code, out, err = run_main(capsys, "report", "--config", str(config), "--format", "json")
    assert code == 0, err
    assert '"spend_usd": ' in out and str(spent)[:6] in out  # the exact figure stays in JSON


def test_a_budget_refusal_shows_the_budget_and_the_estimate(mock: RunningServer, tmp_path: Path) -> None:
    gw = Gateway.from_config(_config(mock, tmp_path, auth={"enabled": True, "admin_key": ADMIN}))
    with run_in_thread(gw.app()) as server:
        admin = {"authorization": f"Bearer {ADMIN}"}
        key = httpx.post(server.url + "/admin/keys", headers=admin,
                         json={"name": "test-key", "budget_usd": 4e-7, "period": "day"}).json()
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key["key"], max_retries=0)
        refusal = None
        for _ in range(10):  # ~8.5e-8 each: refused within five
            try:
                client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=5)  # type: ignore[arg-type]
            except openai.RateLimitError as exc:
                refusal = exc
                break
    gw.close()
    assert refusal is not None, "the key's budget never refused a request"
    message = refusal.body["message"] if isinstance(refusal.body, dict) else str(refusal)
    assert "Budget exceeded" in message
    assert "$0.000000" not in message, message
    assert f"of ${usd_text(4e-7)} spent" in message and "4.0e-07" in message


def test_metrics_do_not_tell_readers_to_add_compression_on_top(mock: RunningServer, tmp_path: Path) -> None:
    gw = Gateway.from_config(_config(mock, tmp_path))
    with run_in_thread(gw.app()) as server:
        openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-0000", max_retries=0).chat.completions.create(
            model="tiny", messages=MSGS)  # type: ignore[arg-type]
        text = httpx.get(server.url + "/metrics").text
    gw.close()
    help_line = next(line for line in text.splitlines() if line.startswith("# HELP thrifty_savings_usd_total"))
    # Compression's saving is inside baseline minus cost since migration 006: "plus" double-counts.
    assert "plus compression" not in help_line
    assert "compression" in help_line and "included" in help_line


def test_an_unpriced_request_claims_no_compression_saving_and_is_flagged(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The LLM classifier runs on a model without a price: the request's cost is unknown, so it
    # claims no saving, and compression's share of that saving is none either.
    behaviours = {"default": {"output_tokens": [20, 20]}, "models": {"clf": {"answer": "general"}}}
    with run_in_thread(create_mock(MockConfig.from_dict(behaviours))) as upstream:
        cfg = _config(upstream, tmp_path)
        cfg["models"]["clf"] = {"provider": "m", "upstream_model": "zz-local-classifier"}
        cfg["routing"] = {"default_route": "general", "classify": {"llm": {"model": "clf", "tasks": ["general", "code"]}},
                          "routes": {"general": {"model": "tiny"}, "code": {"model": "tiny"}}}
        cfg["compression"] = {"model": "tiny", "store": {"path": str(tmp_path / "compress.db")},
                              "routes": {"*": {"compaction": True}}}
        gw = Gateway.from_config(cfg)
        with run_in_thread(gw.app()) as server:
            system = "You are   a helpful    assistant.   \n\n\n\n  Answer   briefly.    " * 60
            reply = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-0000", max_retries=0)\
                .chat.completions.with_raw_response.create(
                    model="auto", messages=[{"role": "system", "content": system}, *MSGS])  # type: ignore[list-item]
            assert int(reply.headers["x-thrifty-compressed-tokens"]) > 0
            assert "x-thrifty-cost-usd" not in reply.headers  # unknown
            gw.flush()
            data = httpx.get(server.url + "/dashboard/data?period=all").json()
        gw.close()
    assert data["totals"]["unpriced_requests"] == 1  # the page says its spend is incomplete
    assert data["totals"]["saved_usd"] == 0 and data["totals"]["compression_saved_usd"] == 0
    config = tmp_path / "thrifty.yaml"
    config.write_text(yaml.safe_dump(cfg))
    code, out, err = run_main(capsys, "report", "--config", str(config), "--format", "json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["unpriced_requests"] == 1 and row["saved_usd"] == 0
    assert row["compression_saved_tokens"] > 0  # the tokens were removed: a fact
    assert row["compression_saved_usd"] == 0  # but no dollar share of a saving that is not counted


@pytest.mark.browser
def test_dashboard_keys_table_shows_small_spend_and_budget(
        mock: RunningServer, tmp_path: Path, chromium_path: str) -> None:
    from playwright.sync_api import sync_playwright

    gw = Gateway.from_config(_config(mock, tmp_path, auth={"enabled": True, "admin_key": ADMIN}))
    with run_in_thread(gw.app()) as server:
        key = httpx.post(server.url + "/admin/keys", headers={"authorization": f"Bearer {ADMIN}"},
                         json={"name": "test-key", "budget_usd": 0.004, "period": "day"}).json()
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key["key"], max_retries=0)
        answered = client.chat.completions.create(model="tiny", messages=MSGS)  # type: ignore[arg-type]
        gw.flush()
        pw = sync_playwright().start()
        browser = pw.chromium.launch(executable_path=chromium_path, headless=True,
                                     args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                           "--disable-background-networking", "--disable-component-update"])
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/dashboard?period=24h#key={ADMIN}")
            page.wait_for_selector("body[data-ready='1']", timeout=15_000)
            deadline = time.monotonic() + 10
            while page.locator("#table-keys tbody tr").count() == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            cells = page.locator("#table-keys tbody tr").first.locator("td").all_inner_texts()
            saved_card = page.locator("#cards .card").nth(2).locator("b").inner_text()
        finally:
            browser.close()
            pw.stop()
    gw.close()
    key_id, name, requests, spend, saved, budget = cells
    assert (key_id, name, requests) == (key["key_id"], "test-key", "1")
    assert spend != "0.000000" and float(spend.lstrip("$")) == pytest.approx(_by_hand(answered.usage), rel=0.01)
    assert budget == "$0.00400"  # toFixed(2) read a $0.004 budget as 0.00
    assert float(saved.lstrip("$")) > 0
    assert saved_card.endswith("(>99.9%)"), saved_card  # it cost something: not "100.0%"


def test_the_cost_header_of_a_very_cheap_call_is_not_zero(mock: RunningServer, tmp_path: Path) -> None:
    """`x-thrifty-cost-usd` was printed to 8 decimals: a call under $0.000000005 read as
    "0.00000000", as if it had been free."""
    cfg = _config(mock, tmp_path)
    cfg["models"]["nano"] = {"provider": "m", "price": {"input": 0.00002, "output": 0.00004}}
    gw = Gateway.from_config(cfg)
    with run_in_thread(gw.app()) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-0000", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="nano", messages=MSGS)  # type: ignore[arg-type]
    gw.close()
    usage = raw.parse().usage
    assert usage is not None
    expected = (usage.prompt_tokens * 0.00002 + usage.completion_tokens * 0.00004) / 1e6
    assert 0 < expected < 5e-9
    header = raw.headers["x-thrifty-cost-usd"]
    assert "e" not in header and float(header) == pytest.approx(expected, rel=1e-3)
