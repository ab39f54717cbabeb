"""Upgrading a running deployment in place from adb415a: what that release wrote keeps working.

The tests cannot run adb415a's code, so each writes the data shapes that release wrote (ledger
rows, Redis vector-list records without the ``P:vo`` pop count) directly, as noted in each one,
and reads them with this release. The upgrade itself was checked for real, old and new gateways
side by side on one Redis and one PostgreSQL (docs/deployment.md, "Upgrading").
"""

from __future__ import annotations

import dataclasses
import json
import struct
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import thrifty.cost
from fixtures.rows import att, req
from thrifty.config import load_config
from thrifty.ledger.report import batch_savings
from thrifty.ledger.store import SQLiteStore
from thrifty.types import Usage


class _Clock(datetime):
    """``datetime`` whose ``now`` is a fixed instant: the hour a report is run."""

    at = datetime(2026, 11, 20, 18, 30, tzinfo=UTC)

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return cls.at


def test_batch_savings_of_past_calls_do_not_change_with_the_hour_of_the_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A provider Batch API call adb415a recorded (an ``attempts`` row with ``batch = 1``, its
    stored batch cost, at 10:30 UTC, at DeepSeek's full price) reported after the upgrade, whose
    catalog prices ``deepseek-chat`` under its provider by the hour (off-peak, 18:30 UTC, half
    price): ``thrifty report``'s batch line re-priced it at the hour the report ran, so the same
    history saved less in an evening report. It is priced at the hour the call ran."""
    cfg = load_config({"providers": {"ds": {"base_url": "https://api.deepseek.com/v1"}},
                       "models": {"deepseek-chat": {"provider": "ds"}}, "ledger": {"enabled": False}}, env={})
    catalog = cfg.build_catalog()
    price = catalog.get("deepseek-chat").price  # type: ignore[union-attr]
    assert price is not None and price.genai_ref is not None  # priced per call, at the call's time
    ran = datetime(2026, 11, 20, 10, 30, tzinfo=UTC).timestamp()
    store = SQLiteStore(str(tmp_path / "ledger.db"))
    store.write([req(1, "deepseek-chat", 0.5, 1.0, ts=ran, batch=True)],
                [dataclasses.replace(att(1), ts=ran, model="deepseek-chat", provider="ds", prompt_tokens=1_000_000,
                                     completion_tokens=1_000_000, cost_usd=0.5, batch=True)])
    try:
        monkeypatch.setattr(thrifty.cost, "datetime", _Clock)
        _Clock.at = datetime(2026, 11, 20, 10, 45, tzinfo=UTC)  # a quarter of an hour after the batch
        morning = batch_savings(store, catalog)
        _Clock.at = datetime(2026, 11, 20, 18, 30, tzinfo=UTC)  # the same day's evening: off-peak
        evening = batch_savings(store, catalog)
    finally:
        store.close()
    full = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    with thrifty.cost.priced_at(datetime(2026, 11, 20, 18, 30, tzinfo=UTC)):
        off_peak = thrifty.cost.price_tokens(full, price)
    assert off_peak is not None and off_peak < morning.full_price_usd  # the premise: the price varies by hour
    assert morning.requests == evening.requests == 1
    assert evening.full_price_usd == pytest.approx(morning.full_price_usd)
    assert evening.saved_usd == pytest.approx(morning.saved_usd) and morning.saved_usd > 0


# -- the Redis semantic cache: vector lists adb415a wrote --------------------------------------------

_HEADER = struct.Struct("<dI")  # adb415a's vector record: expiry, length of {key, text}, then the vector


def _old_record(key: str, text: str, expires: float, vec: np.ndarray) -> bytes:
    """A vector record exactly as adb415a's ``RedisBackend.add_vector`` packed it."""
    head = json.dumps({"key": key, "text": text}).encode()
    return _HEADER.pack(expires, len(head)) + head + vec.astype("<f4").tobytes()


@pytest.mark.redis
async def test_vector_list_written_by_the_previous_release_is_read_once_and_trimmed(redis_url: str) -> None:
    """adb415a appended records with a plain RPUSH + PEXPIREAT and kept no ``P:vo`` count. This
    release reads such a list, then its first append gives the list a count and pops its expired
    head: a reader that had read the list before reads it again from its head (its position
    means nothing in the counted list), and the semantic index still holds each live vector
    once, the expired one never."""
    from thrifty.cache.backends.base import EntryMeta
    from thrifty.cache.backends.redis import RedisBackend
    from thrifty.cache.semantic import SemanticCache
    from thrifty.embeddings import build_embedder

    ns = "upgrade-" + uuid.uuid4().hex[:8]
    backend = RedisBackend(redis_url, prefix=ns)
    cache = SemanticCache(backend, build_embedder("lexical"), refresh_s=0)
    scope = "tenant|model"
    index_ns = cache.index_ns(scope)
    client = backend._redis
    vkey = backend._k("v", index_ns)
    now = time.time()
    texts = {"gone": ("an answer that has expired", now - 5), "a": ("how do I reset my password", now + 600),
             "b": ("where is the billing page", now + 600)}
    for key, (text, expires) in texts.items():  # what adb415a wrote, oldest first
        await client.rpush(vkey, _old_record(key, text, expires, await cache.embed(text)))
        await client.pexpireat(vkey, int(max(e for _, e in texts.values()) * 1000))
    try:
        slot = await cache.slot(scope)
        assert sorted(slot.seen) == ["a", "b", "gone"]
        assert not await client.exists(backend._k("vo", index_ns))
        later = EntryMeta("c", "tenant", "model", time.time(), time.time() + 600)
        await backend.add_vector(index_ns, later, "how do I change my email", await cache.embed("how do I change my email"))
        assert await client.llen(vkey) == 3  # the expired head was popped
        assert await client.exists(backend._k("vo", index_ns))
        slot = await cache.slot(scope)  # read again from the head: a, b, c; only c is new
        assert sorted(slot.seen) == ["a", "b", "c", "gone"]
        assert sorted(slot.index.keys) == ["a", "b", "c", "gone"]  # nothing twice
        fresh = SemanticCache(backend, build_embedder("lexical"), refresh_s=0)
        assert sorted((await fresh.slot(scope)).seen) == ["a", "b", "c"]  # a new instance: live ones only
    finally:
        await backend.clear()
        await backend.aclose()
