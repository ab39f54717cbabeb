"""A packed run in the accounting, as a finance user reads it: `thrifty batch run` (packed and
`--deferred`) against the mock upstream over real HTTP, then `thrifty report`, the dashboard's
data and the items sent one by one through a served gateway with the real `openai` client."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.fixtures.cli_run import run_main
from tests.fixtures.served import serving

from thrifty.batching.items import Item
from thrifty.batching.packing import single_messages
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

RULES = [{"pattern": "love|great", "answer": "positive"}, {"pattern": ".", "answer": "negative"}]
LABELS = ["positive", "negative"]
TASK = "Classify the sentiment of the review."
ITEMS = [{"id": f"r{i}", "input": ("I love this blender, works great" if i % 3 else "awful, broke in a day")
          + f" (#{i})"} for i in range(20)]
BATCH_LINE = re.compile(r"provider batches: (\d+) calls, \$([\d.e-]+) spent, \$([\d.e-]+) at normal prices, "
                        r"\$([\d.e-]+) saved")


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    models: dict[str, Any] = {"cheap": {"answers": RULES},
                              # drops 2 items of every pack: repacked (dropped again), then alone
                              "dropper": {"answers": RULES, "faults": {"pack_drop": 2}},
                              "slow": {"answers": RULES, "faults": {"latency_ms": 1500}},
                              "premium": {"answers": RULES}}
    with run_in_thread(create_mock(MockConfig.from_dict({"models": models}))) as server:
        yield server


def write_config(mock: RunningServer, tmp: Path, **extra: Any) -> Path:
    models = {name: {"provider": "mock", "price": {"input": 0.25, "output": 1.0}} for name in ("cheap", "dropper", "slow")}
    models["premium"] = {"provider": "mock", "price": {"input": 10.0, "output": 30.0}}
    cfg = {"providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-test-upstream-1234", "max_retries": 0}},
           "models": models, "baseline": "premium", "ledger": {"path": str(tmp / "ledger.db")},
           "batching": {"deferred": {"poll_interval_s": 0.05}}, **extra}
    path = tmp / "thrifty.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def batch_run(capsys: pytest.CaptureFixture[str], tmp: Path, config: Path, model: str, *flags: str,
              items: list[dict[str, str]] = ITEMS) -> list[dict[str, Any]]:
    src = tmp / f"items-{model}.jsonl"
    src.write_text("".join(json.dumps(it) + "\n" for it in items))
    out = tmp / f"out-{model}.jsonl"
    run_main(capsys, "batch", "run", str(src), "--task", TASK, "--labels", ",".join(LABELS), "--model", model,
             "--out", str(out), "--config", str(config), "--no-progress", *flags)
    return [json.loads(x) for x in out.read_text().splitlines()]


def report(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> str:
    code, out, err = run_main(capsys, "report", "--config", str(config), *args)
    assert code == 0, err
    return out


def alone_baseline(mock: RunningServer, tmp: Path) -> float:
    """What the baseline model charges for the items sent one by one (the model named, so each
    request is a passthrough whose baseline is its own prompt): the figure packing is measured against."""
    (tmp / "alone").mkdir()
    with serving(yaml.safe_load(write_config(mock, tmp / "alone").read_text())) as (_, client):
        for it in ITEMS:
            messages: Any = single_messages(TASK, Item(it["id"], it["input"]), LABELS)
            client.chat.completions.create(model="cheap", messages=messages, temperature=0, max_tokens=16)
    with sqlite3.connect(tmp / "alone" / "ledger.db") as db:
        (n, base), = db.execute("SELECT COUNT(*), SUM(baseline_cost_usd) FROM requests WHERE strategy = 'passthrough'")
    assert n == len(ITEMS)
    return float(base)


def test_a_packed_run_is_its_own_strategy_with_the_items_alone_as_baseline(
        mock: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(mock, tmp_path)
    lines = batch_run(capsys, tmp_path, config, "dropper", "--pack", "10")
    assert {x["status"] for x in lines} == {"ok"} and {x["produced"] for x in lines} == {"packed", "single"}

    rows = json.loads(report(capsys, config, "--by", "strategy", "--format", "json"))
    assert [r["group"] for r in rows] == ["packing"]  # was `passthrough`
    row = rows[0]
    # One ledger row per call (2 packs, 2 repacks that answered nothing, 4 items alone); the
    # items' cost shares add up to what the calls cost, fallbacks included, nothing twice.
    assert row["requests"] == 8
    assert sum(x["cost_usd"] for x in lines) == pytest.approx(row["spend_usd"])
    # The baseline is the premium model answering each item on its own (each once), not the
    # packed prompt and its JSON framing.
    assert row["baseline_usd"] == pytest.approx(alone_baseline(mock, tmp_path), rel=0.03)
    assert row["saved_usd"] == pytest.approx(row["baseline_usd"] - row["spend_usd"])
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        calls = db.execute("SELECT prompt_tokens, cost_usd, baseline_cost_usd FROM requests ORDER BY ts").fetchall()
    # A repack whose answer kept no item claims no baseline: its spend is packing's loss.
    assert sorted(b for _, _, b in calls).count(0.0) == 2

    # The dashboard shows packing in its `batching` bar, not as chat passthrough.
    with serving(yaml.safe_load(config.read_text())) as (_, client):
        root = str(client.base_url).rstrip("/").removesuffix("/v1")
        strategies = httpx.get(root + "/dashboard/data?period=24h").json()["strategies"]
    shown = {s["strategy"]: s for s in strategies}
    assert shown["batching"]["requests"] == 8 and shown["passthrough"]["requests"] == 0
    assert shown["batching"]["saved_usd"] == pytest.approx(row["saved_usd"])


def test_a_failed_call_that_billed_is_in_the_items_costs(
        mock: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The answer takes longer than the request may: the calls end at the deadline, billed for
    # their prompt (in the ledger); the items' lines said $0 and the run "$0.000000 spent".
    config = write_config(mock, tmp_path, server={"request_timeout_s": 0.3})
    lines = batch_run(capsys, tmp_path, config, "slow", "--pack", "4", items=ITEMS[:4])
    assert {x["status"] for x in lines} == {"failed"}
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        (spent, n, strategies), = db.execute(
            "SELECT SUM(cost_usd), COUNT(*), GROUP_CONCAT(DISTINCT strategy) FROM requests").fetchall()
    assert n == 1 + 2 + 4 and spent > 0  # a pack, its halves, each alone
    assert sum(x["cost_usd"] for x in lines) == pytest.approx(spent)
    assert strategies == "packing"
    assert all(x["calls"] == 3 for x in lines)


def test_report_json_and_csv_carry_the_provider_batch_figures(
        mock: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(mock, tmp_path)
    batch_run(capsys, tmp_path, config, "cheap", "--deferred")
    batch_run(capsys, tmp_path, config, "dropper", "--pack", "10")
    line = BATCH_LINE.search(report(capsys, config))
    assert line is not None
    calls, spent, normal, saved = int(line[1]), float(line[2]), float(line[3]), float(line[4])
    assert calls == len(ITEMS) and saved > 0

    total, = json.loads(report(capsys, config, "--format", "json"))
    assert total["provider_batch_calls"] == calls
    assert total["provider_batch_spend_usd"] == pytest.approx(spent, rel=1e-2)
    assert total["provider_batch_normal_usd"] == pytest.approx(normal, rel=1e-2)
    assert total["provider_batch_saved_usd"] == pytest.approx(total["provider_batch_normal_usd"]
                                                              - total["provider_batch_spend_usd"])
    # Grouped, each row has its own calls' figures, and they add up to the whole window's.
    by = {r["group"]: r for r in csv.DictReader(io.StringIO(report(capsys, config, "--by", "strategy",
                                                                   "--format", "csv")))}
    assert set(by) == {"batch", "packing"}
    assert int(by["batch"]["provider_batch_calls"]) == calls and int(by["packing"]["provider_batch_calls"]) == 0
    for key in ("provider_batch_spend_usd", "provider_batch_normal_usd", "provider_batch_saved_usd"):
        assert float(by["batch"][key]) == pytest.approx(total[key]) and float(by["packing"][key]) == 0.0
