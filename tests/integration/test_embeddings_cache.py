"""The per-input embeddings cache (``cache.embeddings``) through a real gateway on 127.0.0.1 in
front of the mock upstream, driven by the official openai SDK: a re-indexed corpus pays only for
its new chunks (the upstream receives exactly those, the answer is merged back in the client's
order), a full hit calls nothing, tenants and vector formats never share entries, the request
controls apply as on chat, and the ledger and ``thrifty cache stats`` show what was saved."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from typer.testing import CliRunner

from thrifty.cache import embeddings as embeddings_cache
from thrifty.cache.backends.base import EntryMeta
from thrifty.cache.backends.memory import MemoryBackend
from thrifty.cache.backends.redis import RedisBackend
from thrifty.cache.backends.sqlite import SQLiteBackend
from thrifty.cache.config import CacheConfig
from thrifty.cache.embeddings import INLINE_MAX
from thrifty.cli.main import build_app
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.embeddings import DEFAULT_DIMENSIONS, vector
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.tokens import count_text

SEED = 23
UPSTREAM = "text-embedding-3-small"
PRICE_IN = 0.02  # USD per million input tokens
Mock = tuple[RunningServer, Any]


@pytest.fixture(scope="module")
def mock() -> Iterator[Mock]:
    app = create_mock(MockConfig.from_dict({"seed": SEED, "models": {"broken": {"faults": {"status": 500}}}}))
    with run_in_thread(app) as server:
        yield server, app.state.mock


def write_config(tmp: Path, mock_url: str, cache: dict[str, Any] | None, auth: bool = False) -> Path:
    cfg: dict[str, Any] = {
        "providers": {"mock": {"base_url": mock_url + "/v1", "api_key": "sk-upstream-embcache-0000",
                               "max_retries": 0}},
        "models": {"embed": {"provider": "mock", "upstream_model": UPSTREAM, "aliases": ["emb"],
                             "price": {"input": PRICE_IN, "output": 0}},
                   "broken": {"provider": "mock", "price": {"input": 1, "output": 0}}},
        "ledger": {"path": "ledger.db"},
        "auth": {"enabled": auth, "admin_key": "admin-embcache-key-1234567890"},
    }
    if cache is not None:
        cfg["cache"] = cache
    path = tmp / "thrifty.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Served:
    def __init__(self, gw: Gateway, server: RunningServer, config: Path) -> None:
        self.gw, self.server, self.config = gw, server, config

    def client(self, key: str = "sk-client-embcache-0000") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.server.url + "/v1", api_key=key, max_retries=0, timeout=20)

    def row(self, request_id: str) -> dict[str, Any]:
        self.gw.flush()
        assert self.gw.ledger is not None
        cols = ("cost_usd", "baseline_cost_usd", "cache_status", "cache_saved_usd", "prompt_tokens", "n_attempts",
                "status", "strategy", "served_model")
        (row,) = self.gw.ledger.store.query(f"SELECT {', '.join(cols)} FROM requests WHERE request_id = ?",
                                            [request_id])
        return dict(zip(cols, row, strict=True))


def serve(tmp: Path, mock: Mock, cache: dict[str, Any] | None, auth: bool = False) -> Iterator[Served]:
    path = write_config(tmp, mock[0].url, cache, auth)
    gw = Gateway.from_config(path)
    with run_in_thread(gw.app()) as server:
        yield Served(gw, server, path)
    gw.close()


@pytest.fixture(scope="module")
def served(mock: Mock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(tmp_path_factory.mktemp("embcache"), mock, {"path": "cache.db", "embeddings": {"enabled": True}})


def upstream_calls(mock: Mock) -> int:
    return int(mock[1].recorder.total)


def last_input(mock: Mock) -> Any:
    return mock[1].recorder.last(1)[0]["body"]["input"]


def embed(c: openai.OpenAI, inputs: Any, **kw: Any) -> tuple[Any, Any]:
    raw = c.embeddings.with_raw_response.create(model="embed", input=inputs, **kw)
    return raw, raw.parse()


def usd(texts: list[str]) -> float:
    return sum(count_text(t) for t in texts) * PRICE_IN / 1e6


def test_batch_pays_only_for_new_inputs_then_a_full_hit_calls_nothing(served: Served, mock: Mock) -> None:
    c = served.client()
    corpus = [f"chunk {i} of the nightly corpus about topic {i * 7}" for i in range(10)]
    raw, first = embed(c, corpus)  # the SDK asks for base64 and decodes it
    assert raw.headers["x-thrifty-cache"] == "miss" and last_input(mock) == corpus
    new = ["a chunk added today", "another new chunk, at the end"]
    grown = [*corpus[:3], new[0], *corpus[3:], new[1]]
    before = upstream_calls(mock)
    raw, second = embed(c, grown)
    assert raw.headers["x-thrifty-cache"] == "partial"
    assert upstream_calls(mock) == before + 1 and last_input(mock) == new  # exactly the 2, in order
    assert [d.index for d in second.data] == list(range(12))
    # The same vectors as a fresh uncached call, and as the upstream makes them, in the client's order.
    _, fresh = embed(c, grown, extra_headers={"x-thrifty-cache": "no-store"})
    for got, want, text in zip(second.data, fresh.data, grown, strict=True):
        assert got.embedding == pytest.approx(want.embedding, abs=1e-7)
        assert got.embedding == pytest.approx(vector(SEED, UPSTREAM, text, DEFAULT_DIMENSIONS), abs=1e-6)
    assert [d.embedding for d in second.data[:3]] == [d.embedding for d in first.data[:3]]
    assert second.usage.prompt_tokens == sum(count_text(t) for t in new)
    row = served.row(raw.headers["x-thrifty-request-id"])
    assert row["cache_status"] == "partial" and row["n_attempts"] == 1 and row["status"] == "ok"
    assert row["cost_usd"] == pytest.approx(usd(new)) and row["baseline_cost_usd"] == pytest.approx(usd(grown))
    assert row["cache_saved_usd"] == pytest.approx(usd(corpus))

    before = upstream_calls(mock)
    raw, third = embed(c, list(reversed(grown)))
    assert raw.headers["x-thrifty-cache"] == "hit" and upstream_calls(mock) == before
    assert float(raw.headers["x-thrifty-cost-usd"]) == 0.0 and raw.headers["x-thrifty-model"] == "embed"
    assert third.model == UPSTREAM and third.usage.prompt_tokens == 0 and third.usage.total_tokens == 0
    assert [d.index for d in third.data] == list(range(12))
    assert [d.embedding for d in third.data] == [d.embedding for d in reversed(second.data)]
    row = served.row(raw.headers["x-thrifty-request-id"])
    assert (row["cache_status"], row["n_attempts"], row["cost_usd"], row["prompt_tokens"]) == ("hit", 0, 0.0, 0)
    assert row["baseline_cost_usd"] == pytest.approx(usd(grown)) and row["served_model"] == "embed"
    # An alias names the same model: its entries are shared.
    hit = served.client().embeddings.with_raw_response.create(model="emb", input=corpus[0])
    assert hit.headers["x-thrifty-cache"] == "hit"


def test_token_id_inputs_and_a_single_string(served: Served, mock: Mock) -> None:
    c = served.client()
    raw, _ = embed(c, [[11, 12, 13], [14, 15]], encoding_format="float")
    assert raw.headers["x-thrifty-cache"] == "miss"
    raw, out = embed(c, [[11, 12, 13], [99], [14, 15]], encoding_format="float")
    assert raw.headers["x-thrifty-cache"] == "partial" and last_input(mock) == [[99]]
    assert out.data[1].embedding == pytest.approx(vector(SEED, UPSTREAM, [99], DEFAULT_DIMENSIONS), abs=1e-12)
    assert out.usage.prompt_tokens == 1
    # One input alone, as a string, is the same input as inside a list.
    embed(c, ["one lone sentence"], encoding_format="float")
    raw, out = embed(c, "one lone sentence", encoding_format="float")
    assert raw.headers["x-thrifty-cache"] == "hit" and len(out.data) == 1


def test_dimensions_and_encoding_format_are_in_the_key(served: Served, mock: Mock) -> None:
    c = served.client()
    texts = ["format matters", "so do dimensions"]
    assert embed(c, texts, encoding_format="float")[0].headers["x-thrifty-cache"] == "miss"
    assert embed(c, texts, encoding_format="float")[0].headers["x-thrifty-cache"] == "hit"
    assert embed(c, texts, encoding_format="base64")[0].headers["x-thrifty-cache"] == "miss"
    raw, out = embed(c, texts, encoding_format="float", dimensions=16)
    assert raw.headers["x-thrifty-cache"] == "miss" and mock[1].recorder.last(1)[0]["body"]["dimensions"] == 16
    raw, again = embed(c, texts, encoding_format="float", dimensions=16)
    assert raw.headers["x-thrifty-cache"] == "hit" and [len(d.embedding) for d in again.data] == [16, 16]
    assert [d.embedding for d in again.data] == [d.embedding for d in out.data]
    # `user` only names the caller: the same entries.
    assert embed(c, texts, encoding_format="float", user="u-1")[0].headers["x-thrifty-cache"] == "hit"


def test_another_tenant_misses(served: Served, mock: Mock) -> None:
    texts = ["tenant scoped chunk"]
    embed(served.client("sk-tenant-a-000000"), texts)
    assert embed(served.client("sk-tenant-a-000000"), texts)[0].headers["x-thrifty-cache"] == "hit"
    before = upstream_calls(mock)
    assert embed(served.client("sk-tenant-b-000000"), texts)[0].headers["x-thrifty-cache"] == "miss"
    assert upstream_calls(mock) == before + 1


def test_virtual_keys_are_tenants(mock: Mock, tmp_path: Path) -> None:
    for s in serve(tmp_path, mock, {"path": "cache.db", "embeddings": {"enabled": True}}, auth=True):
        assert s.gw.ops.keys is not None
        _, one = s.gw.ops.keys.create("team-one")
        _, two = s.gw.ops.keys.create("team-two")
        assert embed(s.client(one), ["a shared query"])[0].headers["x-thrifty-cache"] == "miss"
        assert embed(s.client(one), ["a shared query"])[0].headers["x-thrifty-cache"] == "hit"
        assert embed(s.client(two), ["a shared query"])[0].headers["x-thrifty-cache"] == "miss"


def test_request_controls(served: Served, mock: Mock) -> None:
    c = served.client()
    texts = ["controlled chunk one", "controlled chunk two"]
    raw, _ = embed(c, texts, extra_headers={"x-thrifty-cache": "no-store"})
    assert raw.headers["x-thrifty-cache"] == "bypass"
    assert served.row(raw.headers["x-thrifty-request-id"])["cache_status"] == "bypass"
    assert embed(c, texts)[0].headers["x-thrifty-cache"] == "miss"  # no-store stored nothing
    raw, _ = embed(c, texts, extra_body={"thrifty": {"cache": False}})
    assert raw.headers["x-thrifty-cache"] == "bypass"
    assert "thrifty" not in mock[1].recorder.last(1)[0]["body"]  # thrifty's own keys never go upstream
    raw, _ = embed(c, texts, extra_body={"cache": False})
    assert raw.headers["x-thrifty-cache"] == "bypass" and "cache" not in mock[1].recorder.last(1)[0]["body"]
    before = upstream_calls(mock)
    assert embed(c, texts, extra_headers={"x-thrifty-cache": "no-cache"})[0].headers["x-thrifty-cache"] == "miss"
    assert upstream_calls(mock) == before + 1
    assert embed(c, texts, extra_headers={"cache-control": "max-age=3600"})[0].headers["x-thrifty-cache"] == "hit"
    with pytest.raises(openai.BadRequestError) as refused:
        embed(c, texts, extra_headers={"x-thrifty-cache": "sometimes"})
    assert "x-thrifty-cache" in refused.value.message
    with pytest.raises(openai.BadRequestError):
        embed(c, texts, extra_body={"cache": "false"})


def test_failed_call_stores_nothing_and_corrupt_entries_miss(served: Served, mock: Mock, ) -> None:
    c = served.client()
    with pytest.raises(openai.InternalServerError):
        c.embeddings.create(model="broken", input=["never stored"])
    before = upstream_calls(mock)
    with pytest.raises(openai.InternalServerError):
        c.embeddings.create(model="broken", input=["never stored"])
    assert upstream_calls(mock) == before + 1
    texts = ["to be corrupted"]
    embed(c, texts)
    db = sqlite3.connect(served.config.parent / "cache.db")
    with db:
        db.execute("UPDATE cache_entries SET value = CAST('TE1:garbage' AS BLOB)")
    db.close()
    raw, out = embed(c, texts, encoding_format="float")
    assert raw.headers["x-thrifty-cache"] == "miss"
    assert out.data[0].embedding == pytest.approx(vector(SEED, UPSTREAM, texts[0], DEFAULT_DIMENSIONS), abs=1e-12)


def test_off_unless_turned_on(mock: Mock, tmp_path: Path) -> None:
    for s in serve(tmp_path, mock, {"path": "cache.db"}):
        before = upstream_calls(mock)
        for _ in range(2):
            raw, _ = embed(s.client(), ["not cached by default"])
            assert "x-thrifty-cache" not in raw.headers
            assert s.row(raw.headers["x-thrifty-request-id"])["cache_status"] is None
        assert upstream_calls(mock) == before + 2


def test_stats_and_clear_see_the_entries(mock: Mock, tmp_path: Path) -> None:
    for s in serve(tmp_path, mock, {"path": "cache.db", "embeddings": {"enabled": True}}):
        c = s.client()
        embed(c, ["s1", "s2"])
        embed(c, ["s1", "s2", "s3"])
        embed(c, ["s3"])
        s.gw.flush()
        runner = CliRunner()
        out = runner.invoke(build_app(), ["cache", "stats", "--config", str(s.config), "--json"])
        assert out.exit_code == 0, out.output
        stats = json.loads(out.output)
        total = stats["requests"][0]
        assert (total["hits"], total["misses"], total["partials"]) == (1, 1, 1)
        assert total["saved_usd"] == pytest.approx(usd(["s1", "s2", "s3"]))
        assert stats["store"]["entries"] == 3
        table = runner.invoke(build_app(), ["cache", "stats", "--config", str(s.config)])
        assert "partial" in table.output, table.output
        report = runner.invoke(build_app(), ["report", "--config", str(s.config), "--format", "json"])
        assert json.loads(report.output)[0]["saved_usd"] == pytest.approx(usd(["s1", "s2", "s3"]))
        cleared = runner.invoke(build_app(), ["cache", "clear", "--config", str(s.config), "--model", "embed"])
        assert cleared.output.strip() == "deleted 3 entries", cleared.output
        assert embed(c, ["s3"])[0].headers["x-thrifty-cache"] == "miss"


@pytest.mark.redis
def test_redis_backend(mock: Mock, tmp_path: Path, redis_url: str) -> None:
    cache = {"backend": "redis", "redis_url": redis_url, "namespace": f"embcache-{tmp_path.name}",
             "embeddings": {"enabled": True}}
    for s in serve(tmp_path, mock, cache):
        c = s.client()
        assert embed(c, ["r1", "r2"])[0].headers["x-thrifty-cache"] == "miss"
        raw, out = embed(c, ["r0", "r1", "r2"], encoding_format="float")
        assert raw.headers["x-thrifty-cache"] == "miss"  # another format: another key
        raw, again = embed(c, ["r1", "r0", "r3", "r2"], encoding_format="float")
        assert raw.headers["x-thrifty-cache"] == "partial" and last_input(mock) == ["r3"]
        assert [again.data[i].embedding for i in (1, 0, 3)] == [d.embedding for d in out.data]


def test_an_input_repeated_in_one_request_is_sent_and_paid_once(served: Served, mock: Mock) -> None:
    # RAG corpora repeat boilerplate chunks (headers, disclaimers): each distinct missing input
    # goes upstream once, its vector answers every place it appears in the request.
    c = served.client()
    embed(c, ["repeated b"], encoding_format="float")
    before = upstream_calls(mock)
    raw, out = embed(c, ["repeated a", "repeated b", "repeated a"], encoding_format="float")
    assert raw.headers["x-thrifty-cache"] == "partial" and upstream_calls(mock) == before + 1
    assert last_input(mock) == ["repeated a"] and out.usage.prompt_tokens == count_text("repeated a")
    assert [d.index for d in out.data] == [0, 1, 2] and out.data[0].embedding == out.data[2].embedding
    assert out.data[0].embedding == pytest.approx(vector(SEED, UPSTREAM, "repeated a", DEFAULT_DIMENSIONS), abs=1e-12)
    row = served.row(raw.headers["x-thrifty-request-id"])
    assert row["cost_usd"] == pytest.approx(usd(["repeated a"]))
    # Saved: the cached input and the repeat that was not sent; the baseline pays all three.
    assert row["cache_saved_usd"] == pytest.approx(usd(["repeated b", "repeated a"]))
    assert row["baseline_cost_usd"] == pytest.approx(usd(["repeated a", "repeated b", "repeated a"]))
    # A whole miss with repeats: one upstream input per distinct text, the answer in the client's shape.
    raw, out = embed(c, ["fresh x", "fresh x"], encoding_format="float")
    assert raw.headers["x-thrifty-cache"] == "miss" and last_input(mock) == ["fresh x"]
    assert [d.index for d in out.data] == [0, 1] and out.data[0].embedding == out.data[1].embedding
    assert embed(c, ["fresh x"], encoding_format="float")[0].headers["x-thrifty-cache"] == "hit"


@pytest.mark.redis
def test_redis_batch_larger_than_the_connection_pool_hits_whole(mock: Mock, tmp_path: Path, redis_url: str) -> None:
    # One read per input, all at once, took more connections than the pool holds: input 101
    # onward failed, and the failure paused the whole cache (chat too) as if Redis were down.
    cache = {"backend": "redis", "redis_url": redis_url, "namespace": f"embcache-big-{tmp_path.name}",
             "embeddings": {"enabled": True}}
    corpus = [f"big batch chunk {i}" for i in range(300)]
    for s in serve(tmp_path, mock, cache):
        c = s.client()
        assert embed(c, corpus)[0].headers["x-thrifty-cache"] == "miss"
        before = upstream_calls(mock)
        raw, out = embed(c, corpus)
        assert raw.headers["x-thrifty-cache"] == "hit" and upstream_calls(mock) == before and len(out.data) == 300
        assert embed(c, ["one more after the batch"])[0].headers["x-thrifty-cache"] == "miss"
        assert embed(c, ["one more after the batch"])[0].headers["x-thrifty-cache"] == "hit"  # not paused


@pytest.mark.parametrize("kind", ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_backend_batch_reads_and_writes_keep_single_entry_semantics(kind: str, tmp_path: Path,
                                                                    request: pytest.FixtureRequest) -> None:
    # get_many/put_many are what one lookup/store per request use: the same answers as get/put,
    # past SQLite's IN-list chunk and Redis's connection pool, expired entries missing.
    async def run() -> None:
        backend: Any
        if kind == "memory":
            backend = MemoryBackend()
        elif kind == "sqlite":
            backend = SQLiteBackend(str(tmp_path / "c.db"))
        else:
            backend = RedisBackend(request.getfixturevalue("redis_url"), prefix=f"embbatch-{tmp_path.name}")
        now = time.time()
        await backend.put_many([(EntryMeta(f"k{i}", "t", "m", now, now + 600), f"v{i}".encode()) for i in range(1200)])
        if kind == "sqlite":  # expiry is the store's rule on SQLite (Redis and memory: the entry's)
            await backend.put(EntryMeta("old", "t", "m", now - 20, now - 10), b"gone")
        keys = ["absent", *[f"k{i}" for i in range(1200)], "old", "k7"]
        got = await backend.get_many(keys)
        assert got[0] is None and got[1:1201] == [f"v{i}".encode() for i in range(1200)] and got[-1] == b"v7"
        assert got[1201] is None
        assert got == [await backend.get(k) for k in keys]
        assert await backend.get_many([]) == []
        await backend.aclose()

    asyncio.run(run())


@pytest.mark.parametrize(("n", "off_loop"), [(INLINE_MAX + 1, True), (3, False)])
def test_a_large_batch_is_decoded_and_encoded_off_the_event_loop(n: int, off_loop: bool, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Checksumming and parsing 2,048 vectors of 1,536 floats took ~0.3 s (encoding ~0.16 s) on
    # the loop, freezing every other request; a small batch stays inline (a thread hop costs more).
    threads: dict[str, set[int]] = {"encode": set(), "decode": set()}
    real_encode, real_decode = embeddings_cache.encode, embeddings_cache.decode

    def spy_encode(*args: Any, **kw: Any) -> bytes:
        threads["encode"].add(threading.get_ident())
        return real_encode(*args, **kw)

    def spy_decode(*args: Any, **kw: Any) -> Any:
        threads["decode"].add(threading.get_ident())
        return real_decode(*args, **kw)

    monkeypatch.setattr(embeddings_cache, "encode", spy_encode)
    monkeypatch.setattr(embeddings_cache, "decode", spy_decode)

    async def run() -> None:
        backend = SQLiteBackend(str(tmp_path / "c.db"))
        cache = embeddings_cache.EmbeddingsCache(CacheConfig.model_validate({"embeddings": {"enabled": True}}), backend)
        items = [(f"key{i}", {"object": "embedding", "embedding": [0.5, float(i)]}, 3) for i in range(n)]
        assert await cache.store("t", "embed", UPSTREAM, items) == n
        found = await cache.lookup([k for k, _, _ in items], "t", None)
        assert [e.item if e is not None else None for e in found] == [item for _, item, _ in items]
        loop_thread = threading.get_ident()
        for stage in ("encode", "decode"):
            assert threads[stage], stage
            assert (loop_thread not in threads[stage]) is off_loop, stage
        await backend.aclose()

    asyncio.run(run())
