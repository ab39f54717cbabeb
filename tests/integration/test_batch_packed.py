"""Packed batches over real HTTP: the mock upstream misbehaves, every fallback path runs for real."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from thrifty.batching import run_batch
from thrifty.cli.main import build_app
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

RULES = [{"pattern": "love|great", "answer": "positive"}, {"pattern": ".", "answer": "negative"}]
LABELS = ["positive", "negative"]
MODELS: dict[str, dict[str, Any]] = {
    "good": {},
    "dropper": {"pack_drop": 2},
    "dupper": {"pack_duplicate": 2},
    "invalider": {"pack_invalid": 3},
    "reorderer": {"pack_reorder": True},
    "breaker": {"pack_break_json": True, "pack_min_items": 6},  # full packs break, halves work
    "stubborn": {"pack_break_json": True},  # every pack breaks: one by one
}
ITEMS = [{"id": f"r{i}", "input": ("I love it" if i % 3 else "awful, broke in a day") + f" (#{i})"}
         for i in range(25)]
EXPECTED = {it["id"]: "positive" if int(it["id"][1:]) % 3 else "negative" for it in ITEMS}


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    cfg = {"models": {name: {"answers": RULES, "faults": faults} for name, faults in MODELS.items()}}
    cfg["models"]["hopeless"] = {"answer": "maybe"}
    with run_in_thread(create_mock(MockConfig.from_dict(cfg))) as server:
        yield server


def config(mock: RunningServer, tmp: Path) -> dict[str, Any]:
    models = {name: {"provider": "mock", "price": {"input": 1.0, "output": 4.0}} for name in [*MODELS, "hopeless"]}
    models["header-dropper"] = {"provider": "pack-header", "upstream_model": "good",
                                "price": {"input": 1.0, "output": 4.0}}
    return {
        "providers": {
            "mock": {"base_url": mock.url + "/v1", "api_key": "sk-test-upstream-1234"},
            # The per-request x-mock-behaviour header path (sent on every call of this provider).
            "pack-header": {"base_url": mock.url + "/v1", "headers": {"x-mock-behaviour": "pack_drop=1; pack_reorder"}},
        },
        "models": models,
        "ledger": {"path": str(tmp / "ledger.db")},
    }


@pytest.fixture
async def gateway(mock: RunningServer, tmp_path: Path) -> AsyncIterator[Gateway]:
    # Per test: an aiohttp session belongs to the event loop of the test that opened it.
    gw = Gateway.from_config(config(mock, tmp_path))
    yield gw
    await gw.aclose()


@pytest.mark.parametrize("model,produced", [
    ("good", {"packed": 25}),
    ("reorderer", {"packed": 25}),
    ("dropper", {"packed": 19, "single": 6}),
    ("dupper", {"packed": 19, "single": 6}),
    ("invalider", {"packed": 16, "single": 9}),
    ("breaker", {"repacked": 20, "packed": 5}),
    ("stubborn", {"single": 25}),
    ("header-dropper", {"packed": 22, "single": 3}),
])
async def test_every_item_gets_exactly_one_correct_line(gateway: Gateway, model: str, produced: dict[str, int]) -> None:
    results = await run_batch(gateway, ITEMS, task="Classify the sentiment of the review.", model=model, pack=10,
                              labels=LABELS)
    assert [r.id for r in results] == [it["id"] for it in ITEMS]
    assert {r.id: r.output for r in results} == EXPECTED
    assert all(r.status == "ok" and r.error is None for r in results)
    assert dict(Counter(r.produced for r in results)) == produced
    retried = [r for r in results if r.produced != "packed"]
    assert all(r.calls >= 2 for r in retried) or model == "stubborn"


async def test_item_costs_add_up_to_the_ledger(gateway: Gateway) -> None:
    results = await run_batch(gateway, ITEMS, task="Classify the sentiment.", model="dropper", pack=10,
                              labels=LABELS, task_name="cost-check")
    gateway.flush()
    assert gateway.config.ledger.path
    with sqlite3.connect(gateway.config.ledger.path) as db:
        (spent, n), = db.execute("SELECT SUM(cost_usd), COUNT(*) FROM requests WHERE task = 'cost-check'").fetchall()
    # three packs; each one's two dropped items repacked together (dropped again), then one by one
    assert n == 3 + 3 + 6
    assert sum(r.cost_usd or 0 for r in results) == pytest.approx(spent)


async def test_items_that_never_validate_are_reported_not_dropped(gateway: Gateway) -> None:
    results = await run_batch(gateway, ITEMS[:7], task="Classify.", model="hopeless", pack=4, labels=LABELS)
    assert len(results) == 7 and all(r.status == "failed" and r.output is None for r in results)
    assert all(r.produced == "failed" and "invalid answer alone" in (r.error or "") for r in results)
    assert all(r.cost_usd and r.cost_usd > 0 for r in results)


def test_cli_batch_run_writes_one_line_per_item(mock: RunningServer, tmp_path: Path) -> None:
    cfg_path = tmp_path / "thrifty.yaml"
    cfg_path.write_text(yaml.safe_dump(config(mock, tmp_path)))
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(it) + "\n" for it in ITEMS))
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(build_app(), [
        "batch", "run", str(items), "--task", "Classify the sentiment.", "--model", "dropper", "--pack", "10",
        "--labels", "positive,negative", "--out", str(out), "--config", str(cfg_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == [it["id"] for it in ITEMS]
    assert {x["id"]: x["output"] for x in lines} == EXPECTED
    assert {x["produced"] for x in lines} == {"packed", "single"}
    assert all(x["cost_usd"] > 0 and x["tokens"]["prompt"] > 0 for x in lines)
    assert "25 items: 25 ok, 0 failed" in result.output
