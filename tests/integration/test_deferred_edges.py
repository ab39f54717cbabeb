"""`thrifty batch run --deferred` (provider Batch API jobs): what a job's own records say it cost,
and how many tries it counted, when lines fail or expire, when the process is killed or crashes
at an awkward step, and when the model's price changes with the hour. Over real HTTP against
the mock upstream's files/batches endpoints; the job's records are read from the ledger database
and checked against the ledger's own rows."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from fixtures.batch_jobs import (
    ITEMS,
    LABELS,
    RULES,
    TASK,
    Crash,
    adopt_after_restart,
    batches,
    config,
    select,
)
from fixtures.processes import thrifty_cmd
from thrifty.batching.collector import GATEWAY_TASK, Collector
from thrifty.batching.deferred import DeferredRunner, run_deferred
from thrifty.batching.items import Item
from thrifty.batching.jobs import JobStore
from thrifty.catalog import lookup_genai_price
from thrifty.cost import BATCH_DISCOUNT, call_cost, priced_at
from thrifty.errors import UpstreamError
from thrifty.gateway import Gateway
from thrifty.ledger.report import batch_savings
from thrifty.ledger.store import SQLStore
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.types import Usage

# Items without "love" get an answer outside the labels: an invalid answer, billed all the same.
HALF_INVALID = [{"pattern": "love", "answer": "positive"}, {"pattern": ".", "answer": "banana"}]


def start(batch: dict[str, Any] | None = None, answers: list[dict[str, str]] | None = None,
          model: str = "good") -> RunningServer:
    cfg = {"batch": batch or {}, "models": {model: {"answers": answers or RULES}}}
    return run_in_thread(create_mock(MockConfig.from_dict(cfg)))


def job_items(tmp: Path, dsn: str | None = None) -> list[tuple[int, str, int, int, int, float | None]]:
    """``(seq, status, tries, prompt_tokens, completion_tokens, cost_usd)`` as the job keeps them."""
    return select(tmp, "SELECT seq, status, tries, prompt_tokens, completion_tokens, cost_usd"
                       " FROM batch_job_items ORDER BY seq", dsn)  # type: ignore[return-value]


def ledger_by_item(tmp: Path, dsn: str | None = None) -> dict[int, tuple[int, int, int, float]]:
    """Per item seq: ``(answers, prompt_tokens, completion_tokens, cost_usd)`` in the ledger."""
    rows = select(tmp, "SELECT request_id, prompt_tokens, completion_tokens, cost_usd FROM requests WHERE batch", dsn)
    out: dict[int, tuple[int, int, int, float]] = {}
    for request_id, pt, ct, cost in rows:
        seq = int(str(request_id).rsplit("-", 2)[1])  # bj_<hash>-<seq>-r<round>
        n, p, c, usd = out.get(seq, (0, 0, 0, 0.0))
        out[seq] = (n + 1, p + pt, c + ct, usd + cost)
    return out


async def test_unanswered_items_cost_zero_in_the_jobs_own_records(tmp_path: Path) -> None:
    """An item whose lines all expired (or failed) was never billed: the job's record of it says
    $0, not NULL ("unknown"). The column started NULL and only an answer ever set it, so every
    such item stayed NULL in the job's records; the results patched it to $0 on the way out."""
    with start({"expire": True}) as mock:
        gw = Gateway.from_config(config(mock, tmp_path, max_resubmits=0))
        try:
            job, results = await run_deferred(gw, ITEMS, task=TASK, model="good", labels=LABELS, interval=0.05)
        finally:
            await gw.aclose()
    assert job.status == "finished"
    rows = job_items(tmp_path)
    failed = [r for r in rows if r[1] == "failed"]
    answered = [r for r in rows if r[1] == "ok"]
    assert len(failed) == len(answered) == 3  # the mock's expired batch answers its first half
    assert all(r[5] == 0.0 and r[3] == r[4] == 0 for r in failed)
    assert all(r[5] == pytest.approx((r[3] * 0.5 + r[4] * 2.0) / 1e6) for r in answered)  # the batch price
    spent = sum(usd for _, _, _, usd in ledger_by_item(tmp_path).values())
    assert sum(r[5] or 0.0 for r in rows) == pytest.approx(spent) and spent > 0
    assert [r.cost_usd for r in results] == [r[5] for r in rows]


async def test_a_refused_batch_create_counts_no_try(tmp_path: Path) -> None:
    """The provider refuses the create (a 503 after the file was uploaded): no batch ran, so no
    try is used. It was counted before the create, so the item had one try fewer than it used:
    here its line failing in the one batch that did run left it failed, never resubmitted."""
    with start({"create_fail": 1, "line_fail_rate": 1.0, "affect_batches": 1}) as mock:
        cfg = config(mock, tmp_path, max_resubmits=1)
        gw = Gateway.from_config(cfg)
        runner = DeferredRunner(gw)
        try:
            with pytest.raises(UpstreamError):
                await runner.submit(ITEMS, task=TASK, model="good", labels=LABELS)
        finally:
            await runner.aclose()
            await gw.aclose()
        assert batches(mock).created == 0 and batches(mock).uploads == 1
        assert {r[2] for r in job_items(tmp_path)} == {0}

        gw = Gateway.from_config(cfg)  # running it again: the same job, its file reused
        try:
            job, results = await run_deferred(gw, ITEMS, task=TASK, model="good", labels=LABELS, interval=0.05)
        finally:
            await gw.aclose()
        assert batches(mock).created == 2 and batches(mock).uploads == 2
    assert job.status == "finished" and job.round == 2
    assert all(r.status == "ok" and r.calls == 2 for r in results)


@pytest.fixture
def stalled_mock() -> Iterator[RunningServer]:
    """The first batch create hangs until its client is gone (then nothing is created); the
    first batch that runs fails every line, the next ones answer."""
    with start({"create_fail": 1, "create_stall": True, "line_fail_rate": 1.0, "affect_batches": 1}) as server:
        yield server


def test_a_run_killed_while_creating_its_batch_keeps_every_try(stalled_mock: RunningServer, tmp_path: Path) -> None:
    """kill -9 of `thrifty batch run --deferred` while it waits for the provider to create its
    batch: the try it was about to use is not used. Running the command again sends the batch
    once, counts one try, and still has the resubmission it is entitled to."""
    cfg = tmp_path / "thrifty.yaml"
    cfg.write_text(yaml.safe_dump(config(stalled_mock, tmp_path, max_resubmits=1)))
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(it) + "\n" for it in ITEMS))
    args = ["batch", "run", str(items), "--task", TASK, "--model", "good", "--labels", ",".join(LABELS),
            "--deferred", "--config", str(cfg), "--no-progress", "--poll-interval", "0.05"]
    api = batches(stalled_mock)
    proc = subprocess.Popen(thrifty_cmd(*args, "--out", str(tmp_path / "first.jsonl")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while api.create_calls == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert api.create_calls == 1, proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
    finally:
        proc.kill()  # SIGKILL: no cleanup of any kind
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()
    assert api.created == 0
    assert {r[2] for r in job_items(tmp_path)} == {0}  # no batch ran: no try used

    out = tmp_path / "out.jsonl"
    again = subprocess.run(thrifty_cmd(*args, "--out", str(out)), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["status"] for x in lines] == ["ok"] * len(ITEMS)
    assert {r[2] for r in job_items(tmp_path)} == {2}  # the failed batch and its resubmission
    assert api.created == 2 and api.uploads == 2


async def run_until_crash(cfg: dict[str, Any]) -> None:
    """One ``--deferred`` run that the patched step crashes (``Crash``), its gateway closed."""
    gw = Gateway.from_config(cfg)
    try:
        with pytest.raises(Crash):
            await run_deferred(gw, ITEMS, task=TASK, model="good", labels=LABELS, interval=0.05)
    finally:
        await gw.aclose()


async def test_a_crash_mid_collection_counts_an_invalid_answer_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     ledger_dsn: str | None) -> None:
    """The process dies right after recording an invalid answer (the item stays pending for a
    resubmission), before the job moves to its next round: the next run collects the same batch
    again. The ledger keeps that answer once (its request id); the job's own token and cost
    totals added it a second time."""
    with start(answers=HALF_INVALID) as mock:
        cfg = config(mock, tmp_path, max_resubmits=1)
        cfg["ledger"]["dsn"] = ledger_dsn
        real_update_item = JobStore.update_item
        crashed: list[int] = []

        def update_item(self: JobStore, job_id: str, seq: int, **fields: Any) -> None:
            real_update_item(self, job_id, seq, **fields)
            if "prompt_tokens" in fields and "status" not in fields and not crashed:  # an invalid answer
                crashed.append(seq)
                raise Crash

        monkeypatch.setattr(JobStore, "update_item", update_item)
        await run_until_crash(cfg)
        assert crashed and batches(mock).created == 1

        gw = Gateway.from_config(cfg)  # the restart: collects the first batch again
        try:
            job, results = await run_deferred(gw, ITEMS, task=TASK, model="good", labels=LABELS, interval=0.05)
        finally:
            await gw.aclose()
    assert job.status == "finished" and job.round == 2
    invalid = [r for r in results if r.status == "failed"]
    assert len(invalid) == 3 and all(r.error == "invalid answer" and r.calls == 2 for r in invalid)
    ledger = ledger_by_item(tmp_path, ledger_dsn)
    assert ledger[crashed[0]][0] == 2  # one answer per round, the re-collected one not again
    for seq, _, _, prompt, completion, cost in job_items(tmp_path, ledger_dsn):
        _, ledger_prompt, ledger_completion, ledger_cost = ledger[seq]
        assert (prompt, completion) == (ledger_prompt, ledger_completion)
        assert cost == pytest.approx(ledger_cost)


def _hour(day: datetime, hour: int) -> datetime:
    return day.replace(hour=hour, minute=30, second=0, microsecond=0)


@pytest.mark.parametrize("hour", [2, 14])  # DeepSeek's peak hours (01-04 UTC), then off-peak
async def test_batch_answers_are_priced_at_the_hour_they_were_answered(tmp_path: Path, hour: int) -> None:
    """A price that varies with the hour (genai-prices' DeepSeek: peak hours cost twice the
    off-peak ones) is read, for each answer, at the time the provider answered it, at the Batch
    API discount: not at the figure read when the run started (its hour, whatever the answers')."""
    price = lookup_genai_price("deepseek-flash", "deepseek")
    assert price is not None and price.genai_ref is not None
    yesterday = datetime.now(UTC) - timedelta(days=1)
    peak, off_peak = _hour(yesterday, 2), _hour(yesterday, 14)
    million = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    with priced_at(peak):
        at_peak = call_cost(million, price).usd
    with priced_at(off_peak):
        at_off_peak = call_cost(million, price).usd
    assert at_peak is not None and at_off_peak is not None and at_peak > at_off_peak  # the premise
    answered = _hour(yesterday, hour)

    with start({"answered_at": answered.timestamp()}, model="deepseek-flash") as mock:
        cfg = config(mock, tmp_path)
        cfg["providers"]["mock"]["price_provider"] = "deepseek"
        cfg["models"] = {"good": {"provider": "mock", "upstream_model": "deepseek-flash"}}
        gw = Gateway.from_config(cfg)
        try:
            job, results = await run_deferred(gw, ITEMS, task=TASK, model="good", labels=LABELS, interval=0.05)
        finally:
            await gw.aclose()
    assert job.status == "finished" and all(r.status == "ok" for r in results)
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        rows = db.execute("SELECT prompt_tokens, completion_tokens, cost_usd, cost_source, ts FROM attempts"
                          " WHERE batch").fetchall()
    assert len(rows) == len(ITEMS)
    for prompt, completion, cost, source, ts in rows:
        with priced_at(answered):
            normal = call_cost(Usage(prompt_tokens=prompt, completion_tokens=completion), price).usd
        assert normal is not None and source == "computed"
        assert cost == pytest.approx(normal * BATCH_DISCOUNT)
        assert ts == pytest.approx(answered.timestamp())  # the report reads the normal price at this hour
    assert sum(r.cost_usd or 0.0 for r in results) == pytest.approx(sum(r[2] for r in rows))


async def test_a_crash_between_the_ledger_row_and_the_item_counts_the_answer_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ledger_dsn: str | None) -> None:
    """The process dies right after an answer's ledger row is written, before the job's item
    records it: the next run collects it again, finds its row already there and still counts it,
    once, in the job's own totals (only a new row's answer is added to the stored totals)."""
    with start() as mock:
        cfg = config(mock, tmp_path)
        cfg["ledger"]["dsn"] = ledger_dsn
        real_write = SQLStore.write
        crashed: list[str] = []

        def write(self: SQLStore, requests: Any, attempts: Any) -> int:
            new = real_write(self, requests, attempts)
            if not crashed and any(str(r.request_id).startswith("bj_") for r in requests):
                crashed.append(str(requests[0].request_id))
                raise Crash
            return new

        monkeypatch.setattr(SQLStore, "write", write)
        await run_until_crash(cfg)
        assert crashed and {r[3] for r in job_items(tmp_path, ledger_dsn)} == {0}  # no item recorded its answer

        gw = Gateway.from_config(cfg)
        try:
            job, results = await run_deferred(gw, ITEMS, task=TASK, model="good", labels=LABELS, interval=0.05)
        finally:
            await gw.aclose()
        assert batches(mock).created == 1
    assert job.status == "finished" and all(r.status == "ok" for r in results)
    ledger = ledger_by_item(tmp_path, ledger_dsn)
    for seq, _, _, prompt, completion, cost in job_items(tmp_path, ledger_dsn):
        answers, ledger_prompt, ledger_completion, ledger_cost = ledger[seq]
        assert answers == 1 and (prompt, completion) == (ledger_prompt, ledger_completion) and prompt > 0
        assert cost == pytest.approx(ledger_cost)


async def test_an_adopted_jobs_answers_are_dated_and_priced_when_they_were_answered(tmp_path: Path) -> None:
    """A gateway dies after sending its deferrable requests' batch; restarted, it adopts the job
    and ledgers the answers nobody waits for. They were dated at the job's creation and settled
    at the time of adoption, so the report re-priced their normal price (the saving) and the
    baseline at another hour than the one they were answered and billed at. Now an adopted
    answer is dated and priced at its answer's time, as the runner's (the test above)."""
    price = lookup_genai_price("deepseek-flash", "deepseek")
    assert price is not None and price.genai_ref is not None
    yesterday = datetime.now(UTC) - timedelta(days=1)
    million = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    prices = {}
    for hour in (2, 14):
        with priced_at(_hour(yesterday, hour)):
            prices[hour] = call_cost(million, price).usd
    assert prices[2] is not None and prices[14] is not None and prices[14] < prices[2]  # the premise
    answered = _hour(yesterday, 14)  # off-peak

    with start({"answered_at": answered.timestamp()}, model="deepseek-flash") as mock:
        cfg = config(mock, tmp_path)
        cfg["providers"]["mock"]["price_provider"] = "deepseek"
        cfg["models"] = {"good": {"provider": "mock", "upstream_model": "deepseek-flash"}}
        request = {"model": "deepseek-flash", "messages": [{"role": "user", "content": "I love it"}]}
        gw = Gateway.from_config(cfg)
        try:  # the first gateway sends the batch, then dies
            first = Collector(gw, gw.config.batching.deferred)
            await asyncio.to_thread(first.jobs.create, "bj_adopted", "good", "mock", GATEWAY_TASK, None,
                                    [Item("req-adopted", json.dumps(request))])
            assert (await first.runner.poll("bj_adopted")).status == "submitted"
            first.jobs.store.execute("UPDATE batch_jobs SET updated = 0 WHERE job_id = 'bj_adopted'")
            for api in first.runner.take_apis():
                await api.aclose()
        finally:
            await gw.aclose()

        savings = await adopt_after_restart(
            cfg, "bj_adopted", lambda gw: batch_savings(gw.ledger.store, gw.catalog) if gw.ledger is not None else None)
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        (prompt, completion, cost, ts), = db.execute(
            "SELECT prompt_tokens, completion_tokens, cost_usd, ts FROM attempts WHERE request_id = 'req-adopted'")
        (baseline,), = db.execute("SELECT baseline_cost_usd FROM requests WHERE request_id = 'req-adopted'")
    with priced_at(answered):
        normal = call_cost(Usage(prompt_tokens=prompt, completion_tokens=completion), price).usd
    assert normal is not None and prompt > 0
    assert cost == pytest.approx(normal * BATCH_DISCOUNT)  # as the runner's answers
    assert ts == pytest.approx(answered.timestamp())  # was the job's creation: today, not yesterday 14:30
    assert baseline == pytest.approx(normal)  # the baseline (this model) read at the same hour
    assert savings is not None and savings.requests == 1
    assert savings.full_price_usd == pytest.approx(normal) and savings.saved_usd == pytest.approx(normal - cost)


def test_a_waiting_clients_batch_answer_is_dated_and_priced_when_it_was_answered(tmp_path: Path) -> None:
    """A deferrable request whose client waits for its batch answer (pipeline/deferred_stage.py)
    is dated and priced at the answer's time too, not at the request's start."""
    price = lookup_genai_price("deepseek-flash", "deepseek")
    assert price is not None and price.genai_ref is not None
    answered = _hour(datetime.now(UTC) - timedelta(days=1), 14)
    with start({"answered_at": answered.timestamp()}, model="deepseek-flash") as mock:
        cfg = config(mock, tmp_path)
        cfg["providers"]["mock"]["price_provider"] = "deepseek"
        cfg["models"] = {"good": {"provider": "mock", "upstream_model": "deepseek-flash"}}
        cfg["batching"]["deferred"].update({"enabled": True, "window_s": 0.2})
        gw = Gateway.from_config(cfg)
        try:
            with run_in_thread(gw.app()) as server:
                client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client", max_retries=0, timeout=30)
                raw = client.chat.completions.with_raw_response.create(
                    model="good", messages=[{"role": "user", "content": "I love it"}],
                    extra_body={"thrifty": {"deferrable": True}})
                assert raw.headers["x-thrifty-batch"] == "batch"
                request_id = raw.headers["x-thrifty-request-id"]
            gw.flush()
        finally:
            gw.close()
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        (prompt, completion, cost, ts), = db.execute(
            "SELECT prompt_tokens, completion_tokens, cost_usd, ts FROM attempts WHERE request_id = ?", (request_id,))
    with priced_at(answered):
        normal = call_cost(Usage(prompt_tokens=prompt, completion_tokens=completion), price).usd
    assert normal is not None and prompt > 0
    assert ts == pytest.approx(answered.timestamp())  # was the request's start: today
    assert cost == pytest.approx(normal * BATCH_DISCOUNT)
