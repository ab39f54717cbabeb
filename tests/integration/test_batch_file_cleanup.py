"""A provider batch round's files are deleted once its answers are recorded.

`thrifty batch run --deferred` uploads each round's input file and the provider writes the batch's
output and error files; OpenAI keeps files until deleted, so the team's prompts and answers stayed
at the provider for good (and counted against its storage limits) after the job had recorded them.
Over real HTTP against the mock upstream's files/batches endpoints; what is left there is read with
the real `openai` client (`GET /v1/files`)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import openai
import pytest

from fixtures.batch_jobs import ITEMS, KEY, LABELS, RULES, TASK, batches, config
from thrifty.batching.deferred import DeferredRunner, run_deferred
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.providers.batch_api import OpenAIBatchAPI

# Half the first batch's lines are answered 500 (an error file), sent again in a second round: two
# rounds, each with its input file, and the first with an output and an error file.
FLAKY_FIRST = {"line_fail_rate": 0.5, "affect_batches": 1}


def start() -> RunningServer:
    return run_in_thread(create_mock(MockConfig.from_dict({"batch": FLAKY_FIRST, "models": {"good": {"answers": RULES}}})))


def files_at_provider(mock: RunningServer) -> list[str]:
    client = openai.OpenAI(base_url=mock.url + "/v1", api_key=KEY, max_retries=0)
    try:
        return [f.id for f in client.files.list()]
    finally:
        client.close()


async def run(mock: RunningServer, tmp: Path, **deferred: Any) -> list[str | None]:
    cfg = config(mock, tmp)
    cfg["batching"]["deferred"].update(deferred)
    gw = Gateway.from_config(cfg)
    try:
        job, results = await run_deferred(gw, ITEMS, task=TASK, model="good", labels=LABELS, interval=0.05)
    finally:
        await gw.aclose()
    assert job.status == "finished" and job.round == 2
    assert all(r.status == "ok" for r in results)
    return [r.output for r in results]


async def test_a_finished_deferred_run_leaves_no_files_at_the_provider(tmp_path: Path) -> None:
    with start() as mock:
        outputs = await run(mock, tmp_path)
        api = batches(mock)
        assert outputs == ["negative", "positive"] * 3
        assert files_at_provider(mock) == [] and not api.files
        # Two inputs, two outputs and the first round's error file: every one deleted, once.
        assert len(api.deleted) == len(set(api.deleted)) == 5 and api.uploads == 2


async def test_delete_files_false_leaves_them(tmp_path: Path) -> None:
    with start() as mock:
        await run(mock, tmp_path, delete_files=False)
        api = batches(mock)
        assert not api.deleted and len(files_at_provider(mock)) == 5


async def test_a_failed_delete_is_logged_and_the_job_still_finishes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    tried: list[str] = []

    async def refuse(self: OpenAIBatchAPI, file_id: str) -> None:
        tried.append(file_id)
        raise RuntimeError("storage service unavailable")

    monkeypatch.setattr(OpenAIBatchAPI, "delete_file", refuse)
    with start() as mock, caplog.at_level(logging.WARNING, logger="thrifty.batching"):
        outputs = await run(mock, tmp_path, delete_files=True)
        assert outputs == ["negative", "positive"] * 3
        assert len(tried) == 5 and len(files_at_provider(mock)) == 5
    warned = [r.getMessage() for r in caplog.records if "could not delete" in r.getMessage()]
    assert len(warned) == 5 and all("\n" not in m and "storage service unavailable" in m for m in warned)


async def test_a_run_polling_a_round_another_run_collected_and_cleaned_up_ends_quietly(tmp_path: Path) -> None:
    """Two runs poll the same job (a `thrifty batch status` in another terminal): the one that
    read the ended batch before the other collected it and deleted its files finds the output
    file gone (404). The job is finished by the other: nothing to do, not an error."""
    with start() as mock:
        cfg = config(mock, tmp_path)
        cfg["batching"]["deferred"]["delete_files"] = True
        gw = Gateway.from_config(cfg)
        runner = DeferredRunner(gw)
        try:
            stale = await runner.submit(ITEMS, task=TASK, model="good", labels=LABELS)  # round 1, as the other read it
            done = await runner.wait(stale.job_id, 0.05)
            assert done.status == "finished" and not batches(mock).files
            answers = await asyncio.to_thread(runner.results, stale.job_id)
            await runner._check(stale)  # the slower run's poll of round 1
            after = await asyncio.to_thread(runner.jobs.get, stale.job_id)
            assert (after.status, after.round) == ("finished", 2)
            assert await asyncio.to_thread(runner.results, stale.job_id) == answers
        finally:
            await runner.aclose()
            await gw.aclose()
