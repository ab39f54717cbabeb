"""The exact cache of ``POST /v1/embeddings``, one entry per input.

A RAG corpus re-indexed every night is mostly unchanged, and its users repeat queries: a batch of
100 chunks of which 95 were embedded before costs 5 inputs. One model's embeddings are
deterministic, so an exact match is safe; the cache is still off unless ``cache.embeddings``
turns it on (a provider that updates a model under the same name would put two vector spaces in
one index, and nothing in a vector says which one it came from).

The key of one input (``input_key``): the deployment namespace, the tenant (the same rule as
chat's: docs/caching.md "What is in the key"), what embeds it (the catalog model's provider, its
base URL and upstream model id: two names of one model share entries, a model pointed elsewhere
misses), every body parameter but ``model``, ``input``, ``user`` and thrifty's own (so
``dimensions`` and ``encoding_format`` keep float and base64 vectors apart, as returned, and a
parameter thrifty does not know can only cause misses) and the input item itself: a string or a
token-id array. Only its hash is stored, never the text, nor any key.

Entries live in the backend chat's cache uses (same namespace, eviction, ``thrifty cache clear``
and ``stats``), under their own format (``TE1:``, a checksum, JSON with ``"kind": "embedding"``):
a truncated, foreign or corrupt value, another tenant's or an expired one reads as a miss.

Concurrent requests missing the same input send it once, per key (``EmbeddingsCache.join``, on
chat's ``SingleFlight``): the key carries the tenant, so tenants never wait on one another.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from thrifty import fastjson
from thrifty.cache.backends.base import CacheBackend, EntryMeta
from thrifty.cache.entry import frame, unframe
from thrifty.cache.flight import Flight, SingleFlight, wait_all
from thrifty.cache.keys import canonical, canonical_numbers
from thrifty.cache.policy import _directives, _option
from thrifty.errors import ThriftyError
from thrifty.pipeline.context import RequestContext
from thrifty.types import THRIFTY_BODY_KEYS

if TYPE_CHECKING:
    from thrifty.cache.config import CacheConfig
    from thrifty.catalog import ModelInfo

log = logging.getLogger("thrifty.cache")

MAGIC = b"TE1:"
KIND = "embedding"
# te2: the scope is hashed once per request, then each input's raw bytes with it (``input_key``).
KEY_VERSION = "te2"
# Past this many inputs a batch is decoded (lookup) and encoded (store) on a worker thread: a
# 2,048-vector batch takes ~0.3 s to checksum and parse, during which the loop would serve no
# other request; below it the thread hop costs more than the work.
INLINE_MAX = 64
# Body fields that are not part of what an input embeds to: the model and inputs are keyed on
# their own, ``user`` only identifies the caller.
_NOT_PARAMS = frozenset({"model", "input", "user"}) | THRIFTY_BODY_KEYS


@dataclass(frozen=True)
class EmbeddingsDecision:
    """What one request may do with the cache (``decide``)."""

    read: bool
    write: bool
    max_age_s: float | None
    reason: str

    @property
    def bypass(self) -> bool:
        return not self.read and not self.write


def decide(ctx: RequestContext) -> EmbeddingsDecision:
    """Chat's per-request controls (cache/policy.py), parsed by the same functions so an unknown
    value is refused the same way: body ``cache: false`` / ``thrifty.cache: false``, ``no-store``
    and ``pragma: no-cache`` bypass; ``no-cache`` and ``max-age=0`` refresh; ``max-age=N`` limits
    the age of what is served. Embeddings have no temperature, so determinism is not asked for."""
    opt = _option(ctx)
    words, max_age = _directives(ctx)
    if opt is False:
        return EmbeddingsDecision(False, False, None, "request option cache: false")
    if "no-store" in words:
        return EmbeddingsDecision(False, False, None, "no-store")
    if "pragma" in words:
        return EmbeddingsDecision(False, False, None, "pragma: no-cache")
    return EmbeddingsDecision("no-cache" not in words and max_age != 0, True, max_age, "cacheable")


def items_of(value: Any) -> list[Any]:
    """The inputs of a validated ``input``: a string or one token-id array is a single input."""
    if isinstance(value, str) or all(isinstance(v, int) for v in value):
        return [value]
    return list(value)


def key_scope(*, namespace: str, tenant: str, info: ModelInfo, base_url: str | None, body: dict[str, Any]) -> bytes:
    """Everything of the key (see the module doc) but the input, hashed once per request (a batch
    of 2,048 inputs shares it); the API key is never part of it."""
    params = {k: canonical_numbers(v) for k, v in body.items() if k not in _NOT_PARAMS}
    parts = {"v": KEY_VERSION, "kind": KIND, "ns": namespace, "tenant": tenant, "provider": info.provider,
             "base_url": base_url, "upstream": info.upstream_model, "params": params}
    return hashlib.sha256(canonical(parts)).digest()


def input_key(scope: bytes, item: Any) -> str:
    """The key of one input under ``scope`` (``key_scope``): its UTF-8 bytes for a string, its
    canonical JSON for a token-id array, after a tag byte so the two kinds never collide (the
    scope digest has a fixed length, so nothing else can be ambiguous)."""
    h = hashlib.sha256(scope)
    # surrogatepass: a lone surrogate a JSON body may carry must key, not fail the request.
    h.update(b"s" + item.encode("utf-8", "surrogatepass") if isinstance(item, str) else b"t" + canonical(item))
    return h.hexdigest()


def encode(key: str, tenant: str, model: str, item: dict[str, Any], tokens: int, created: float,
           expires: float) -> bytes:
    """``item``: one ``data`` element as the provider sent it, without its ``index``; ``model``:
    the model name the provider's answer carried (a full hit answers with it); ``tokens``: the
    input's offline token count (a hit prices it without tokenising again)."""
    payload = fastjson.dumps({"kind": KIND, "key": key, "tenant": tenant, "model": model, "item": item,
                              "tokens": tokens, "created": created, "expires": expires})
    return frame(MAGIC, payload)


@dataclass(frozen=True)
class Stored:
    item: dict[str, Any]
    model: str
    created: float
    tokens: int


def decode(raw: bytes | None, *, key: str, tenant: str, now: float) -> Stored | None:
    """The entry under ``key`` for ``tenant``; None if absent, expired, corrupt or foreign."""
    payload = unframe(MAGIC, raw)
    if payload is None:
        return None
    try:
        data = fastjson.loads(payload)
        if data.get("kind") != KIND or data.get("key") != key or data.get("tenant") != tenant:
            return None
        item, model, tokens = data["item"], data["model"], data["tokens"]
        created, expires = float(data["created"]), float(data["expires"])
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if expires <= now or not isinstance(item, dict) or not isinstance(model, str) \
            or not isinstance(item.get("embedding"), list | str) or not isinstance(tokens, int) \
            or isinstance(tokens, bool) or tokens < 0:
        return None
    return Stored(item, model, created, tokens)


class EmbeddingsCache:
    """Reads and writes per-input entries in the cache backend chat's cache uses."""

    def __init__(self, cfg: CacheConfig, backend: CacheBackend) -> None:
        self.cfg = cfg
        self.backend = backend
        self.flights = SingleFlight()  # per input key, as chat's per request (``join``)

    @property
    def namespace(self) -> str:
        return self.cfg.namespace

    async def join(self, todo: Iterable[str], tenant: str, max_age_s: float | None,
                   read: bool) -> tuple[dict[str, Stored], Flight]:
        """Single flight per input: of the missing keys ``todo``, the ones another request in this
        process is computing are waited for and read from the store once it has written them; the
        rest are led by the flight returned (registered at once, so later requests wait on it
        rather than send them too). Returns the entries the leaders stored, and that flight, now
        leading every key of ``todo`` not among them: the caller sends those in one call, then
        ends the flight (``flights.finish_many``). A leader that failed, was cancelled or stored
        nothing releases its waiters at once, who then lead (and send) its keys themselves, as
        chat's followers do. A request that does not read the cache (``no-cache``) waits for
        nobody, as on chat."""
        todo = list(todo)
        leaders = {k: f for k in todo if (f := self.flights.current(k)) is not None} if read else {}
        flight = self.flights.lead_many([k for k in todo if k not in leaders])
        if not leaders:
            return {}, flight
        try:
            distinct = {id(f): f for f in leaders.values()}  # a leader of several keys is waited once
            stored = await wait_all(distinct.values(), self.cfg.lock_timeout_s)
            done = {fid for fid, ok in zip(distinct, stored, strict=True) if ok}
            ready = [k for k, f in leaders.items() if id(f) in done]
            entries = await self.lookup(ready, tenant, max_age_s) if ready else []
            served = {k: e for k, e in zip(ready, entries, strict=True) if e is not None}
            self.flights.lead_many([k for k in leaders if k not in served], flight)
        except BaseException:
            # Cancelled while waiting (the deadline): the keys this request leads must not keep
            # their waiters until lock_timeout_s.
            self.flights.finish_many(todo, flight, stored=False)
            raise
        return served, flight

    async def lookup(self, keys: list[str], tenant: str, max_age_s: float | None) -> list[Stored | None]:
        """The entry of each key, in order, read in one backend call (one read per key at once
        took a Redis connection each: past the pool's size they failed and paused the cache)."""
        unique = list(dict.fromkeys(keys))  # a chunk repeated in the batch is read once
        try:
            raws = dict(zip(unique, await self.backend.get_many(unique), strict=True))
        except Exception:  # a broken store is a miss, never a failed request
            log.warning("embeddings cache read failed", exc_info=True)
            return [None] * len(keys)
        now = time.time()
        if len(unique) > INLINE_MAX:
            entries = await asyncio.to_thread(_decode_all, raws, tenant, now)
        else:
            entries = _decode_all(raws, tenant, now)
        return [e if e is not None and (max_age_s is None or now - e.created <= max_age_s) else None
                for e in (entries[k] for k in keys)]

    async def store(self, tenant: str, model_name: str, answer_model: str,
                    items: list[tuple[str, dict[str, Any], int]]) -> int:
        """Store ``(key, data element, token count)`` triples under ``model_name`` (the catalog
        model, what ``cache clear --model`` matches) in one backend write; returns how many were
        stored. A failing store is logged."""
        now = time.time()
        expires = now + self.cfg.embeddings.ttl_s
        try:
            if len(items) > INLINE_MAX:
                batch = await asyncio.to_thread(_encode_all, items, tenant, model_name, answer_model, now, expires)
            else:
                batch = _encode_all(items, tenant, model_name, answer_model, now, expires)
        except TypeError as exc:  # orjson refuses what JSON cannot hold (an integer past 64 bits)
            log.warning("embeddings cache store failed: the answer cannot be stored (%s)", exc)
            return 0
        try:
            await self.backend.put_many(batch)
        except ThriftyError as exc:
            log.warning("embeddings cache store failed: %s", exc.message)
            return 0
        return len(batch)


def _decode_all(raws: dict[str, bytes | None], tenant: str, now: float) -> dict[str, Stored | None]:
    """``decode`` of each key's value (one call, so a large batch takes one thread hop)."""
    return {k: decode(raw, key=k, tenant=tenant, now=now) for k, raw in raws.items()}


def _encode_all(items: list[tuple[str, dict[str, Any], int]], tenant: str, model_name: str, answer_model: str,
                now: float, expires: float) -> list[tuple[EntryMeta, bytes]]:
    """The backend rows of ``EmbeddingsCache.store``'s triples (one call, as ``_decode_all``)."""
    return [(EntryMeta(key, tenant, model_name, now, expires),
             encode(key, tenant, answer_model, item, tokens, now, expires)) for key, item, tokens in items]


def answer_items(response: Any, sent: int) -> list[dict[str, Any]] | None:
    """The provider's ``data`` elements in input order, without ``index``; None when the answer
    does not hold exactly one vector for each of the ``sent`` inputs (it cannot be merged or stored)."""
    data = response.get("data") if isinstance(response, dict) else None
    if not isinstance(data, list) or len(data) != sent:
        return None
    out: list[dict[str, Any] | None] = [None] * sent
    for element in data:
        index = element.get("index") if isinstance(element, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < sent or out[index] is not None \
                or not isinstance(element.get("embedding"), list | str):
            return None
        out[index] = {k: v for k, v in element.items() if k != "index"}
    return [e for e in out if e is not None]
