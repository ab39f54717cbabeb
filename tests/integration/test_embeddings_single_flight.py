"""Concurrent ``/v1/embeddings`` requests missing the same inputs send each one upstream once
(single flight per input, as chat's per request), through a real gateway on 127.0.0.1 in front
of the mock upstream, driven by the official openai SDK (AsyncOpenAI): an indexing job whose
workers send the same chunks at once pays for each chunk once. A leader that fails or is
cancelled releases its followers at once; tenants and other parameters are never merged."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from tests.fixtures.tcp_proxy import TcpProxy

from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.embeddings import DEFAULT_DIMENSIONS, vector
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.tokens import count_text

SEED = 29
UPSTREAM = "text-embedding-3-small"
FLAKY = "text-embedding-flaky"  # its first call fails, after the same latency
LATENCY_MS = 400  # long enough for every concurrent request to arrive while the leader's call runs
PRICE_IN = 0.02
Mock = tuple[RunningServer, Any]


@pytest.fixture(scope="module")
def mock() -> Iterator[Mock]:
    app = create_mock(MockConfig.from_dict({"seed": SEED, "models": {
        UPSTREAM: {"faults": {"latency_ms": LATENCY_MS}},
        FLAKY: {"faults": {"latency_ms": LATENCY_MS, "fail_first": 1, "fail_status": 500}}}}))
    with run_in_thread(app) as server:
        yield server, app.state.mock


class Served:
    def __init__(self, gw: Gateway, url: str) -> None:
        self.gw, self.url = gw, url

    def client(self, key: str = "sk-client-flight-0000") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=20)

    def row(self, request_id: str) -> dict[str, Any]:
        self.gw.flush()
        assert self.gw.ledger is not None
        cols = ("cost_usd", "baseline_cost_usd", "cache_status", "cache_saved_usd", "prompt_tokens", "n_attempts",
                "status")
        (row,) = self.gw.ledger.store.query(f"SELECT {', '.join(cols)} FROM requests WHERE request_id = ?",
                                            [request_id])
        return dict(zip(cols, row, strict=True))


def serve(tmp: Path, upstream_url: str, server: dict[str, Any] | None = None,
          lock_timeout_s: float | None = None) -> Iterator[Served]:
    cfg: dict[str, Any] = {
        "providers": {"mock": {"base_url": upstream_url + "/v1", "api_key": "sk-upstream-flight-0000",
                               "max_retries": 0}},
        "models": {"embed": {"provider": "mock", "upstream_model": UPSTREAM, "price": {"input": PRICE_IN, "output": 0}},
                   "flaky": {"provider": "mock", "upstream_model": FLAKY, "price": {"input": PRICE_IN, "output": 0}}},
        "ledger": {"path": "ledger.db"},
        "cache": {"path": "cache.db", "embeddings": {"enabled": True}},
    }
    if server is not None:
        cfg["server"] = server
    if lock_timeout_s is not None:
        cfg["cache"]["lock_timeout_s"] = lock_timeout_s
    path = tmp / "thrifty.yaml"
    path.write_text(yaml.safe_dump(cfg))
    gw = Gateway.from_config(path)
    with run_in_thread(gw.app()) as running:
        yield Served(gw, running.url)
    gw.close()


@pytest.fixture(scope="module")
def served(mock: Mock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(tmp_path_factory.mktemp("embflight"), mock[0].url)


def sent_since(mock: Mock, before: int, model: str = UPSTREAM) -> list[dict[str, Any]]:
    """The embeddings calls the mock received for ``model`` since it had ``before`` in all."""
    new = mock[1].recorder.last(mock[1].recorder.total - before)
    return [r for r in new if r["path"] == "/v1/embeddings" and r["body"].get("model") == model]


def inputs_sent(calls: list[dict[str, Any]]) -> Counter[Any]:
    return Counter(item if isinstance(item, str) else tuple(item) for c in calls for item in c["body"]["input"])


def usd(texts: list[str]) -> float:
    return sum(count_text(t) for t in texts) * PRICE_IN / 1e6


async def embed_all(clients: list[openai.AsyncOpenAI], inputs: list[list[str]], model: str = "embed",
                    **kw: Any) -> list[Any]:
    """One request per (client, inputs) pair, all at once; the raw responses (or the exception)."""
    async def one(c: openai.AsyncOpenAI, texts: list[str]) -> Any:
        return await c.embeddings.with_raw_response.create(model=model, input=texts, encoding_format="float", **kw)

    try:
        return await asyncio.gather(*[one(c, t) for c, t in zip(clients, inputs, strict=True)],
                                    return_exceptions=True)
    finally:
        for c in set(clients):
            await c.close()


def vectors_ok(raw: Any, texts: list[str], model: str = UPSTREAM) -> bool:
    out = raw.parse()
    return [d.index for d in out.data] == list(range(len(texts))) and all(
        d.embedding == pytest.approx(vector(SEED, model, t, DEFAULT_DIMENSIONS), abs=1e-7)
        for d, t in zip(out.data, texts, strict=True))


def test_identical_concurrent_requests_send_each_input_once(served: Served, mock: Mock) -> None:
    texts = ["worker chunk one", "worker chunk two", "worker chunk three"]
    before = mock[1].recorder.total
    c = served.client()
    raws = asyncio.run(embed_all([c] * 6, [texts] * 6))
    calls = sent_since(mock, before)
    assert len(calls) == 1 and inputs_sent(calls) == Counter(texts), [x["body"]["input"] for x in calls]
    assert all(vectors_ok(r, texts) for r in raws), raws
    statuses = sorted(r.headers["x-thrifty-cache"] for r in raws)
    assert statuses == ["hit"] * 5 + ["miss"]
    # A follower served from the leader's store is recorded as a later identical request is: a hit.
    later = asyncio.run(embed_all([served.client()], [texts]))[0]
    assert later.headers["x-thrifty-cache"] == "hit" and len(sent_since(mock, before)) == 1
    want = served.row(later.headers["x-thrifty-request-id"])
    assert want["cost_usd"] == 0.0 and want["cache_saved_usd"] == pytest.approx(usd(texts))
    for r in raws:
        row = served.row(r.headers["x-thrifty-request-id"])
        if r.headers["x-thrifty-cache"] == "hit":
            assert row == want
        else:
            assert row["cost_usd"] == pytest.approx(usd(texts)) and row["n_attempts"] == 1


def test_overlapping_requests_send_each_distinct_input_once(served: Served, mock: Mock) -> None:
    batches = [["ov a", "ov b"], ["ov b", "ov c"], ["ov c", "ov d", "ov a"], ["ov e", "ov b"]]
    before = mock[1].recorder.total
    raws = asyncio.run(embed_all([served.client()] * len(batches), batches))
    calls = sent_since(mock, before)
    assert inputs_sent(calls) == Counter(["ov a", "ov b", "ov c", "ov d", "ov e"]), [x["body"]["input"] for x in calls]
    assert all(vectors_ok(r, t) for r, t in zip(raws, batches, strict=True)), raws
    # One call per request at most: its own missing inputs go together.
    assert len(calls) <= len(batches)
    for r, texts in zip(raws, batches, strict=True):
        row = served.row(r.headers["x-thrifty-request-id"])
        assert row["status"] == "ok" and row["n_attempts"] <= 1
        assert row["baseline_cost_usd"] == pytest.approx(usd(texts))  # what all its inputs would have cost


def test_a_failing_leader_releases_its_followers_at_once(served: Served, mock: Mock) -> None:
    texts = ["flaky chunk x", "flaky chunk y"]
    before = mock[1].recorder.total
    raws = asyncio.run(embed_all([served.client()] * 4, [texts] * 4, model="flaky"))
    failed = [r for r in raws if isinstance(r, Exception)]
    assert len(failed) == 1 and isinstance(failed[0], openai.InternalServerError), raws
    answered = [r for r in raws if not isinstance(r, Exception)]
    assert all(vectors_ok(r, texts, FLAKY) and r.headers["x-thrifty-cache"] == "miss" for r in answered)
    calls = sent_since(mock, before, FLAKY)
    assert len(calls) == 4
    # The followers waited for the leader's (failed) answer, then all sent at once, not in turn.
    first, rest = calls[0]["time"], [c["time"] for c in calls[1:]]
    assert min(rest) - first >= LATENCY_MS / 1000 * 0.8, [c["time"] - first for c in calls]
    assert max(rest) - min(rest) < LATENCY_MS / 1000 * 0.8, [c["time"] - first for c in calls]


def test_tenants_and_parameters_are_not_merged(served: Served, mock: Mock) -> None:
    texts = ["scoped chunk"]
    one, two = served.client("sk-tenant-one-000000"), served.client("sk-tenant-two-000000")
    before = mock[1].recorder.total
    raws = asyncio.run(embed_all([one, one, two, two], [texts] * 4))
    assert all(vectors_ok(r, texts) for r in raws), raws
    calls = sent_since(mock, before)
    assert inputs_sent(calls) == Counter({"scoped chunk": 2})  # once per tenant, never shared
    before = mock[1].recorder.total
    raws = asyncio.run(embed_all([served.client("sk-tenant-one-000000")] * 2, [texts] * 2, dimensions=16))
    calls = sent_since(mock, before)
    assert len(calls) == 1 and calls[0]["body"]["dimensions"] == 16  # another key: sent, once
    assert [len(r.parse().data[0].embedding) for r in raws] == [16, 16]


class HoldFirst(TcpProxy):
    """In front of the mock: the first connection's request never arrives (a provider that takes
    longer than the gateway's deadline); every later connection passes."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.released = threading.Event()
        self._accepted = 0
        super().__init__(target)

    def connection_state(self) -> Any:
        self._accepted += 1  # called by the one accepting thread
        return self._accepted == 1

    def forward(self, data: bytes, state: Any, to_target: bool) -> bool:
        if state and to_target:
            self.released.wait(20)
            return False
        return True

    def close(self) -> None:
        self.released.set()
        super().close()


def test_a_leader_cancelled_mid_call_releases_its_followers(mock: Mock, tmp_path: Path) -> None:
    # The leader's call hangs until server.request_timeout_s cancels it: its followers must then
    # send themselves at once, not wait out cache.lock_timeout_s (30 s) past their own deadline.
    timeout_s, stagger_s = 2.5, 1.5
    proxy = HoldFirst(("127.0.0.1", int(mock[0].url.rsplit(":", 1)[1])))
    texts = ["cancelled leader chunk"]
    try:
        for s in serve(tmp_path, f"http://127.0.0.1:{proxy.port}", {"request_timeout_s": timeout_s}):
            before = mock[1].recorder.total

            async def run(s: Served) -> list[Any]:
                leader = asyncio.ensure_future(embed_all([s.client()], [texts]))
                await asyncio.sleep(stagger_s)
                followers = await embed_all([s.client()] * 3, [texts] * 3)
                return [*(await leader), *followers]

            t0 = time.time()
            leader, *followers = asyncio.run(run(s))
            assert isinstance(leader, openai.APIStatusError) and "request_timeout_s" in leader.message, leader
            assert all(not isinstance(r, Exception) and vectors_ok(r, texts) for r in followers), followers
            calls = sent_since(mock, before)
            assert len(calls) == 3 and inputs_sent(calls) == Counter({texts[0]: 3})
            # They waited for the leader until it was cancelled, then went together.
            assert all(c["time"] - t0 >= timeout_s * 0.9 for c in calls), [c["time"] - t0 for c in calls]
    finally:
        proxy.close()


def test_a_follower_reads_what_a_quick_leader_stored_after_a_slow_one_timed_out(mock: Mock, tmp_path: Path) -> None:
    # A follower waits on two leaders: the first hangs past cache.lock_timeout_s, the second
    # stored its input long before. Only the hung leader's input may be sent again; the quick
    # one's is read from the cache (it was once waited for in turn, against a deadline already
    # spent, and paid for twice).
    lock_s = 1.0
    proxy = HoldFirst(("127.0.0.1", int(mock[0].url.rsplit(":", 1)[1])))
    slow, quick = "hung leader chunk", "quick leader chunk"
    try:
        for s in serve(tmp_path, f"http://127.0.0.1:{proxy.port}", {"request_timeout_s": 6}, lock_s):
            before = mock[1].recorder.total

            async def run(s: Served) -> list[Any]:
                first = asyncio.ensure_future(embed_all([s.client()], [[slow]]))
                await asyncio.sleep(0.1)
                second = asyncio.ensure_future(embed_all([s.client()], [[quick]]))
                await asyncio.sleep(0.1)  # both leaders in flight; the quick one ends at ~0.5 s
                follower = await embed_all([s.client()], [[slow, quick]])
                return [*(await first), *(await second), *follower]

            _, second, follower = asyncio.run(run(s))
            assert not isinstance(second, Exception) and vectors_ok(second, [quick]), second
            assert not isinstance(follower, Exception) and vectors_ok(follower, [slow, quick]), follower
            calls = sent_since(mock, before)
            assert inputs_sent(calls) == Counter({slow: 1, quick: 1}), [c["body"]["input"] for c in calls]
    finally:
        proxy.close()
