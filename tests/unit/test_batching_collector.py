"""The deferrable-request collector and stage with an in-memory Batch API and test-double providers."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from thrifty.batching.collector import GATEWAY_TASK, BatchItemError, Collector
from thrifty.batching.config import DeferredConfig
from thrifty.batching.items import Item
from thrifty.errors import InvalidRequestError, UpstreamError
from thrifty.gateway import Gateway
from thrifty.pipeline.context import Plan, RequestContext, Tier
from thrifty.pipeline.deferred_stage import DeferredStage, is_deferrable
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.types import ChatRequest

USAGE = {"prompt_tokens": 10, "completion_tokens": 5}
HALF_PRICE = (10 * 0.5 + 5 * 2.0) / 1e6  # input 1.0, output 4.0 per million, halved


class FakeBatchAPI:
    """OpenAI-style files/batches in memory: answers ``echo: <text>``; a text with FAIL gets a 500 line."""

    name = "p"

    def __init__(self, *, fail_upload: bool = False, hold: bool = False) -> None:
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.fail_upload = fail_upload
        self.hold = hold  # batches stay in progress until released

    def lines(self, batch_id: str) -> list[dict[str, Any]]:
        data = self.files[self.batches[batch_id]["input_file_id"]]
        return [json.loads(x) for x in data.decode().splitlines() if x.strip()]

    async def upload_file(self, data: bytes, filename: str) -> str:
        if self.fail_upload:
            raise UpstreamError("p: upload refused", status=503)
        file_id = f"file-{len(self.files)}"
        self.files[file_id] = data
        return file_id

    async def create_batch(self, input_file_id: str, endpoint: str, completion_window: str,
                           metadata: dict[str, str] | None = None) -> dict[str, Any]:
        batch_id = f"batch-{len(self.batches)}"
        self.batches[batch_id] = {"id": batch_id, "status": "in_progress", "input_file_id": input_file_id}
        return dict(self.batches[batch_id])

    async def get_batch(self, batch_id: str) -> dict[str, Any]:
        batch = self.batches[batch_id]
        if batch["status"] == "in_progress" and not self.hold:
            out = []
            for line in self.lines(batch_id):
                text = line["body"]["messages"][-1]["content"]
                if "FAIL" in text:
                    response = {"status_code": 500, "body": {"error": {"message": "server error"}}}
                else:
                    response = {"status_code": 200, "body": chat_response(line["body"]["model"], "echo: " + text, USAGE)}
                out.append({"custom_id": line["custom_id"], "response": response, "error": None})
            file_id = f"file-{len(self.files)}"
            self.files[file_id] = "".join(json.dumps(r) + "\n" for r in out).encode()
            batch.update(status="completed", output_file_id=file_id)
        return dict(batch)

    async def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        self.batches[batch_id]["status"] = "cancelled"
        return dict(self.batches[batch_id])

    async def file_content(self, file_id: str) -> bytes:
        return self.files[file_id]

    async def aclose(self) -> None:
        return None


def config(tmp: Path) -> dict[str, Any]:
    price = {"input": 1.0, "output": 4.0}
    return {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "backoff_base_s": 0.001}},
        "models": {"a": {"provider": "p", "price": price}, "b": {"provider": "p", "price": price}},
        "ledger": {"path": str(tmp / "ledger.db")},
    }


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    fn = FunctionProvider(lambda body: chat_response(body["model"], "direct: " + body["messages"][-1]["content"],
                                                     USAGE))
    gateway = Gateway.from_config(config(tmp_path), providers={"p": fn})
    yield gateway
    await gateway.aclose()


def collector(gw: Gateway, api: FakeBatchAPI, **cfg: Any) -> Collector:
    settings = DeferredConfig(enabled=True, **{"window_s": 0.05, "poll_interval_s": 0.01, **cfg})
    return Collector(gw, settings, apis={"p": api})


def body(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def ledger(gw: Gateway, sql: str) -> list[tuple[Any, ...]]:
    gw.flush()
    with sqlite3.connect(gw.config.ledger.path) as db:
        return db.execute(sql).fetchall()


async def test_requests_are_grouped_per_model_and_mapped_back_by_custom_id(gw: Gateway) -> None:
    api = FakeBatchAPI()
    col = collector(gw, api)
    a, b = gw.catalog.get("a"), gw.catalog.get("b")
    assert a is not None and b is not None
    calls = [col.submit(f"req-{i}", a if i < 3 else b, body("a" if i < 3 else "b", f"q{i}")) for i in range(5)]
    answers = await asyncio.gather(*calls)
    assert [x.response["choices"][0]["message"]["content"] for x in answers] == [f"echo: q{i}" for i in range(5)]
    assert sorted(len(api.lines(bid)) for bid in api.batches) == [2, 3]
    assert all(x.cost.usd == pytest.approx(HALF_PRICE) for x in answers)
    jobs = ledger(gw, "SELECT task, status, n_items FROM batch_jobs ORDER BY n_items")
    assert jobs == [(GATEWAY_TASK, "finished", 2), (GATEWAY_TASK, "finished", 3)]


async def test_max_items_flushes_without_waiting_for_the_window(gw: Gateway) -> None:
    api = FakeBatchAPI()
    col = collector(gw, api, max_items=2, window_s=30)
    a = gw.catalog.get("a")
    assert a is not None
    answers = await asyncio.gather(*(col.submit(f"r{i}", a, body("a", f"q{i}")) for i in range(2)))
    assert len(answers) == 2 and len(api.batches) == 1 and len(api.lines("batch-0")) == 2


async def test_a_failed_line_is_an_error_for_its_request_only(gw: Gateway) -> None:
    col = collector(gw, FakeBatchAPI())
    a = gw.catalog.get("a")
    assert a is not None
    results = await asyncio.gather(col.submit("ok", a, body("a", "fine")), col.submit("bad", a, body("a", "FAIL")),
                                   return_exceptions=True)
    assert not isinstance(results[0], BaseException) and isinstance(results[1], BatchItemError)
    assert "500: server error" in results[1].message
    assert ledger(gw, "SELECT status, error FROM batch_job_items ORDER BY seq") == [("ok", None),
                                                                                   ("failed", "500: server error")]


async def test_a_batch_that_cannot_be_sent_fails_every_request_and_is_abandoned(gw: Gateway) -> None:
    col = collector(gw, FakeBatchAPI(fail_upload=True))
    a = gw.catalog.get("a")
    assert a is not None
    results = await asyncio.gather(*(col.submit(f"r{i}", a, body("a", "x")) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, BatchItemError) and "upload refused" in r.message for r in results)
    assert ledger(gw, "SELECT status FROM batch_jobs") == [("cancelled",)]


async def until(done: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Poll ``done`` until it holds; fail (not hang the suite) if it never does."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not done():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)

async def test_client_gone_before_sending_is_left_out_and_after_sending_is_still_ledgered(gw: Gateway) -> None:
    api = FakeBatchAPI(hold=True)
    col = collector(gw, api)
    a = gw.catalog.get("a")
    assert a is not None
    early = asyncio.create_task(col.submit("early", a, body("a", "x")))
    late = asyncio.create_task(col.submit("late", a, body("a", "y")))
    stays = asyncio.create_task(col.submit("stays", a, body("a", "z")))
    await asyncio.sleep(0)
    early.cancel()
    await until(lambda: bool(api.batches), "the batch was never sent")
    late.cancel()  # sent already: the provider bills it, so its answer is ledgered without a client
    api.hold = False
    answer = await stays
    assert answer.response["choices"][0]["message"]["content"] == "echo: z"
    assert [x["custom_id"] for x in api.lines("batch-0")] == ["r1-0", "r1-1"]
    rows = ledger(gw, "SELECT request_id, batch, strategy, cost_usd FROM requests")
    assert rows == [("late", 1, "batch", pytest.approx(HALF_PRICE))]


async def test_stale_jobs_are_adopted_after_a_restart(gw: Gateway) -> None:
    api = FakeBatchAPI(hold=True)
    first = collector(gw, api)
    jobs = first.jobs
    # A job sent by a process that then died, one it never sent, and one a live instance owns.
    for job_id in ("bj_sent", "bj_unsent", "bj_live"):
        await asyncio.to_thread(jobs.create, job_id, "a", "p", GATEWAY_TASK, None,
                                [Item(f"{job_id}-req", json.dumps(body("a-upstream", "hello")))])
    await first.runner.poll("bj_sent")
    jobs.store.execute("UPDATE batch_jobs SET updated = 0 WHERE job_id IN ('bj_sent', 'bj_unsent')")
    api.hold = False

    restarted = collector(gw, api)
    assert sorted(await restarted.adopt_orphans()) == ["bj_sent", "bj_unsent"]
    assert await collector(gw, api).adopt_orphans() == []  # already claimed
    await until(lambda: not restarted._active, "the adopted jobs never finished")
    assert jobs.get("bj_sent").status == "finished" and jobs.get("bj_unsent").status == "cancelled"
    assert jobs.get("bj_live").status == "created" and len(api.batches) == 1
    assert ledger(gw, "SELECT request_id, batch FROM requests") == [("bj_sent-req", 1)]


# ------------------------------------------------------------------------------------ the stage
def ctx_for(options: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
            stream: bool = False, plan: Plan | None = None) -> RequestContext:
    req = ChatRequest(model="a", messages=[{"role": "user", "content": "q"}], stream=stream, options=options or {})
    ctx = RequestContext(request=req, headers=headers or {})
    ctx.plan = plan or Plan(tiers=[Tier("a")])
    return ctx


def test_deferrable_by_body_or_header_and_the_body_wins() -> None:
    assert is_deferrable(ctx_for({"deferrable": True}))
    assert is_deferrable(ctx_for(headers={"x-thrifty-deferrable": "1"}))
    assert not is_deferrable(ctx_for({"deferrable": False}, {"x-thrifty-deferrable": "1"}))
    assert not is_deferrable(ctx_for())
    with pytest.raises(InvalidRequestError, match="must be a boolean"):
        is_deferrable(ctx_for({"deferrable": "yes"}))


class Next:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, ctx: RequestContext) -> None:
        self.calls += 1


async def test_stage_answers_from_the_batch_at_batch_price(gw: Gateway) -> None:
    stage = DeferredStage(collector(gw, FakeBatchAPI()), gw.catalog)
    ctx, nxt = ctx_for({"deferrable": True}), Next()
    await stage(ctx, nxt)
    assert nxt.calls == 0 and ctx.response is not None
    assert ctx.batch and ctx.strategy == "batch" and ctx.cost_usd == pytest.approx(HALF_PRICE)
    assert [a.batch for a in ctx.attempts] == [True] and ctx.response_headers["x-thrifty-batch"] == "batch"


async def test_stage_falls_back_refuses_streams_and_skips_cascades(gw: Gateway) -> None:
    stage = DeferredStage(collector(gw, FakeBatchAPI()), gw.catalog)
    failed, nxt = ctx_for({"deferrable": True}), Next()
    failed.request.messages[0]["content"] = "FAIL"
    await stage(failed, nxt)
    assert nxt.calls == 1 and failed.response_headers["x-thrifty-batch"] == "fallback"
    assert [(a.status, a.batch) for a in failed.attempts] == [("error", True)] and not failed.batch

    with pytest.raises(InvalidRequestError, match="cannot stream"):
        await stage(ctx_for({"deferrable": True}, stream=True), Next())

    cascade, nxt = ctx_for({"deferrable": True}, plan=Plan(tiers=[Tier("a", 0.5), Tier("b")])), Next()
    await stage(cascade, nxt)
    assert nxt.calls == 1 and cascade.response_headers["x-thrifty-batch"] == "skipped-cascade"
