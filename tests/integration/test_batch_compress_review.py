"""A team's batch and compression work over real HTTP: the mock upstream as the provider, the
gateway under uvicorn for the `openai` client, the CLI for `thrifty batch run --deferred`."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from fixtures.served import reset, sent, serving
from thrifty.batching.deferred import DeferredRunner
from thrifty.cli.main import build_app
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.batches import BatchAPI
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

RULES = [{"pattern": "refund|charge", "answer": "billing"}, {"pattern": "crash", "answer": "bug"},
         {"pattern": ".", "answer": "other"}]
TICKETS = [{"id": i, "input": ["Refund order", "App crash on page", "Change my avatar"][i % 3] + f" #{i}"}
           for i in range(1, 25)]
EXPECTED = {t["id"]: ["billing", "bug", "other"][t["id"] % 3] for t in TICKETS}
TASK = "Classify the support ticket."


@pytest.fixture
def failing_first_batch() -> Iterator[RunningServer]:
    """A provider whose first batch fails a share of its lines (later batches answer them all)."""
    cfg = {"models": {"cheap": {"answers": RULES}},
           "batch": {"completion_s": 0.05, "line_fail_rate": 0.4, "affect_batches": 1}}
    with run_in_thread(create_mock(MockConfig.from_dict(cfg))) as server:
        yield server


def _batches(mock: RunningServer) -> BatchAPI:
    app: Any = mock.server.config.app
    return app.state.batches  # type: ignore[no-any-return]


def _run(*args: str) -> Any:
    return CliRunner().invoke(build_app(), list(args))


def test_deferred_failed_lines_cost_nothing_and_running_again_retries_only_them(
        failing_first_batch: RunningServer, tmp_path: Path) -> None:
    mock = failing_first_batch
    cfg = {"providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-test-upstream-1234"}},
           "models": {"cheap": {"provider": "mock", "price": {"input": 0.5, "output": 2.0}},
                      "premium": {"provider": "mock", "price": {"input": 5.0, "output": 20.0}}},
           "baseline": "premium", "ledger": {"path": str(tmp_path / "ledger.db")},
           "batching": {"deferred": {"poll_interval_s": 0.05, "max_resubmits": 0}}}
    config = tmp_path / "thrifty.yaml"
    config.write_text(yaml.safe_dump(cfg))
    items = tmp_path / "tickets.jsonl"
    items.write_text("".join(json.dumps(t) + "\n" for t in TICKETS))
    out = tmp_path / "labels.jsonl"
    args = ["batch", "run", str(items), "--task", TASK, "--model", "cheap", "--labels", "billing,bug,other",
            "--deferred", "--out", str(out), "--config", str(config), "--no-progress"]

    first = _run(*args)
    assert first.exit_code == 0, first.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    failed = [x for x in lines if x["status"] == "failed"]
    assert 0 < len(failed) < len(TICKETS)
    # A line the provider failed was not billed: $0, not "unknown" (which made the whole run's
    # spend "cost unknown" although every answer was priced).
    assert all(x["cost_usd"] == 0.0 for x in failed)
    assert "cost unknown" not in first.output and "$" in first.output

    # The same command again sends the failed items (only them) in a new batch; it used to
    # return the same failures for ever (and --restart is refused with --deferred).
    second = _run(*args)
    assert second.exit_code == 0, second.output
    assert _batches(mock).created == 2
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert {x["id"]: x["output"] for x in lines} == EXPECTED and {x["status"] for x in lines} == {"ok"}
    assert sorted(x["id"] for x in lines if x["calls"] == 2) == sorted(x["id"] for x in failed)
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        n, spend = db.execute("SELECT COUNT(*), SUM(cost_usd) FROM requests WHERE batch").fetchone()
    assert n == len(TICKETS)  # one row per answered item: nothing paid twice
    assert sum(x["cost_usd"] for x in lines) == pytest.approx(spend)


CODE_PROMPT = (
    "You are the support assistant of Acme Widgets Incorporated. Acme Widgets Incorporated sells widgets. "
    "Acme Widgets Incorporated ships worldwide. Questions about Acme Widgets Incorporated go to you. "
    "Acme Widgets Incorporated never shares data. Acme Widgets Incorporated answers in English. "
    "Acme Widgets Incorporated values honesty.\n\n"
    "Reply with JSON only, exactly like:\n```json\n{\"brand\": \"Acme Widgets Incorporated\", \"answer\": \"...\"}\n```\n"
    "Sign every reply as `Acme Widgets Incorporated`."
)


def test_dictionary_never_rewrites_code_the_model_must_copy(tmp_path: Path) -> None:
    with run_in_thread(create_mock(MockConfig.from_dict({}))) as mock:
        reset(mock)
        cfg = {"providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-test-upstream-1234"}},
               "models": {"chat": {"provider": "mock", "price": {"input": 1.0, "output": 4.0}}},
               "ledger": {"path": str(tmp_path / "ledger.db")},
               "compression": {"routes": {"chat": {"compaction": True}},
                               "store": {"path": str(tmp_path / "compress.db")},
                               "dictionary": {"Acme Widgets Incorporated": "AWI"}}}
        with serving(cfg) as (_gw, client):
            raw = client.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "system", "content": CODE_PROMPT},
                                        {"role": "user", "content": "Where is my order?"}])
            assert int(raw.headers["x-thrifty-compressed-tokens"]) > 0
        system = sent(mock, "chat")[-1]["messages"][0]["content"]
    # The prose is shortened, with its legend...
    assert system.startswith("[AWI = Acme Widgets Incorporated]\n") and "sells widgets" in system
    assert "AWI sells widgets" in system
    # ...but the JSON example and the signature the model must reproduce are as the client wrote them.
    assert '{"brand": "Acme Widgets Incorporated", "answer": "..."}' in system
    assert "`Acme Widgets Incorporated`" in system


async def test_answers_collected_while_the_gateway_closes_keep_their_ledger_rows(tmp_path: Path) -> None:
    """Ctrl-C during a collection: the CLI closes the gateway (and its ledger writer) while the
    thread recording the answers runs on. Each answer's row must be in the ledger before its item
    counts as answered; the rows used to be dropped ("the ledger was closed") for items already
    marked ok, so that spend was never recorded, by this run or any later one."""
    cfg = {"models": {"cheap": {"answers": RULES}}, "batch": {"completion_s": 0.05}}
    with run_in_thread(create_mock(MockConfig.from_dict(cfg))) as mock:
        gw = Gateway.from_config({
            "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-test-upstream-1234"}},
            "models": {"cheap": {"provider": "mock", "price": {"input": 0.5, "output": 2.0}}},
            "ledger": {"path": str(tmp_path / "ledger.db")},
            "batching": {"deferred": {"poll_interval_s": 0.05}}})
        runner = DeferredRunner(gw)
        job = await runner.submit(TICKETS, task=TASK, model="cheap", labels=["billing", "bug", "other"])
        assert job.status == "submitted"
        await gw.aclose()  # what Ctrl-C does while the answers are being recorded
        job = await runner.wait(job.job_id, 0.05)
        results = runner.results(job.job_id)
        await runner.aclose()
    assert job.status == "finished" and {r.status for r in results} == {"ok"}
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        n, spend = db.execute("SELECT COUNT(*), SUM(cost_usd) FROM requests WHERE batch").fetchone()
    assert n == len(TICKETS) and spend == pytest.approx(sum(r.cost_usd or 0.0 for r in results))
