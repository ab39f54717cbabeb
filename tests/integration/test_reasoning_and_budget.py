"""Current reasoning and hybrid model families, and a key's budget corrected in the background.

Reasoning families: a real gateway on 127.0.0.1 whose cascade judge is each family's model on
the mock upstream (which records the bodies it receives), driven by the real ``openai`` client.
Before these families, Gemini 2.5/3, Grok 3 mini and Grok 4 were sent ``max_tokens: 4`` and
``temperature: 0`` (their reasoning spent the 4 tokens: an empty grade, learned only after a
wasted call per process), and the hybrid models (Qwen3, DeepSeek V4, GLM-4.5+) thought through
every judge call although each has a switch that turns thinking off.

Budget: a ``background: true`` response is created at an estimate (no usage yet) and its key's
budget counter is corrected when a retrieve or the reconciler sees it finished
(``BudgetStage.correct``). The correction was applied twice when Redis ran the SETTLE script but
its reply was lost (the connection dropped): the limiter's retry on a new connection ran it
again (a dropped ADMIT reply likewise reserved the estimate twice, one of them never released).
And a counter seeded from the ledger after the amendment had written the real cost there, but
before the correction reached the counter (a restarted instance, or a Redis that lost the key,
seeding on the first request of the key meanwhile), counted the real cost and the correction
both. Real Redis (``make services-up``) and SQLite, through a proxy that drops one reply.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import pytest

from fixtures.judge_config import judge_cascade_config
from fixtures.served import reset, sent, serving
from fixtures.tcp_proxy import TcpProxy
from thrifty.config import Config
from thrifty.gateway import Gateway
from thrifty.internal_calls import family_of, hybrid_of
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.ops import redis_limits
from thrifty.ops.budgets import BudgetStage
from thrifty.ops.keys import VirtualKey
from thrifty.ops.ratelimit import MemoryLimiter, Ticket

MC = "Which option is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel"
GRADE = {"pattern": r"Grade \(0-10\)", "answer": "9"}
# OpenAI-style: a 400 for max_tokens or a temperature but 1, reasoning spent out of the limit first.
STRICT = {"reasoning_model": True, "reasoning_tokens": 100, "answers": [GRADE]}
THINKS = {"reasoning_tokens": 100, "answers": [GRADE]}  # takes max_tokens, reasons out of it
PLAIN = {"answers": [GRADE]}  # answers at once (a hybrid whose switch turned thinking off)
JUDGES: dict[str, dict[str, Any]] = {
    "gemini-2.5-flash": STRICT, "gemini-3-pro-preview": STRICT,
    "grok-3-mini": STRICT, "grok-4.3": STRICT,
    # grok-4 and its fast variants answer an error to reasoning_effort (xAI's reasoning guide).
    "grok-4-fast-reasoning": {**STRICT, "reject_params": ["reasoning_effort"]},
    "kimi-k2-thinking": THINKS,
    "qwen3-8b": PLAIN, "deepseek-v4-flash": PLAIN, "glm-4.6": PLAIN,
    # Not reasoning by default: sent plain.
    "gemini-2.5-flash-lite": PLAIN, "grok-4-fast-non-reasoning": PLAIN, "grok-3": PLAIN,
    "deepseek-chat": PLAIN, "qwen3-235b-a22b-instruct-2507": PLAIN, "claude-sonnet-4-5": PLAIN,
    # A hybrid served where the switch is ignored (it thinks anyway), and one where it is refused.
    "qwen3-32b": THINKS, "glm-4.5-air": {**PLAIN, "reject_params": ["thinking"]},
}
MOCK: dict[str, Any] = {"models": {
    "cheap": {"answers": [{"pattern": "Which option", "answer": "B"}]},
    "premium": {"answers": [{"pattern": "Which option", "answer": "B) whale"}]},
    "bg-up": {"reasoning_tokens": [24, 24]},  # background responses and chat for the budget tests
    **JUDGES,
}}
ROOM = 4 + 1024  # a grade's 4 tokens plus the default reasoning_budget


@pytest.fixture(scope="module")
def upstream() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as server:
        yield server


def judged_by(tmp: Path, upstream: RunningServer, judge: str) -> dict[str, Any]:
    return judge_cascade_config(tmp, upstream, judge)


def judge_bodies(upstream: RunningServer, tmp: Path, judge: str) -> list[dict[str, Any]]:
    """What the judge model received while one cascade request was graded (served by the cheap
    tier, so the grade was read)."""
    reset(upstream)
    with serving(judged_by(tmp, upstream, judge)) as (_, client):
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": MC}])
        assert raw.headers["x-thrifty-model"] == "cheap"
    return [{k: v for k, v in b.items() if k not in ("model", "messages")} for b in sent(upstream, judge)]


REASONING = {"max_completion_tokens": ROOM, "reasoning_effort": "low"}
OFF_QWEN = {"max_tokens": 4, "temperature": 0, "enable_thinking": False}
OFF_THINKING = {"max_tokens": 4, "temperature": 0, "thinking": {"type": "disabled"}}
PLAIN_CALL = {"max_tokens": 4, "temperature": 0}


@pytest.mark.parametrize(("judge", "family", "hybrid", "body"), [
    ("gemini-2.5-flash", "gemini-2.5+", None, REASONING),
    ("gemini-3-pro-preview", "gemini-2.5+", None, REASONING),
    ("grok-3-mini", "grok-3-mini", None, REASONING),
    ("grok-4.3", "grok-4.3", None, REASONING),
    ("grok-4-fast-reasoning", "grok-4", None, {"max_completion_tokens": ROOM}),
    ("kimi-k2-thinking", "thinking", None, {"max_tokens": ROOM}),
    ("qwen3-8b", None, "qwen3", OFF_QWEN),
    ("deepseek-v4-flash", None, "deepseek-v4", OFF_THINKING),
    ("glm-4.6", None, "glm-4.5+", OFF_THINKING),
    ("gemini-2.5-flash-lite", None, None, PLAIN_CALL),
    ("grok-4-fast-non-reasoning", None, None, PLAIN_CALL),
    ("grok-3", None, None, PLAIN_CALL),
    ("deepseek-chat", None, None, PLAIN_CALL),
    ("qwen3-235b-a22b-instruct-2507", None, None, PLAIN_CALL),
    ("claude-sonnet-4-5", None, None, PLAIN_CALL),
])
def test_each_family_is_recognised_and_sent_its_parameters(upstream: RunningServer, tmp_path: Path, judge: str,
                                                           family: str | None, hybrid: str | None,
                                                           body: dict[str, Any]) -> None:
    found, hyb = family_of(judge), hybrid_of(judge)
    assert (found.name if found else None, hyb.name if hyb else None) == (family, hybrid)
    # One call, the right way at once: no lesson paid for.
    assert judge_bodies(upstream, tmp_path, judge) == [body]


@pytest.mark.parametrize(("name", "family", "hybrid"), [
    ("google/gemini-2.5-pro:free", "gemini-2.5+", None), ("gemini-3.1-flash-lite-preview", "gemini-2.5+", None),
    ("gemini-2.0-flash", None, None), ("gemini-2.5-flash-image-preview", None, None),
    ("gemini-3-pro-image-preview", None, None), ("grok-3-mini-fast", "grok-3-mini", None),
    ("grok-4-0709", "grok-4", None), ("grok-4-1-fast-reasoning", "grok-4", None),
    ("grok-4.20-reasoning", "grok-4", None), ("grok-4.20-non-reasoning", None, None),
    ("Qwen/Qwen3-235B-A22B", None, "qwen3"), ("qwen3.5-plus", None, "qwen3"),
    ("Qwen/Qwen3-235B-A22B-Thinking-2507", "thinking", None), ("qwen3-coder-plus", None, None),
    ("deepseek-flash", None, "deepseek-v4"), ("deepseek-reasoner", "deepseek-reasoner", None),
    ("glm-5", None, "glm-4.5+"), ("z-ai/glm-4.5-air", None, "glm-4.5+"), ("glm-4-plus", None, None),
    ("kimi-k2-instruct", None, None),
])
def test_family_names(name: str, family: str | None, hybrid: str | None) -> None:
    found, hyb = family_of(name), hybrid_of(name)
    assert (found.name if found else None, hyb.name if hyb else None) == (family, hybrid)


def test_a_hybrid_that_thinks_anyway_is_sent_the_reasoning_way(upstream: RunningServer, tmp_path: Path) -> None:
    # A server that ignores enable_thinking (it thinks): the empty grade cut off at the limit
    # teaches the reasoning way, with room, without the switch it ignored.
    assert judge_bodies(upstream, tmp_path, "qwen3-32b") == [OFF_QWEN, {"max_tokens": ROOM}]


def test_a_hybrid_whose_switch_is_refused_is_sent_plain_without_it(upstream: RunningServer, tmp_path: Path) -> None:
    # A 400 naming the switch: sent again at once without it.
    assert judge_bodies(upstream, tmp_path, "glm-4.5-air") == [OFF_THINKING, PLAIN_CALL]


def test_reasoning_false_sends_a_hybrid_plain_without_its_switch(upstream: RunningServer, tmp_path: Path) -> None:
    cfg = judged_by(tmp_path, upstream, "qwen3-8b")
    cfg["models"]["qwen3-8b"]["reasoning"] = False
    reset(upstream)
    with serving(cfg) as (_, client):
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": MC}])
    assert [{k: b[k] for k in b if k not in ("model", "messages")} for b in sent(upstream, "qwen3-8b")] == \
        [PLAIN_CALL]


# ---------------------------------------------------------------------------------------------
# A key's budget corrected in the background

ADMIN = "admin-reasoning-budget-0000"
IN, OUT = 2.0, 8.0  # USD per million tokens


class ReplyDropper(TcpProxy):
    """Forwards 127.0.0.1:port to Redis; ``arm(marker)`` makes the connection that next sends a
    command containing ``marker`` lose Redis's reply to it: Redis runs the command, then the
    connection closes before the client reads the answer (what a Redis restart, a failover or a
    network cut at that moment does)."""

    def __init__(self, port: int) -> None:
        self.marker: bytes | None = None
        self.dropped = 0
        super().__init__(("127.0.0.1", port))

    def arm(self, marker: bytes) -> None:
        self.marker = marker

    def connection_state(self) -> threading.Event:
        return threading.Event()  # set: this connection's next reply is lost

    def forward(self, data: bytes, state: Any, to_target: bool) -> bool:
        if to_target and self.marker is not None and self.marker in data:
            self.marker = None
            state.set()
        elif not to_target and state.is_set():
            self.dropped += 1  # Redis answered: the client never sees it
            return False
        return True


def script_sha(script: str) -> bytes:
    """What EVALSHA sends for ``script`` (redis-py calls the registered scripts by their SHA1)."""
    return hashlib.sha1(script.encode()).hexdigest().encode()


@pytest.fixture
def dropper(redis_url: str) -> Iterator[ReplyDropper]:
    proxy = ReplyDropper(int(redis_url.rsplit(":", 1)[1].split("/", 1)[0]))
    try:
        yield proxy
    finally:
        proxy.close()


def budget_config(tmp: Path, upstream: RunningServer, redis_url: str | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "providers": {"a": {"base_url": upstream.url + "/v1", "max_retries": 0}},
        "models": {"gpt": {"provider": "a", "upstream_model": "bg-up", "price": {"input": IN, "output": OUT}}},
        "default_model": "gpt",
        "ledger": {"path": str(tmp / "ledger.db")},
        "auth": {"enabled": True, "admin_key": ADMIN},
    }
    if redis_url is not None:
        cfg["redis_url"] = redis_url
        cfg["auth"]["redis_prefix"] = "rb" + secrets.token_hex(4)
    return cfg


def usage_of(url: str, key_id: str) -> dict[str, Any]:
    shown = httpx.get(f"{url}/admin/keys/{key_id}", headers={"authorization": f"Bearer {ADMIN}"})
    assert shown.status_code == 200, shown.text
    usage: dict[str, Any] = shown.json()["usage"]
    return usage


def ledger_spent(gw: Gateway, key_id: str) -> float:
    gw.flush()
    assert gw.ledger is not None
    rows = gw.ledger.store.query("SELECT SUM(cost_usd) FROM requests WHERE key_id = ?", (key_id,))
    return float(rows[0][0])


def client_of(url: str, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0, timeout=30)


@pytest.mark.redis
def test_a_lost_settle_reply_does_not_apply_the_correction_twice(upstream: RunningServer, tmp_path: Path,
                                                                 redis_url: str, dropper: ReplyDropper) -> None:
    gw = Gateway.from_config(budget_config(tmp_path, upstream, f"redis://127.0.0.1:{dropper.port}/0"))
    try:
        assert gw.ops.keys is not None
        key, secret = gw.ops.keys.create("tenant-a", budget_usd=5.0)
        with run_in_thread(gw.app()) as server:
            c = client_of(server.url, secret)
            created = c.responses.create(model="gpt", input="Describe a mountain in detail.", background=True)
            estimate = ledger_spent(gw, key.key_id)
            assert usage_of(server.url, key.key_id)["spent_usd"] == pytest.approx(estimate, rel=1e-9)
            # Redis applies the correction, then the connection drops before its reply arrives.
            dropper.arm(script_sha(redis_limits.SETTLE))
            done = c.responses.retrieve(created.id)
            assert done.status == "completed" and dropper.dropped == 1
            real = ledger_spent(gw, key.key_id)
            assert real > estimate * 2  # the estimate had no output
            usage = usage_of(server.url, key.key_id)
            # Before: estimate + 2 x (real - estimate), the retry on a new connection ran SETTLE again.
            assert usage["spent_usd"] == pytest.approx(real, rel=1e-9)
            assert usage["reserved_usd"] == pytest.approx(0.0, abs=1e-12)
    finally:
        gw.close()


@pytest.mark.redis
def test_a_lost_admit_reply_does_not_reserve_twice(upstream: RunningServer, tmp_path: Path, redis_url: str,
                                                   dropper: ReplyDropper) -> None:
    gw = Gateway.from_config(budget_config(tmp_path, upstream, f"redis://127.0.0.1:{dropper.port}/0"))
    try:
        assert gw.ops.keys is not None
        key, secret = gw.ops.keys.create("tenant-a", budget_usd=5.0, rpm=100)
        with run_in_thread(gw.app()) as server:
            c = client_of(server.url, secret)
            c.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])  # seeds the key
            dropper.arm(script_sha(redis_limits.ADMIT))
            c.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi again"}])
            assert dropper.dropped == 1
            usage = usage_of(server.url, key.key_id)
            # Before: the second admission's estimate stayed reserved for the rest of the month
            # (settled once, reserved twice), and the request was counted twice against rpm.
            assert usage["reserved_usd"] == pytest.approx(0.0, abs=1e-12)
            assert usage["requests_this_minute"] == 2
            assert usage["spent_usd"] == pytest.approx(ledger_spent(gw, key.key_id), rel=1e-9)
    finally:
        gw.close()


def _during_the_correction(gw: Gateway, action: Callable[[], None]) -> None:
    """Run ``action`` (in a thread, awaited) the first time the budget correction reads the key,
    i.e. after the amendment wrote the real cost to the ledger and before the correction reaches
    the counter: the window a concurrent request of the key falls into."""
    stage = gw.ops.budget_stage
    assert stage is not None
    original = stage.correct
    armed = [True]

    async def correct(key_id: str, created: float, delta_usd: float) -> None:
        keys = stage.keys
        real_aget = keys.aget

        async def aget(k: str) -> Any:
            if armed[0]:
                armed[0] = False
                await asyncio.to_thread(action)
            return await real_aget(k)

        keys.aget = aget  # type: ignore[method-assign]
        try:
            await original(key_id, created, delta_usd)
        finally:
            keys.aget = real_aget  # type: ignore[method-assign]

    stage.correct = correct  # type: ignore[method-assign]


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_a_counter_seeded_after_the_amendment_does_not_count_the_correction_again(
        backend: str, upstream: RunningServer, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    redis_url = request.getfixturevalue("redis_url") if backend == "redis" else None
    cfg = budget_config(tmp_path, upstream, redis_url)
    first = Gateway.from_config(cfg)
    try:
        assert first.ops.keys is not None
        key, secret = first.ops.keys.create("tenant-a", budget_usd=5.0)
        with run_in_thread(first.app()) as server:
            created = client_of(server.url, secret).responses.create(
                model="gpt", input="Describe a mountain in detail.", background=True)
        first.flush()
    finally:
        first.close()
    if redis_url is not None:  # Redis lost the counter meanwhile (a restart without persistence)
        import redis

        r = redis.Redis.from_url(redis_url)
        assert r.delete(*r.keys(cfg["auth"]["redis_prefix"] + ":budget:*")) == 1
        r.close()
    # The instance restarted (deploys happen while background responses run): no counter in memory.
    second = Gateway.from_config(cfg)
    try:
        with run_in_thread(second.app()) as server:
            c = client_of(server.url, secret)
            # The key's next request arrives while the retrieve is correcting: it seeds the
            # counter from the ledger, which holds the real cost already.
            _during_the_correction(second, lambda: c.chat.completions.create(
                model="gpt", messages=[{"role": "user", "content": "hi"}]) and None)
            done = c.responses.retrieve(created.id)
            assert done.status == "completed"
            usage = usage_of(server.url, key.key_id)
            # Before: the real cost counted by the seed, and its difference from the estimate again.
            assert usage["spent_usd"] == pytest.approx(ledger_spent(second, key.key_id), rel=1e-9)
            assert usage["reserved_usd"] == pytest.approx(0.0, abs=1e-12)
    finally:
        second.close()


class _Keys:
    """The one key the budget stage reads (``aget``), running ``during`` the first time it is read:
    inside the correction, after it began."""

    def __init__(self, key: VirtualKey, during: Callable[[], Awaitable[None]]) -> None:
        self.key = key
        self.during: Callable[[], Awaitable[None]] | None = during

    async def aget(self, key_id: str) -> VirtualKey:
        during, self.during = self.during, None
        if during is not None:
            await during()
        return self.key


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_two_first_requests_seeding_around_a_correction_keep_the_first_seeds_time(
        backend: str, request: pytest.FixtureRequest) -> None:
    """Two first requests of a key seed its counter at once, the correction beginning between
    their seeds: the first read the ledger before the amendment, the second after. The counter
    holds the first seed's spend (the first to land), so the correction is owed to it. Before, the
    process remembered only the latest seed's time (the second's, after the correction began) and
    skipped the correction: the counter kept the estimate, under the real spend."""
    ledger = [1.0]  # the key's spend: the background response at its estimate, until amended
    started: list[asyncio.Event] = [asyncio.Event(), asyncio.Event()]
    release: list[asyncio.Event] = [asyncio.Event(), asyncio.Event()]

    async def seed(key_id: str, since: float) -> float:
        n = sum(e.is_set() for e in started)
        spent = ledger[0]  # what the ledger holds as the read begins
        started[n].set()
        await release[n].wait()
        return spent

    limiter: Any
    if backend == "redis":
        limiter = redis_limits.RedisLimiter(request.getfixturevalue("redis_url"), seed,
                                            prefix=f"race-{secrets.token_hex(4)}")
    else:
        limiter = MemoryLimiter(seed)
    key = VirtualKey("k-race", "race", "sk-race", 10.0, "month", None, None, (), 0.0)
    now = time.time()
    first = asyncio.create_task(limiter.admit(key, 0.5, 10, now))
    await started[0].wait()
    await asyncio.sleep(0.01)
    ledger[0] = 3.0  # the amendment: the real cost is in the ledger, the correction follows
    second: list[asyncio.Task[Ticket]] = []

    async def during() -> None:  # the correction has begun
        await asyncio.sleep(0.01)
        second.append(asyncio.create_task(limiter.admit(key, 0.5, 10, now)))
        await started[1].wait()
        release[0].set()
        await first  # the first seed lands: its counter holds the spend before the amendment

    catalog = Config.model_validate({"models": {"m": {"provider": "p"}},
                                     "providers": {"p": {"base_url": "http://x"}}}).build_catalog()
    stage = BudgetStage(cast(Any, _Keys(key, during)), limiter, catalog)
    try:
        await stage.correct(key.key_id, now, 2.0)
        release[1].set()
        await second[0]
        usage = await limiter.usage(key, now)
        assert usage.spent_usd == pytest.approx(3.0)  # the first seed's 1.0 and the correction
        assert usage.reserved_usd == pytest.approx(1.0)  # both requests' estimates
    finally:
        await limiter.aclose()
