"""A provider batch created just before a crash is adopted by the next run, not paid twice.

`thrifty batch run --deferred` uploads a round's file (its id is stored), creates the batch,
then records the batch id. A process killed between the create and that record left the job
`created` with its file id, and the next run created a second batch for the same lines: paid
twice, the first batch's answers never collected. Over real HTTP against the mock upstream's
files/batches endpoints (its `GET /v1/batches` list too); the crash is a real SIGKILL of the
command at that step, or the store's `submitted` raising once in process."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from fixtures.batch_jobs import (
    ITEMS,
    KEY,
    LABELS,
    RULES,
    TASK,
    Crash,
    adopt_after_restart,
    batches,
    config,
    deferred_cli,
    run_cli,
    select,
)
from thrifty.batching.deferred import DeferredRunner, run_deferred
from thrifty.batching.jobs import JobStore
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread


def start(batch: dict[str, Any] | None = None, list_endpoint: bool = True) -> RunningServer:
    """The mock upstream; without ``list_endpoint`` it has no ``GET /v1/batches`` (a 405, as a
    provider that only knows ``POST /v1/batches`` answers)."""
    app = create_mock(MockConfig.from_dict({"batch": batch or {}, "models": {"good": {"answers": RULES}}}))
    if not list_endpoint:
        app.router.routes[:] = [r for r in app.router.routes
                                if not (getattr(r, "path", "") == "/v1/batches" and "GET" in (r.methods or ()))]
    return run_in_thread(app)


def ledger_ids(tmp: Path, dsn: str | None = None) -> list[str]:
    """The ledger's batch request ids (``bj_<hash>-<seq>-r<round>``), one per answer billed."""
    return sorted(str(r[0]) for r in select(tmp, "SELECT request_id FROM requests WHERE batch", dsn))


def job_row(tmp: Path, dsn: str | None = None) -> tuple[Any, ...]:
    """``(status, round, input_file_id, batch_id)`` of the one job."""
    rows = select(tmp, "SELECT status, round, input_file_id, batch_id FROM batch_jobs", dsn)
    assert len(rows) == 1
    return tuple(rows[0])


async def crash_after_create(cfg: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """One ``--deferred`` run that dies right after the provider created its batch: the store's
    ``submitted`` (the batch id's record) raises once, as a SIGKILL there would stop it."""
    calls: list[str] = []

    def submitted(self: JobStore, job_id: str, round_no: int, batch_id: str, provider_status: str) -> bool:
        calls.append(batch_id)
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(JobStore, "submitted", submitted)
        gw = Gateway.from_config(cfg)
        try:
            with pytest.raises(Crash):
                await run_deferred(gw, ITEMS, task=TASK, model="good", labels=LABELS, interval=0.05)
        finally:
            await gw.aclose()
    assert len(calls) == 1


async def rerun(cfg: dict[str, Any]) -> tuple[Any, list[Any]]:
    gw = Gateway.from_config(cfg)
    try:
        return await run_deferred(gw, ITEMS, task=TASK, model="good", labels=LABELS, interval=0.05)
    finally:
        await gw.aclose()


async def test_the_batch_a_crashed_run_created_is_adopted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          ledger_dsn: str | None) -> None:
    """The rerun finds the crashed run's batch (its file, its job and round in the metadata) and
    carries on with it: one batch at the provider, its answers collected, each item's try
    counted once, one ledger row per item."""
    with start() as mock:
        cfg = config(mock, tmp_path, dsn=ledger_dsn)
        await crash_after_create(cfg, monkeypatch)
        api = batches(mock)
        assert api.created == 1
        status, _, file_id, batch_id = job_row(tmp_path, ledger_dsn)
        assert (status, batch_id) == ("created", None) and file_id  # the crash left the file id only
        orphan = next(iter(api.batches))

        job, results = await rerun(cfg)
        assert api.created == 1 and api.create_calls == 1 and api.uploads == 1  # nothing sent twice
        assert api.lists >= 1
    assert job.status == "finished" and job.round == 1 and job.batch_id == orphan
    assert [r.status for r in results] == ["ok"] * len(ITEMS)
    assert all(r.calls == 1 for r in results)  # the adopted batch is one try, counted once
    ids = ledger_ids(tmp_path, ledger_dsn)
    assert len(ids) == len(ITEMS) and all(i.endswith("-r1") for i in ids)


def test_a_real_sigkill_after_the_create_then_the_same_command(tmp_path: Path) -> None:
    """The user's view: `thrifty batch run --deferred` killed (SIGKILL, no cleanup) just after
    the provider created its batch, before the batch id was stored; the same command again
    reports every item answered, from that one batch."""
    with start() as mock:
        args = deferred_cli(config(mock, tmp_path), tmp_path)
        # The process kills itself where a crash hurts: the batch exists, its id is not stored.
        killer = ("import os, signal\n"
                  "from thrifty.batching.jobs import JobStore\n"
                  "JobStore.submitted = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n")
        first = run_cli(args, tmp_path / "first.jsonl", killer)
        assert first.returncode == -signal.SIGKILL, first.stderr
        api = batches(mock)
        assert api.created == 1

        out = tmp_path / "out.jsonl"
        again = run_cli(args, out)
        assert again.returncode == 0, again.stderr
        assert api.created == 1 and api.uploads == 1
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["status"] for x in lines] == ["ok"] * len(ITEMS)
    assert len(ledger_ids(tmp_path)) == len(ITEMS)


async def test_the_normal_path_lists_nothing(tmp_path: Path) -> None:
    """A round sent for the first time has just uploaded its file: no batch can exist for it, so
    no list call is added to the normal path."""
    with start() as mock:
        job, results = await rerun(config(mock, tmp_path))
        assert batches(mock).lists == 0 and batches(mock).created == 1
    assert job.status == "finished" and all(r.status == "ok" for r in results)


async def test_a_provider_without_a_batch_list_still_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A provider with no `GET /batches` (405 here): one log line, then a batch is created as
    before (the crashed run's batch cannot be found), and the job finishes."""
    with start(list_endpoint=False) as mock:
        cfg = config(mock, tmp_path)
        await crash_after_create(cfg, monkeypatch)
        with caplog.at_level(logging.WARNING, logger="thrifty.batching"):
            job, results = await rerun(cfg)
        assert batches(mock).created == 2
    assert job.status == "finished" and [r.status for r in results] == ["ok"] * len(ITEMS)
    assert all(r.calls == 1 for r in results)
    said = [r.getMessage() for r in caplog.records if "list" in r.getMessage()]
    assert len(said) == 1 and "405" in said[0] and "\n" not in said[0], said
    assert len(ledger_ids(tmp_path)) == len(ITEMS)


async def test_a_failed_batch_is_not_adopted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The crashed run's batch failed at the provider (validation, an enqueued-token limit):
    nothing was answered or billed, as for a refused create. The rerun creates a new batch
    from the same file and counts only that one as a try."""
    with start() as mock:
        cfg = config(mock, tmp_path, max_resubmits=0)
        await crash_after_create(cfg, monkeypatch)
        api = batches(mock)
        orphan = next(iter(api.batches.values()))
        orphan.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": [
            {"code": "token_limit_exceeded", "message": "Enqueued token limit reached.", "line": None}]})
        job, results = await rerun(cfg)
        assert api.lists == 1  # it was found, and left alone
        assert api.created == 2 and api.uploads == 1  # the same file, a second batch
    assert job.status == "finished" and job.batch_id != orphan["id"]
    assert [r.status for r in results] == ["ok"] * len(ITEMS) and all(r.calls == 1 for r in results)


async def test_an_expired_batch_is_adopted_for_its_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The crashed run's batch expired with half its lines answered (billed): the rerun adopts
    it, collects those answers, and sends only the rest in a second round."""
    with start({"expire": True, "affect_batches": 1}) as mock:
        cfg = config(mock, tmp_path, max_resubmits=1)
        await crash_after_create(cfg, monkeypatch)
        job, results = await rerun(cfg)
        api = batches(mock)
        assert api.created == 2
        second = list(api.batches.values())[1]
        assert second["request_counts"]["total"] == len(ITEMS) // 2  # only the unanswered half
    assert job.status == "finished" and job.round == 2
    assert [r.status for r in results] == ["ok"] * len(ITEMS)
    assert sorted(r.calls for r in results) == [1, 1, 1, 2, 2, 2]
    assert len(ledger_ids(tmp_path)) == len(ITEMS)


async def test_a_batch_cancelled_at_the_provider_is_adopted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone cancelled the crashed run's batch at the provider (its dashboard): the rerun
    adopts it like any batch cancelled while it runs: what it answered is kept, the rest is
    reported cancelled, and nothing is sent again until the user runs the command again."""
    with start({"completion_s": 30}) as mock:
        cfg = config(mock, tmp_path)
        await crash_after_create(cfg, monkeypatch)
        api = batches(mock)
        orphan = next(iter(api.batches))
        client = openai.OpenAI(base_url=mock.url + "/v1", api_key=KEY)
        assert client.batches.cancel(orphan).status == "cancelled"
        job, results = await rerun(cfg)
        assert api.created == 1
    assert job.status == "cancelled" and job.batch_id == orphan
    assert all(r.status == "failed" and r.calls == 1 for r in results)


async def test_cancel_of_a_crashed_job_cancels_its_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`thrifty batch cancel` of the job a crash left `created`: the batch the crashed run
    created is found and cancelled at the provider too (it was left running, billed)."""
    with start({"completion_s": 30}) as mock:
        cfg = config(mock, tmp_path)
        await crash_after_create(cfg, monkeypatch)
        api = batches(mock)
        orphan = next(iter(api.batches.values()))
        gw = Gateway.from_config(cfg)
        runner = DeferredRunner(gw)
        try:
            job_id = str(select(tmp_path, "SELECT job_id FROM batch_jobs")[0][0])
            job = await runner.cancel(job_id)
        finally:
            await runner.aclose()
            await gw.aclose()
        assert orphan["status"] == "cancelled"
    assert job.status == "cancelled" and job.batch_id == orphan["id"]


async def test_the_search_pages_through_newer_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Other work created 150 batches after the crash: the crashed run's batch is on the second
    page of the list (cursor pagination, `after`), and is still found."""
    with start() as mock:
        cfg = config(mock, tmp_path)
        await crash_after_create(cfg, monkeypatch)
        api = batches(mock)
        orphan = next(iter(api.batches))
        client = openai.OpenAI(base_url=mock.url + "/v1", api_key=KEY)
        file_id = client.files.create(file=("other.jsonl", b""), purpose="batch").id
        for _ in range(150):
            client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
        job, results = await rerun(cfg)
        assert api.created == 151 and job.batch_id == orphan and api.lists == 2
    assert all(r.status == "ok" and r.calls == 1 for r in results)


async def test_the_search_stops_at_batches_older_than_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An account with a long history: the search stops at the first page reaching batches
    created before the job (a batch of the job cannot be older), not listing the account whole."""
    with start() as mock:
        cfg = config(mock, tmp_path)
        client = openai.OpenAI(base_url=mock.url + "/v1", api_key=KEY)
        file_id = client.files.create(file=("old.jsonl", b""), purpose="batch").id
        api = batches(mock)
        for _ in range(500):  # last week's batches
            old = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                        completion_window="24h")
            api.batches[old.id]["created_at"] -= 7 * 86400
        await crash_after_create(cfg, monkeypatch)
        api.batches.pop(list(api.batches)[-1])  # the provider lost it: the search finds nothing
        _, results = await rerun(cfg)
        assert api.lists == 1 and api.created == 502
    assert all(r.status == "ok" and r.calls == 1 for r in results)


def test_the_mock_list_is_what_the_openai_sdk_pages(tmp_path: Path) -> None:
    """`GET /v1/batches` in OpenAI's list shape, newest first, paged by `limit`/`after`: the
    real SDK's auto-pagination walks it; a bad `limit` is OpenAI's 400."""
    with start() as mock:
        client = openai.OpenAI(base_url=mock.url + "/v1", api_key=KEY)
        file_id = client.files.create(file=("x.jsonl", b""), purpose="batch").id
        made = [client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                      completion_window="24h", metadata={"n": str(i)}).id for i in range(5)]
        page = client.batches.list(limit=2)
        assert [b.id for b in page.data] == made[::-1][:2] and page.has_more
        assert [b.id for b in client.batches.list(limit=2)] == made[::-1]  # auto-paginated
        assert client.batches.list(limit=2, after=made[1]).has_more is False
        with pytest.raises(openai.BadRequestError):
            client.batches.list(limit=0)
        assert batches(mock).lists == 5


async def test_a_gateway_job_whose_batch_was_created_before_a_stop_is_polled_not_abandoned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway's own deferrable requests: a gateway that stopped between the provider
    creating the batch and recording it left the job `created` with its file id. The restarted
    collector used to abandon it (the batch ran on, billed, its answers never in the ledger); it
    now finds that batch, polls it to its end and writes each answer to the ledger once."""
    from thrifty.batching.collector import GATEWAY_TASK, Collector
    from thrifty.batching.items import Item

    request = {"model": "good", "messages": [{"role": "user", "content": "I love it"}]}
    with start() as mock:
        cfg = config(mock, tmp_path)
        gw = Gateway.from_config(cfg)
        try:  # the first gateway uploads and creates the batch, then stops before recording it
            first = Collector(gw, gw.config.batching.deferred)
            await asyncio.to_thread(first.jobs.create, "bj_stopped", "good", "mock", GATEWAY_TASK, None,
                                    [Item("req-stopped", json.dumps(request))])
            with monkeypatch.context() as patch:
                patch.setattr(JobStore, "submitted", lambda *a, **k: (_ for _ in ()).throw(Crash()))
                with pytest.raises(Crash):
                    await first.runner.poll("bj_stopped")
            first.jobs.store.execute("UPDATE batch_jobs SET updated = 0 WHERE job_id = 'bj_stopped'")
            for api in first.runner.take_apis():
                await api.aclose()
        finally:
            await gw.aclose()
        assert batches(mock).created == 1
        assert job_row(tmp_path)[0] == "created"

        await adopt_after_restart(cfg, "bj_stopped")
        assert batches(mock).created == 1  # nothing created again
    status, _, _, batch_id = job_row(tmp_path)
    assert status == "finished" and batch_id is not None
    rows = select(tmp_path, "SELECT request_id FROM requests WHERE request_id = 'req-stopped'")
    assert len(rows) == 1  # the billed answer reached the ledger, once


async def test_a_list_that_fails_for_a_moment_creates_no_second_batch(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider's batch list answers 503 (or times out) just when the rerun looks for the
    crashed run's batch: creating one then could pay the lines twice, so the run fails this poll
    (``wait`` polls again), and the next run adopts the batch. The gateway's collector leaves such
    a job for a later pass instead of abandoning it with its batch running."""
    from thrifty.batching.collector import GATEWAY_TASK, Collector
    from thrifty.batching.items import Item
    from thrifty.errors import UpstreamError
    from thrifty.providers.batch_api import OpenAIBatchAPI

    async def unavailable(self: OpenAIBatchAPI, limit: int, after: str | None = None) -> dict[str, Any]:
        raise UpstreamError("mock: upstream returned HTTP 503", status=503, retryable=True)

    with start() as mock:
        cfg = config(mock, tmp_path)
        await crash_after_create(cfg, monkeypatch)
        with monkeypatch.context() as patch:
            patch.setattr(OpenAIBatchAPI, "list_batches", unavailable)
            gw = Gateway.from_config(cfg)
            try:
                with pytest.raises(UpstreamError):
                    await run_deferred(gw, ITEMS, task=TASK, model="good", labels=LABELS, interval=0.05)
                collector = Collector(gw, gw.config.batching.deferred)
                await asyncio.to_thread(collector.jobs.create, "bj_gw", "good", "mock", GATEWAY_TASK, None,
                                        [Item("req-gw", json.dumps({"model": "good", "messages": []}))])
                collector.jobs.store.execute("UPDATE batch_jobs SET updated = 0, input_file_id = 'file-gone' "
                                             "WHERE job_id = 'bj_gw'")
                assert await collector.adopt_orphans() == []  # not abandoned: left for a later pass
                assert collector.jobs.get("bj_gw").status == "created"
            finally:
                await gw.aclose()
        assert batches(mock).created == 1
        job, results = await rerun(cfg)
        assert batches(mock).created == 1
    assert job.status == "finished" and [r.status for r in results] == ["ok"] * len(ITEMS)
