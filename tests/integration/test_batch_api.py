"""Provider Batch API flow over real HTTP against the mock's files/batches endpoints,
including restarts that must resume polling instead of resubmitting."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from thrifty.batching.deferred import DeferredRunner, run_deferred
from thrifty.cli.main import build_app
from thrifty.gateway import Gateway
from thrifty.ledger.report import batch_savings
from thrifty.ledger.store import open_store
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.batches import BatchAPI
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

RULES = [{"pattern": "love", "answer": "positive"}, {"pattern": ".", "answer": "negative"}]
ITEMS = [{"id": f"r{i}", "input": ("I love it" if i % 2 else "it broke") + f" #{i}"} for i in range(12)]
EXPECTED = {it["id"]: "positive" if int(it["id"][1:]) % 2 else "negative" for it in ITEMS}
LABELS = ["positive", "negative"]
TASK = "Classify the sentiment."


class Env:
    def __init__(self, mock: RunningServer, tmp: Path, max_resubmits: int = 2) -> None:
        self.mock = mock
        self.cfg: dict[str, Any] = {
            "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-test-upstream-1234"}},
            "models": {"good": {"provider": "mock", "price": {"input": 1.0, "output": 4.0}},
                       "down": {"provider": "mock", "price": {"input": 1.0, "output": 4.0}}},
            "ledger": {"path": str(tmp / "ledger.db")},
            "batching": {"deferred": {"poll_interval_s": 0.05, "max_resubmits": max_resubmits}},
        }
        self.path = tmp / "thrifty.yaml"
        self.path.write_text(yaml.safe_dump(self.cfg))

    @property
    def api(self) -> BatchAPI:
        app: Any = self.mock.server.config.app
        return app.state.batches  # type: ignore[no-any-return]

    def gateway(self) -> Gateway:
        return Gateway.from_config(self.cfg)


def start(batch: dict[str, Any] | None = None) -> RunningServer:
    cfg = {"batch": batch or {}, "models": {"good": {"answers": RULES}, "down": {"faults": {"status": 500}}}}
    return run_in_thread(create_mock(MockConfig.from_dict(cfg)))


@pytest.fixture
def slow_mock() -> Iterator[RunningServer]:
    with start({"completion_s": 0.3}) as server:
        yield server


async def test_restart_resumes_polling_and_prices_at_batch_rates(slow_mock: RunningServer, tmp_path: Path) -> None:
    env = Env(slow_mock, tmp_path)
    gw = env.gateway()
    runner = DeferredRunner(gw)
    job = await runner.submit(ITEMS, task=TASK, model="good", labels=LABELS)
    assert job.status == "submitted" and job.batch_id
    await runner.aclose()
    await gw.aclose()  # the process "dies" while the batch runs

    gw = env.gateway()
    runner = DeferredRunner(gw)
    again = await runner.submit(ITEMS, task=TASK, model="good", labels=LABELS)  # same input: same job
    assert again.job_id == job.job_id and again.batch_id == job.batch_id
    done = await runner.wait(job.job_id, interval=0.05)
    assert done.status == "finished" and env.api.created == 1 and env.api.uploads == 1
    results = runner.results(job.job_id)
    assert {r.id: r.output for r in results} == EXPECTED
    assert all(r.produced == "batch_api" and r.status == "ok" for r in results)
    await runner.aclose()
    await gw.aclose()

    store = open_store(str(tmp_path / "ledger.db"))
    rows = store.query("SELECT batch, strategy, cost_usd, prompt_tokens, completion_tokens FROM requests")
    assert len(rows) == 12 and all(r[0] and r[1] == "batch" for r in rows)
    for _, _, cost, pt, ct in rows:
        assert cost == pytest.approx((pt * 0.5 + ct * 2.0) / 1e6)  # half of input 1.0 / output 4.0
    savings = batch_savings(store, env.gateway().catalog)
    assert savings.requests == 12 and savings.saved_usd == pytest.approx(savings.spend_usd)
    store.close()


@pytest.mark.parametrize("settings", [{"line_fail_rate": 0.5, "affect_batches": 1},
                                      {"expire": True, "affect_batches": 1}])
async def test_failed_and_expired_lines_are_resubmitted(tmp_path: Path, settings: dict[str, Any]) -> None:
    with start(settings) as mock:
        env = Env(mock, tmp_path)
        gw = env.gateway()
        job, results = await run_deferred(gw, ITEMS, task=TASK, model="good", labels=LABELS, interval=0.05)
        await gw.aclose()
        assert job.status == "finished" and job.round == 2 and env.api.created == 2
        assert {r.id: r.output for r in results} == EXPECTED
        retried = [r for r in results if r.calls == 2]
        assert 0 < len(retried) < len(ITEMS)


async def test_a_new_round_shows_no_provider_status_until_its_batch_exists(tmp_path: Path) -> None:
    with start({"line_fail_rate": 0.5, "affect_batches": 1}) as mock:
        env = Env(mock, tmp_path)
        gw = env.gateway()
        runner = DeferredRunner(gw)
        job = await runner.submit(ITEMS, task=TASK, model="good", labels=LABELS)
        seen = [(job.status, job.round, job.provider_status)]
        for _ in range(200):
            job = await runner.poll(job.job_id)
            seen.append((job.status, job.round, job.provider_status))
            if job.status == "finished":
                break
        await runner.aclose()
        await gw.aclose()
    assert job.status == "finished" and job.round == 2
    # Between the rounds: the first batch's "completed" must not show as the second round's status.
    assert ("created", 2, None) in seen
    assert all(provider is None for status, _, provider in seen if status == "created")


async def test_items_failing_every_round_are_reported(tmp_path: Path) -> None:
    with start() as mock:
        env = Env(mock, tmp_path, max_resubmits=1)
        gw = env.gateway()
        job, results = await run_deferred(gw, ITEMS[:4], task=TASK, model="down", interval=0.05)
        await gw.aclose()
        assert job.status == "finished" and env.api.created == 2
        assert len(results) == 4 and all(r.status == "failed" and r.output is None for r in results)
        assert all(r.error and r.error.startswith("500") and r.calls == 2 for r in results)


async def test_cancel_reports_unfinished_items(tmp_path: Path) -> None:
    with start({"completion_s": 60}) as mock:
        env = Env(mock, tmp_path)
        gw = env.gateway()
        runner = DeferredRunner(gw)
        job = await runner.submit(ITEMS[:3], task=TASK, model="good")
        job = await runner.cancel(job.job_id)
        assert job.status == "cancelled"
        results = runner.results(job.job_id)
        assert [r.status for r in results] == ["failed"] * 3
        assert all("batch_cancelled" in (r.error or "") for r in results)
        await runner.aclose()
        await gw.aclose()


def cli(*args: str) -> Any:
    return CliRunner().invoke(build_app(), list(args))


def test_cli_run_twice_resumes_then_status_results(slow_mock: RunningServer, tmp_path: Path) -> None:
    env = Env(slow_mock, tmp_path)
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(it) + "\n" for it in ITEMS))
    args = ["batch", "run", str(items), "--task", TASK, "--model", "good", "--labels", "positive,negative",
            "--deferred", "--config", str(env.path), "--no-progress"]
    first = cli(*args, "--no-wait")
    assert first.exit_code == 0, first.output
    job_id = first.stdout.strip().splitlines()[-1]
    assert job_id.startswith("bj_") and env.api.created == 1

    status = cli("batch", "status", job_id[:8], "--config", str(env.path))
    assert status.exit_code == 0 and job_id in status.output

    out = tmp_path / "out.jsonl"
    second = cli(*args, "--out", str(out), "--poll-interval", "0.05")  # a new process: resumes the same job
    assert second.exit_code == 0, second.output
    assert env.api.created == 1 and env.api.uploads == 1
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert {x["id"]: x["output"] for x in lines} == EXPECTED and {x["produced"] for x in lines} == {"batch_api"}

    again = tmp_path / "again.jsonl"
    fetched = cli("batch", "results", job_id, "--out", str(again), "--config", str(env.path))
    assert fetched.exit_code == 0 and again.read_text() == out.read_text()
    listing = cli("batch", "status", "--config", str(env.path))
    assert "finished" in listing.output and "ok 12" in listing.output
    report = cli("report", "--config", str(env.path))
    assert "provider batches: 12 calls" in report.output
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        assert db.execute("SELECT COUNT(*) FROM attempts WHERE batch").fetchone() == (12,)
