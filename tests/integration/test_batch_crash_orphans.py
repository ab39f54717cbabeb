"""A crash between a provider upload and its record leaves no orphan file; a restart lists once.

`thrifty batch run --deferred` (and the gateway's deferrable requests) upload a round's JSONL
file, store its id, create the batch, store the batch id. A process killed between the upload
and the id's record left the file at the provider for good (the next run uploaded another):
storage against the account's quota, holding the items' data. And the gateway collector's
`adopt_orphans` read the provider's whole batch list once per stale job. Over real HTTP against
the mock upstream's files/batches endpoints; the crash is a real SIGKILL of the command at that
step, or a store call raising once in process (as the existing crash tests do)."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from fixtures.batch_jobs import ITEMS, KEY, LABELS, RULES, TASK, Crash, batches, deferred_cli, run_cli, select
from fixtures.batch_jobs import config as job_config
from thrifty.batching.collector import GATEWAY_TASK, BatchItemError, Collector
from thrifty.batching.deferred import DeferredRunner, run_deferred
from thrifty.batching.items import Item
from thrifty.batching.jobs import Job, JobStore
from thrifty.errors import UpstreamStatusError, UpstreamTimeoutError
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.batches import BatchAPI
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.providers.batch_api import OpenAIBatchAPI


def start(batch: dict[str, Any] | None = None) -> RunningServer:
    app = create_mock(MockConfig.from_dict({"batch": batch or {}, "models": {"good": {"answers": RULES}}}))
    return run_in_thread(app)


def config(mock: RunningServer, tmp: Path, **kw: Any) -> dict[str, Any]:
    """``job_config`` keeping a finished round's own files at the provider (``delete_files``):
    these tests compare the files a crash left with the ones the batches use."""
    cfg = job_config(mock, tmp, **kw)
    cfg["batching"]["deferred"]["delete_files"] = False
    return cfg


def input_files(api: BatchAPI) -> set[str]:
    """The provider's request files (purpose ``batch``), as its file list shows them."""
    return {i for i, f in api.files.items() if f["info"]["purpose"] == "batch"}


def used_files(api: BatchAPI) -> set[str]:
    return {str(b["input_file_id"]) for b in api.batches.values()}


def crash_when_file_id_stored(patch: pytest.MonkeyPatch) -> list[str]:
    """The store's write of an uploaded file's id raises (the process dies there): the provider
    has the file, thrifty never learns its id. The ids it was given, in order."""
    seen: list[str] = []
    real = JobStore.update

    def update(self: JobStore, job_id: str, **fields: Any) -> bool:
        if fields.get("input_file_id"):
            seen.append(str(fields["input_file_id"]))
            raise Crash
        return real(self, job_id, **fields)

    patch.setattr(JobStore, "update", update)
    return seen


async def crashed_after_upload(cfg: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A deferred run that dies after its upload, before the file's id is stored: the ids uploaded."""
    with monkeypatch.context() as patch:
        seen = crash_when_file_id_stored(patch)
        with pytest.raises(Crash):
            await deferred_run(cfg)
    return seen


async def deferred_run(cfg: dict[str, Any]) -> tuple[Any, list[Any]]:
    gw = Gateway.from_config(cfg)
    try:
        return await run_deferred(gw, ITEMS, task=TASK, model="good", labels=LABELS, interval=0.05)
    finally:
        await gw.aclose()


async def cancel_the_job(cfg: dict[str, Any], tmp_path: Path) -> Job:
    """`thrifty batch cancel` of the ledger's one job, from a fresh gateway (a new process)."""
    gw = Gateway.from_config(cfg)
    runner = DeferredRunner(gw)
    try:
        return await runner.cancel(str(select(tmp_path, "SELECT job_id FROM batch_jobs")[0][0]))
    finally:
        await runner.aclose()
        await gw.aclose()


async def test_an_upload_whose_id_was_never_stored_is_deleted_by_the_next_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after the upload, before its id is stored: the rerun finds that file by the name
    the job recorded before uploading, deletes it, and runs the job from a new upload. A file of
    the same job's name that this job never recorded (another ledger's, a user's) is left."""
    with start() as mock:
        cfg = config(mock, tmp_path)
        seen = await crashed_after_upload(cfg, monkeypatch)
        api = batches(mock)
        assert api.uploads == 1 and api.created == 0 and len(seen) == 1
        orphan = seen[0]
        assert select(tmp_path, "SELECT input_file_id FROM batch_jobs") == [(None,)]
        job_id = str(select(tmp_path, "SELECT job_id FROM batch_jobs")[0][0])
        client = openai.OpenAI(base_url=mock.url + "/v1", api_key=KEY)
        foreign = client.files.create(file=(f"{job_id}-r1.jsonl", b"{}\n"), purpose="batch").id

        job, results = await deferred_run(cfg)
        assert api.deleted == [orphan]
        assert input_files(api) == used_files(api) | {foreign}  # no orphan left, the stranger kept
        assert api.created == 1 and api.file_lists == 1
    assert job.status == "finished" and [r.status for r in results] == ["ok"] * len(ITEMS)


async def test_a_crash_after_the_create_is_adopted_and_the_earlier_orphan_deleted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """First run killed after its upload (id unstored), the second after the provider created the
    batch (its id unstored): the third adopts that batch (one batch, paid once, as before) and the
    first run's file is gone; the only files left are the batch's own."""
    with start() as mock:
        cfg = config(mock, tmp_path)
        seen = await crashed_after_upload(cfg, monkeypatch)
        with monkeypatch.context() as patch:
            patch.setattr(JobStore, "submitted", lambda *a, **k: (_ for _ in ()).throw(Crash()))
            with pytest.raises(Crash):
                await deferred_run(cfg)
        api = batches(mock)
        assert api.created == 1 and api.uploads == 2 and api.deleted == seen
        job, results = await deferred_run(cfg)
        assert api.created == 1 and api.create_calls == 1 and api.uploads == 2  # adopted, not paid twice
        assert input_files(api) == used_files(api)
    assert job.status == "finished" and all(r.status == "ok" and r.calls == 1 for r in results)


def test_a_real_sigkill_after_the_upload_then_the_same_command(tmp_path: Path) -> None:
    """The user's view: `thrifty batch run --deferred` SIGKILLed right after the provider took
    its file, before the id was stored; the same command again answers every item and the
    provider keeps no file nobody will use."""
    with start() as mock:
        args = deferred_cli(config(mock, tmp_path), tmp_path)
        killer = ("import os, signal\n"
                  "from thrifty.batching.jobs import JobStore\n"
                  "real = JobStore.update\n"
                  "def update(self, job_id, **fields):\n"
                  "    if fields.get('input_file_id'):\n"
                  "        os.kill(os.getpid(), signal.SIGKILL)\n"
                  "    return real(self, job_id, **fields)\n"
                  "JobStore.update = update\n")
        first = run_cli(args, tmp_path / "first.jsonl", killer)
        assert first.returncode == -signal.SIGKILL, first.stderr
        api = batches(mock)
        assert api.uploads == 1 and api.created == 0
        # Killed outright, the run could not mark its upload over: the rerun leaves a marker younger
        # than the client's timeout to the upload that may still run. Here that time has passed.
        db = sqlite3.connect(tmp_path / "ledger.db")
        with db:
            db.execute("UPDATE batch_jobs SET updated = updated - 7200")
        db.close()

        out = tmp_path / "out.jsonl"
        again = run_cli(args, out)
        assert again.returncode == 0, again.stderr
        assert api.uploads == 2 and api.created == 1 and len(api.deleted) == 1
        assert input_files(api) == used_files(api)
    assert [json.loads(x)["status"] for x in out.read_text().splitlines()] == ["ok"] * len(ITEMS)


async def stop_gateway_job(cfg: dict[str, Any], job_id: str, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway's collector sends gateway job ``job_id`` and stops ``where``: ``upload`` (the
    file is at the provider, its id unstored), ``create`` (the id stored, no batch yet) or
    ``record`` (the batch created, its id unstored). The job is left stale, as after a stop."""
    request = {"model": "good", "messages": [{"role": "user", "content": f"I love it ({job_id})"}]}
    gw = Gateway.from_config(cfg)
    try:
        first = Collector(gw, gw.config.batching.deferred)
        await asyncio.to_thread(first.jobs.create, job_id, "good", "mock", GATEWAY_TASK, None,
                                [Item(f"req-{job_id}", json.dumps(request))])
        with monkeypatch.context() as patch:
            if where == "upload":
                crash_when_file_id_stored(patch)
            elif where == "create":
                async def create(*a: Any, **k: Any) -> dict[str, Any]:
                    raise Crash
                patch.setattr(OpenAIBatchAPI, "create_batch", create)
            else:
                patch.setattr(JobStore, "submitted", lambda *a, **k: (_ for _ in ()).throw(Crash()))
            with pytest.raises(Crash):
                await first.runner.poll(job_id)
        first.jobs.store.execute("UPDATE batch_jobs SET updated = 0 WHERE job_id = ?", (job_id,))
        for api in first.runner.take_apis():
            await api.aclose()
    finally:
        await gw.aclose()


async def test_a_restarted_gateway_lists_the_batches_once_for_every_stale_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Five jobs a stopped gateway left: three whose batches were created but not recorded, one
    stopped before its create, one after an upload it never recorded. Behind 150 newer batches
    of other work (two pages of the provider's list), the restarted collector reads those two
    pages once, not once a job; it polls the three batches to their end (each paid once), and
    deletes the two files no batch will use, recorded or not. Every other file is left."""
    with start() as mock:
        cfg = config(mock, tmp_path)
        stops = {"bj_a": "record", "bj_b": "record", "bj_c": "record", "bj_d": "create", "bj_e": "upload"}
        for job_id, where in stops.items():
            await stop_gateway_job(cfg, job_id, where, monkeypatch)
        api = batches(mock)
        assert api.created == 3 and api.uploads == 5
        client = openai.OpenAI(base_url=mock.url + "/v1", api_key=KEY)
        other = client.files.create(file=("other.jsonl", b""), purpose="batch").id
        for _ in range(150):
            client.batches.create(input_file_id=other, endpoint="/v1/chat/completions", completion_window="24h")
        api.lists = 0
        unused = input_files(api) - used_files(api)
        assert len(unused) == 2

        gw = Gateway.from_config(cfg)
        try:
            restarted = Collector(gw, gw.config.batching.deferred)
            assert sorted(await restarted.adopt_orphans()) == sorted(stops)
            assert api.lists == 2  # the two pages, read once for all five jobs
            deadline = time.monotonic() + 30
            while restarted._active and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert not restarted._active
            gw.flush()
        finally:
            await gw.aclose()
        assert api.created == 153  # nothing created again
        assert sorted(api.deleted) == sorted(unused) and input_files(api) == used_files(api)
    rows = dict(select(tmp_path, "SELECT job_id, status FROM batch_jobs"))
    assert rows == {"bj_a": "finished", "bj_b": "finished", "bj_c": "finished", "bj_d": "cancelled",
                    "bj_e": "cancelled"}
    billed = select(tmp_path, "SELECT request_id FROM requests WHERE request_id LIKE 'req-bj_%'")
    assert sorted(r[0] for r in billed) == ["req-bj_a", "req-bj_b", "req-bj_c"]  # each once


async def test_cancel_of_a_job_killed_after_its_upload_deletes_that_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`thrifty batch cancel` of the job a crash left with an unrecorded upload: the job is never
    sent again, so that file is deleted now (nothing else would ever find it)."""
    with start() as mock:
        cfg = config(mock, tmp_path)
        seen = await crashed_after_upload(cfg, monkeypatch)
        job = await cancel_the_job(cfg, tmp_path)
        api = batches(mock)
        assert api.deleted == seen and not input_files(api) and api.created == 0
    assert job.status == "cancelled"


async def test_a_gateway_upload_whose_answer_was_lost_is_deleted(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A deferrable request's upload reached the provider but its answer did not (a timeout): the
    request is served by a normal call and its job abandoned, never looked at again; the file the
    provider kept is deleted rather than left holding the request's text."""
    real = OpenAIBatchAPI.upload_file

    async def upload_then_time_out(self: OpenAIBatchAPI, data: bytes, filename: str) -> str:
        await real(self, data, filename)
        raise UpstreamTimeoutError("mock: /files took more than 60s")

    with start() as mock:
        monkeypatch.setattr(OpenAIBatchAPI, "upload_file", upload_then_time_out)
        gw = Gateway.from_config(config(mock, tmp_path))
        try:
            collector = Collector(gw, gw.config.batching.deferred.model_copy(update={"window_s": 0.05}))
            info = gw.catalog.get("good")
            assert info is not None
            with pytest.raises(BatchItemError):
                await collector.submit("req-1", info, {"model": "good", "messages": [{"role": "user", "content": "hi"}]})
            while collector._tasks:
                await asyncio.sleep(0.02)
        finally:
            await gw.aclose()
        api = batches(mock)
        assert api.uploads == 1 and len(api.deleted) == 1 and not input_files(api)


async def test_an_orphan_behind_a_page_of_older_files_listed_oldest_first_is_found(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An OpenAI-compatible provider that ignores ``order=desc`` lists its files oldest first: the
    account's 1,000 files of yesterday fill the first page and the orphan is on the second. The
    rerun reads on to it (the first page's old rows say nothing when the list is not newest
    first) and deletes it."""
    with start() as mock:
        api = batches(mock)
        api.file_order = "asc"
        yesterday = int(time.time()) - 86400
        for i in range(1000):
            api._new_file(b"{}\n", f"old-{i}.jsonl", "batch")["created_at"] = yesterday + i
        cfg = config(mock, tmp_path)
        seen = await crashed_after_upload(cfg, monkeypatch)
        job, results = await deferred_run(cfg)
        assert api.deleted == seen and len(seen) == 1
        assert len(input_files(api) - used_files(api)) == 1000  # only the account's own files are left
    assert job.status == "finished" and [r.status for r in results] == ["ok"] * len(ITEMS)


def hold_first_upload(patch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """The first upload reaches the provider, then its answer is held until ``release`` is set
    (a slow network): ``landed`` is set once the provider has the file. Later uploads pass."""
    landed, release = asyncio.Event(), asyncio.Event()
    real = OpenAIBatchAPI.upload_file
    calls = 0

    async def upload(self: OpenAIBatchAPI, data: bytes, filename: str) -> str:
        nonlocal calls
        calls += 1
        file_id = await real(self, data, filename)
        if calls == 1:
            landed.set()
            await release.wait()
        return file_id

    patch.setattr(OpenAIBatchAPI, "upload_file", upload)
    return landed, release


async def poll_from_another_terminal(cfg: dict[str, Any], job_id: str) -> Any:
    """`thrifty batch status JOB` in another terminal: one poll of the job."""
    gw = Gateway.from_config(cfg)
    runner = DeferredRunner(gw)
    try:
        return await runner.poll(job_id)
    finally:
        await runner.aclose()
        await gw.aclose()


@pytest.mark.parametrize("marker_age", ["fresh", "old"])
async def test_a_poll_while_a_run_uploads_never_deletes_its_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, marker_age: str) -> None:
    """A run's upload is at the provider, its answer slow to come back, when a `batch status`
    poll (or a second run of the same command) looks at the job. ``fresh``: the upload may still
    be under way, so the poll leaves it alone (it once deleted the file: the run's create then
    failed on it, and the run's id write wiped the poll's own upload's record, an orphan).
    ``old``: past the client's timeout the upload looks interrupted, so the poll takes the round
    over; the run's id write then finds its round taken, deletes its own file and polls the
    poll's batch. Either way: one upload used, one batch, no orphan, every item answered."""
    with start() as mock:
        cfg = config(mock, tmp_path)
        api = batches(mock)
        landed, release = hold_first_upload(monkeypatch)
        run = asyncio.ensure_future(deferred_run(cfg))
        await asyncio.wait_for(landed.wait(), 30)
        job_id = str(select(tmp_path, "SELECT job_id FROM batch_jobs")[0][0])
        if marker_age == "old":
            db = sqlite3.connect(tmp_path / "ledger.db")
            with db:
                db.execute("UPDATE batch_jobs SET updated = updated - 7200")
            db.close()
        polled = await poll_from_another_terminal(cfg, job_id)
        if marker_age == "fresh":
            assert polled.status == "created" and api.uploads == 1 and not api.deleted
        else:
            assert polled.status == "submitted" and api.uploads == 2 and len(api.deleted) == 1
        release.set()
        job, results = await asyncio.wait_for(run, 60)
        assert api.created == 1 and input_files(api) == used_files(api)
    assert job.status == "finished" and [r.status for r in results] == ["ok"] * len(ITEMS)


# --- final review mends ----------------------------------------------------------------------------


async def test_an_id_write_whose_commit_landed_but_reported_no_row_keeps_its_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL: the connection drops during the commit of the file id's conditional write, the
    commit landed, and the store's retry of the statement matches no row (the marker is gone). The
    run must not take that for another run's takeover: it deleted the file it had just recorded and
    the job kept a dead input_file_id. Here the store applies the write, then reports 0 rows."""
    real = JobStore.update

    def update(self: JobStore, job_id: str, **fields: Any) -> bool:
        done = real(self, job_id, **fields)
        return False if fields.get("input_file_id") else done

    with start() as mock:
        monkeypatch.setattr(JobStore, "update", update)
        job, results = await deferred_run(config(mock, tmp_path))
        api = batches(mock)
        assert api.uploads == 1 and not api.deleted and api.created == 1
        assert input_files(api) == used_files(api)
    assert job.status == "finished" and [r.status for r in results] == ["ok"] * len(ITEMS)


@pytest.mark.parametrize("listing", ["read", "refused"])
async def test_cancel_of_a_job_killed_before_its_create_deletes_its_recorded_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listing: str) -> None:
    """`thrifty batch cancel` of a job whose run died after recording its input file's id, before
    the provider created the batch: the job is never sent again, so the file is deleted, as the
    collector's discard deletes an abandoned job's. Only when the provider's batches could be
    read: a provider that refuses the listing may hold a batch using it, so the file is kept."""
    with start() as mock:
        cfg = config(mock, tmp_path)
        with monkeypatch.context() as patch:
            async def create(*a: Any, **k: Any) -> dict[str, Any]:
                raise Crash
            patch.setattr(OpenAIBatchAPI, "create_batch", create)
            with pytest.raises(Crash):
                await deferred_run(cfg)
        api = batches(mock)
        recorded = {str(r[0]) for r in select(tmp_path, "SELECT input_file_id FROM batch_jobs")}
        assert api.uploads == 1 and recorded == input_files(api)
        if listing == "refused":
            async def refuse(*a: Any, **k: Any) -> dict[str, Any]:
                raise UpstreamStatusError("mock: no batch list here", status=404)
            monkeypatch.setattr(OpenAIBatchAPI, "list_batches", refuse)
        job = await cancel_the_job(cfg, tmp_path)
        if listing == "read":
            assert api.deleted == sorted(recorded) and not input_files(api)
        else:
            assert not api.deleted and input_files(api) == recorded
        assert api.created == 0
    assert job.status == "cancelled"
