"""Review of the day's changes (s12, agent E): each test failed before its fix, except the one
that an HTTP error status does not stop a reconcile pass, which holds that fix to its limit.

Real Redis / PostgreSQL from tests/fixtures/services.py, real gateways on 127.0.0.1 in front of
the mock upstream, the CLI run as a process where it is the CLI that is reviewed."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import openai
import pytest

from thrifty.cache.backends.base import EntryMeta
from thrifty.cache.backends.redis import RedisBackend

if TYPE_CHECKING:
    from thrifty.gateway import Gateway


def _meta(key: str, expires: float) -> EntryMeta:
    return EntryMeta(key, "t", "m", time.time(), expires)


@pytest.mark.redis
async def test_redis_vector_list_dropped_alone_is_read_from_its_start(redis_url: str) -> None:
    """A vector list that went while its pop count stayed (evicted under ``maxmemory``, deleted
    by an operator, or the list expiring while a count without TTL lived on) started again at the
    old count: a reader holding a position in the old list skipped as many of the new list's
    vectors as it had read of the old one."""
    backend = RedisBackend(redis_url, prefix="review-" + uuid.uuid4().hex[:8])
    vec = np.ones(4, dtype=np.float32)
    try:
        for i in range(3):
            await backend.add_vector("idx", _meta(f"a{i}", time.time() + 60), f"a {i}", vec)
        _, cursor = await backend.vectors_since("idx", 0)
        await backend._redis.delete(backend._k("v", "idx"))  # the list alone goes
        for i in range(5):
            await backend.add_vector("idx", _meta(f"b{i}", time.time() + 60), f"b {i}", vec)
        rows, _ = await backend.vectors_since("idx", cursor)
        assert [r.key for r in rows] == [f"b{i}" for i in range(5)]
    finally:
        await backend.aclose()


@pytest.mark.redis
async def test_redis_vector_count_expires_with_its_list(redis_url: str) -> None:
    """The pop count got a TTL only when an append moved the list's: a count made beside a list
    that already lived longer (a list of the previous release, or a count evicted alone) never
    expired, outlived its list and was taken up by the next list."""
    backend = RedisBackend(redis_url, prefix="review-" + uuid.uuid4().hex[:8])
    vec = np.ones(4, dtype=np.float32)
    client: Any = backend._redis
    try:
        # A list as the previous release wrote it: records, a TTL, no count.
        await backend.add_vector("idx", _meta("old", time.time() + 600), "old", vec)
        await client.delete(backend._k("vo", "idx"))
        await backend.add_vector("idx", _meta("short", time.time() + 5), "short", vec)
        left = await client.pttl(backend._k("vo", "idx"))
        assert 0 < left <= await client.pttl(backend._k("v", "idx")) + 50
    finally:
        await backend.aclose()


def test_a_reconcile_pass_over_more_entries_than_the_index_remembers_counts_them_settled(
        tmp_path: Path) -> None:
    """`thrifty ledger reconcile` lists every pending entry at once and tells settled from still
    running by the index's memory, an LRU of ``memory_limit`` entries (10,000). A backlog larger
    than that (the loop off, a gateway down for a while) evicted its first entries while the rest
    were listed, and those were reported "still running" once settled: the amendment marked an
    entry settled only if memory still held it."""
    import asyncio

    from thrifty.gateway import Gateway
    from thrifty.mock.app import create_app as create_mock
    from thrifty.mock.behaviour import MockConfig
    from thrifty.mock.server import run_in_thread
    from thrifty.server.reconcile import Reconciler
    from thrifty.server.response_resources import ResponseResources
    from thrifty.server.stored_responses import ResponseIndex

    key = "sk-upstream-review-0000"
    with run_in_thread(create_mock(MockConfig.from_dict({"seed": 3, "api_key": key}))) as mock:
        cfg = {"providers": {"a": {"base_url": mock.url + "/v1", "api_key": key, "max_retries": 0}},
               "models": {"gpt": {"provider": "a", "price": {"input": 2.0, "output": 8.0}}},
               "default_model": "gpt",
               "ledger": {"path": str(tmp_path / "ledger.db"), "flush_interval_s": 0.05},
               "server": {"reconcile_background_s": 0}}
        gw = Gateway.from_config(cfg)
        try:
            with run_in_thread(gw.app()) as server:
                c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)
                ids = [c.responses.create(model="gpt", input=f"Story {i}.", background=True).id for i in range(3)]
            gw.flush()
            assert gw.ops.responses.store is not None
            small = ResponseIndex(gw.ops.responses.store, memory_limit=2)

            async def one_pass() -> Any:
                try:
                    return await Reconciler(ResponseResources(gw, small), min_age_s=0).run_once()
                finally:
                    await gw.aclose()

            tally = asyncio.run(one_pass())
            left = gw.ops.responses.store.query("SELECT COUNT(*) FROM stored_responses WHERE pending = 1")
            assert int(left[0][0]) == 0 and len(ids) == 3  # all three were settled in the ledger...
            assert (tally.settled, tally.running) == (3, 0)  # ...and reported so
        finally:
            gw.close()


def test_a_provider_that_stops_answering_costs_a_reconcile_pass_one_timeout_not_one_per_entry(
        tmp_path: Path) -> None:
    """A provider that accepts connections but never answers (a partition, an overloaded proxy)
    was asked about each of its pending entries in turn, each waiting out the timeout and its
    retries, four at a time: a pass over 500 entries at a provider with `timeout_s: 120` and two
    retries took over twelve hours, during which no other provider's entry was settled and the
    CLI did not return. Once a provider cannot be reached, the pass counts the rest of that
    provider's entries failed without asking (they stay pending for the next pass)."""
    import asyncio

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from thrifty.mock.server import run_in_thread
    from thrifty.server.reconcile import CONCURRENCY

    asked: list[str] = []

    async def frozen(request: Request) -> JSONResponse:
        asked.append(request.path_params["rid"])
        await asyncio.sleep(1.5)
        return JSONResponse({"id": request.path_params["rid"], "status": "in_progress"})

    with run_in_thread(Starlette(routes=[Route("/v1/responses/{rid}", frozen)])) as stuck:
        n = 3 * CONCURRENCY
        tally = _one_reconcile_pass(stuck.url, tmp_path, n, timeout_s=0.3)
        assert tally.failed == n and tally.settled == tally.running == 0  # all left pending
        assert len(asked) == CONCURRENCY  # the first look-ups in flight, not one per entry


def _one_reconcile_pass(base: str, tmp_path: Path, n: int, timeout_s: float | None = None) -> Any:
    """One reconciler pass over ``n`` pending entries (``resp_0`` oldest) of a provider at
    ``base``: its tally."""
    import asyncio

    from thrifty.gateway import Gateway
    from thrifty.server.reconcile import Reconciler
    from thrifty.server.response_resources import ResponseResources
    from thrifty.server.stored_responses import StoredResponse

    provider: dict[str, Any] = {"base_url": base + "/v1", "api_key": "sk-a", "max_retries": 0}
    if timeout_s is not None:
        provider["timeout_s"] = timeout_s
    cfg = {"providers": {"a": provider},
           "models": {"gpt": {"provider": "a", "price": {"input": 2.0, "output": 8.0}}},
           "default_model": "gpt",
           "ledger": {"path": str(tmp_path / "ledger.db")},
           "server": {"reconcile_background_s": 0}}
    gw = Gateway.from_config(cfg)
    index = gw.ops.responses

    async def one_pass() -> Any:
        try:
            for i in range(n):
                await index.remember(StoredResponse(f"resp_{i}", f"req_{i}", "gpt", "a", None, "default",
                                                    time.time() - 120 + i, True))
            return await Reconciler(ResponseResources(gw, index), min_age_s=60).run_once()
        finally:
            await gw.aclose()

    try:
        return asyncio.run(one_pass())
    finally:
        gw.close()


def test_an_entry_the_provider_refuses_does_not_keep_its_other_entries_from_being_settled(
        tmp_path: Path) -> None:
    """The other half of the rule above: an HTTP error status (here a 400 for one response id)
    is that entry's, and the provider's other entries are still asked in the same pass (else one
    bad entry, the oldest, would hold its provider's others back on every pass)."""

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from thrifty.mock.server import run_in_thread
    from thrifty.server.reconcile import CONCURRENCY

    asked: list[str] = []

    async def picky(request: Request) -> JSONResponse:
        rid = request.path_params["rid"]
        asked.append(rid)
        if rid == "resp_0":
            return JSONResponse({"error": {"message": "bad id", "type": "invalid_request_error"}}, status_code=400)
        return JSONResponse({"id": rid, "object": "response", "status": "in_progress"})

    with run_in_thread(Starlette(routes=[Route("/v1/responses/{rid}", picky)])) as up:
        n = 3 * CONCURRENCY
        tally = _one_reconcile_pass(up.url, tmp_path, n)
        assert (tally.failed, tally.running) == (1, n - 1)
        assert sorted(asked) == sorted(f"resp_{i}" for i in range(n))


def test_a_background_response_is_priced_at_the_hour_it_ran_not_when_it_is_settled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A price that changes with the hour (DeepSeek's peak hours cost twice its off-peak ones) is
    read per call at the time it is priced. A background response is priced when a retrieve or
    the reconciler settles it (`thrifty ledger reconcile` from a daily cron: hours later), so it
    was charged at the settling hour's rate, not at the rate of the hour it ran."""
    from datetime import UTC, datetime

    from thrifty import cost
    from thrifty.catalog import lookup_genai_price
    from thrifty.cost import call_cost
    from thrifty.gateway import Gateway
    from thrifty.server.response_resources import ResponseResources
    from thrifty.server.stored_responses import ResponseIndex, StoredResponse
    from thrifty.types import Usage

    price = lookup_genai_price("deepseek-flash", "deepseek")
    assert price is not None and price.genai_ref is not None
    day = datetime.now(UTC).date()
    peak, off_peak = (datetime(day.year, day.month, day.day, h, 0, tzinfo=UTC) for h in (2, 14))
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)

    def usd_at(when: datetime) -> float:
        with monkeypatch.context() as m:
            m.setattr(cost, "now", lambda: when)
            got = call_cost(usage, price).usd
        assert got is not None
        return got

    assert usd_at(peak) == pytest.approx(2 * usd_at(off_peak))
    # The hour the run happened at is the one whose rate differs from the settling hour's.
    settling = datetime.now(UTC)
    ran = off_peak if usd_at(settling) == pytest.approx(usd_at(peak)) else peak

    gw = Gateway.from_config({
        "providers": {"ds": {"base_url": "https://api.deepseek.com/v1", "api_key": "sk-test"}},
        "models": {"flash": {"provider": "ds", "upstream_model": "deepseek-flash"}},
        "default_model": "flash",
        "ledger": {"enabled": False},
    })
    try:
        resources = ResponseResources(gw, ResponseIndex(None))
        entry = StoredResponse("resp_1", "req_1", "flash", "ds", None, "default", ran.timestamp() - 60, True)
        response: dict[str, Any] = {
            "id": "resp_1", "object": "response", "status": "completed",
            "created_at": int(ran.timestamp()) - 60, "completed_at": int(ran.timestamp()),
            "usage": {"input_tokens": 1_000_000, "output_tokens": 1_000_000,
                      "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}},
            "output": [],
        }
        outcome = resources.outcome(entry, response)
        assert outcome is not None and outcome.cost_usd is not None
        assert outcome.cost_usd == pytest.approx(usd_at(ran))
        # Without the provider's times, the create's own time is the best there is.
        bare = {k: v for k, v in response.items() if k not in ("created_at", "completed_at")}
        outcome = resources.outcome(entry, bare)
        assert outcome is not None and outcome.cost_usd == pytest.approx(usd_at(ran))
    finally:
        gw.close()


async def test_a_hand_edited_line_without_the_reference_answer_is_not_retried_with_a_traceback(
        tmp_path: Path) -> None:
    """A retried line whose reference outcome lost its "response" (edited by hand) is reported
    as not graded, in one line, and kept as it was."""
    from thrifty.evaluation.collect import Collector, Options, Prompt, _NotGraded

    # Exact grading of a line that cannot be graded reaches no gateway: none is needed.
    collector = Collector(cast("Gateway", None), Options(models=["cheap", "ref"], reference="ref", grader="exact"),
                          None)
    prompt = Prompt(1, [{"role": "user", "content": "Pick A or B.\nA) x\nB) y"}], "Pick A or B.\nA) x\nB) y",
                    None, None, None, "d")
    outcomes: dict[str, dict[str, Any]] = {"cheap": {"score": 0.0, "response": "A"}, "ref": {"score": 1.0}}
    with pytest.raises(_NotGraded, match="no answer of the reference model ref"):
        await collector.grade(prompt, outcomes, "exact", "ref", {"cheap"})
