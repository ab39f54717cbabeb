"""Keys, entries, policy, stream assembly, backends, index and verifiers of the cache, one by one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from thrifty.cache.assemble import assemble, storable
from thrifty.cache.backends.base import EntryMeta
from thrifty.cache.backends.memory import MemoryBackend
from thrifty.cache.backends.sqlite import SQLiteBackend
from thrifty.cache.config import CacheConfig
from thrifty.cache.entry import CacheEntry, decode_entry
from thrifty.cache.index import VectorIndex
from thrifty.cache.keys import make_key
from thrifty.cache.policy import decide
from thrifty.cache.verifier import LearnedVerifier, RuleVerifier, fit_model, threshold_at
from thrifty.errors import ConfigError
from thrifty.pipeline.context import RequestContext
from thrifty.providers.function import chat_response
from thrifty.streaming import response_to_chunks
from thrifty.types import ChatRequest


def req(**kw: Any) -> ChatRequest:
    body = {"model": "m", "temperature": 0, "messages": [{"role": "system", "content": "S"},
                                                         {"role": "user", "content": kw.pop("text", "q")}], **kw}
    return ChatRequest.from_body(body)


def key(r: ChatRequest, tenant: str = "t", model: str = "m") -> Any:
    return make_key(r, tenant=tenant, model=model)


def test_key_is_stable_and_scoped() -> None:
    base = key(req())
    assert base == key(req())
    assert base.exact != key(req(), tenant="u").exact and base.scope != key(req(), tenant="u").scope
    assert base.exact != key(req(), model="n").exact
    assert base.exact != key(req(top_p=0.9)).exact
    # The semantic scope ignores only the final question.
    assert base.scope == key(req(text="another question")).scope
    assert base.exact != key(req(text="another question")).exact
    assert base.query == "q"


def test_semantic_query_only_for_plain_text_single_choice() -> None:
    assert key(req(n=2)).query is None
    assert key(req(tools=[{"type": "function", "function": {"name": "f"}}])).query is None
    assert key(req(text="")).query is None


def entry(k: str = "k", tenant: str = "t", expires: float | None = None) -> CacheEntry:
    now = time.time()
    return CacheEntry(key=k, scope="s", tenant=tenant, model="m", served_model="m",
                      response=chat_response("m", "hi"), usage={"prompt_tokens": 1}, cost_usd=0.1,
                      baseline_cost_usd=1.0, created=now, expires=expires or now + 60)


def test_entry_round_trip_and_every_kind_of_damage_is_none() -> None:
    raw = entry().encode()
    now = time.time()
    assert decode_entry(raw, key="k", tenant="t", now=now) is not None
    assert decode_entry(raw, key="k", tenant="other", now=now) is None
    assert decode_entry(raw, key="other", tenant="t", now=now) is None
    assert decode_entry(raw[:-5], key="k", tenant="t", now=now) is None
    assert decode_entry(raw.replace(b"hi", b"ho"), key="k", tenant="t", now=now) is None
    assert decode_entry(b"\x00\xff garbage", key="k", tenant="t", now=now) is None
    assert decode_entry(None, key="k", tenant="t", now=now) is None
    assert decode_entry(entry(expires=now - 1).encode(), key="k", tenant="t", now=now) is None


def test_policy_headers_and_options() -> None:
    cfg = CacheConfig()

    def d(headers: dict[str, str] | None = None, **kw: Any) -> Any:
        return decide(cfg, RequestContext(request=req(**kw), headers=headers or {}))

    assert d().read and d().write
    assert d(headers={"x-thrifty-cache": "no-store"}).bypass
    no_cache = d(headers={"cache-control": "no-cache"})
    assert not no_cache.read and no_cache.write
    assert d(headers={"cache-control": "max-age=30"}).max_age_s == 30
    assert not d(headers={"cache-control": "max-age=0"}).read
    assert d(temperature=0.5).bypass and not d(temperature=0.5, cache=True).bypass


def test_stream_assembly_matches_the_response_and_needs_every_finish() -> None:
    resp = chat_response("m", "a fairly long answer " * 10)
    chunks = response_to_chunks(resp, chunk_chars=7)
    rebuilt = assemble(chunks)
    assert rebuilt is not None
    assert rebuilt["choices"][0]["message"]["content"] == resp["choices"][0]["message"]["content"]
    assert rebuilt["usage"] == resp["usage"]
    assert assemble(chunks[:-3]) is None  # no finish_reason: the stream did not end
    assert storable(rebuilt, tool_calls=False)
    filtered = {**resp, "choices": [{**resp["choices"][0], "finish_reason": "content_filter"}]}
    assert not storable(filtered, tool_calls=False) and not storable({"error": {"message": "x"}}, tool_calls=True)


def test_a_streamed_refusal_keeps_its_null_content_and_every_field() -> None:
    """One replay for cascades, cache hits, in-process providers and providers that ignored
    ``stream``: a refusal's null content stays null (the first delta's "" made the SDK's message
    an empty text beside the refusal), and reasoning, refusal and logprobs all arrive."""
    resp = {"id": "c1", "object": "chat.completion", "created": 1, "model": "m", "service_tier": "default",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": {"content": []},
                         "message": {"role": "assistant", "content": None, "refusal": "I can't help with that.",
                                     "reasoning_content": "thinking " * 20}}]}
    chunks = response_to_chunks(resp, chunk_chars=16)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert all(c["service_tier"] == "default" for c in chunks)
    assert chunks[-1]["choices"][0]["logprobs"] == {"content": []}
    rebuilt = assemble(chunks)
    assert rebuilt is not None
    msg = rebuilt["choices"][0]["message"]
    assert msg["content"] is None and msg["refusal"] == "I can't help with that."
    assert msg["reasoning_content"] == "thinking " * 20


@pytest.fixture(params=["sqlite", "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return SQLiteBackend(str(tmp_path / "c.db"), max_entries=1000) if request.param == "sqlite" else MemoryBackend()


async def test_backend_put_get_clear_filters(backend: Any) -> None:
    now = time.time()
    for i, (tenant, model, age) in enumerate([("a", "m1", 10), ("a", "m2", 1000), ("b", "m1", 10)]):
        await backend.put(EntryMeta(f"k{i}", tenant, model, now - age, now + 60), b"v%d" % i)
    assert await backend.get("k1") == b"v1" and await backend.get("nope") is None
    assert await backend.clear(older_than=now - 100) == 1
    assert await backend.clear(tenant="a", model="m1") == 1
    assert await backend.get("k2") == b"v2"
    assert (await backend.stats())["entries"] == 1
    assert await backend.clear() == 1
    await backend.aclose()


async def test_sqlite_evicts_oldest_beyond_max_entries(tmp_path: Path) -> None:
    b = SQLiteBackend(str(tmp_path / "c.db"), max_entries=100)
    now = time.time()
    b.put_many_sync([(EntryMeta(f"k{i}", "t", "m", now + i, now + 600), b"x") for i in range(300)])
    await b.put(EntryMeta("new", "t", "m", now + 1000, now + 600), b"y")
    stats = await b.stats()
    assert stats["entries"] <= 100 and await b.get("new") == b"y" and await b.get("k0") is None
    await b.aclose()


async def test_vector_log_cursor(backend: Any) -> None:
    now = time.time()
    for i in range(3):
        await backend.add_vector("ns", EntryMeta(f"k{i}", "t", "m", now, now + 60), f"q{i}", np.ones(4) * i)
    rows, cur = await backend.vectors_since("ns", 0)
    assert [r.key for r in rows] == ["k0", "k1", "k2"]
    await backend.add_vector("ns", EntryMeta("k3", "t", "m", now, now + 60), "q3", np.ones(4))
    more, _ = await backend.vectors_since("ns", cur)
    assert [r.key for r in more] == ["k3"] and (await backend.vectors_since("other", 0))[0] == []


async def test_lock_is_exclusive_until_released(backend: Any) -> None:
    assert await backend.try_lock("k", 5)
    assert not await backend.try_lock("k", 5)
    await backend.unlock("k")
    assert await backend.try_lock("k", 5)


def test_index_exact_and_ann_agree_on_the_nearest() -> None:
    pytest.importorskip("faiss", reason="the `ann` extra (faiss-cpu) is not installed")
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(500, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    exact = VectorIndex(32, ann="none")
    ann = VectorIndex(32, ann="auto", ann_min_entries=10**9)
    for ix in (exact, ann):
        ix.add([str(i) for i in range(500)], [""] * 500, vecs, [0.0] * 500)
    assert ann.build_ann_now() and ann.uses_ann
    for i in (0, 17, 499):
        assert exact.search(vecs[i], 1)[0][0] == i == ann.search(vecs[i], 1)[0][0]
    ann.add(["late"], [""], vecs[:1] * -1, [0.0])
    assert ann.search(-vecs[0], 1)[0][0] == 500


def test_rule_verifier_vetoes_near_misses() -> None:
    # Through the lookup's scoring, where the hard vetoes apply before any verifier, with every
    # candidate at similarity 1.0 (one vector for all): only a veto or a changed word refuses.
    from thrifty.cache.semantic import SemanticCache
    from thrifty.embeddings import build_embedder

    cands = ["How do I disable dark mode?", "How do I enable dark mode", "How do I enable dark mode in 2023?",
             "Why not enable dark mode?"]
    cache = SemanticCache(MemoryBackend(), build_embedder("lexical"))
    one = np.eye(1, cache.embedder.dim, dtype=np.float32)
    index = VectorIndex(cache.embedder.dim, ann="none")
    index.add(cands, cands, np.repeat(one, len(cands), axis=0), [1e12] * len(cands))
    _, texts, _, scores = cache.candidates(index, "How do I enable dark mode?", one[0], RuleVerifier(threshold=0.9))
    served = {t: bool(s > 0) for t, s in zip(texts, scores, strict=True)}
    assert served == dict(zip(cands, [False, True, False, False], strict=True))


def test_learned_verifier_saves_as_json_and_loads(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 49))
    y = (x[:, -1] > 0).astype(int)
    v = LearnedVerifier(fit_model(x, y, "logreg"), {"<unk>": 1.0}, 0.5, "lexical-test", {"model": "logreg"})
    v.save(tmp_path / "v.json")
    back = LearnedVerifier.load(tmp_path / "v.json")
    s1 = v.score("a b", ["a b c", "x"], np.array([0.9, 0.1]))
    assert np.allclose(s1, back.score("a b", ["a b c", "x"], np.array([0.9, 0.1])))
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ConfigError):
        LearnedVerifier.load(tmp_path / "bad.json")


def test_threshold_serves_at_most_the_allowed_share() -> None:
    neg = np.linspace(0, 1, 1000)
    t = threshold_at(neg, 0.005)
    assert np.mean(neg >= t) <= 0.005 and np.mean(neg >= np.nextafter(neg[-6], 0)) > 0.005
