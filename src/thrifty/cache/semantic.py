"""The semantic cache: find the nearest earlier question in the same scope, serve it only if verified.

A scope (keys.py) is everything but the final user question: tenant, model, system prompt,
earlier turns and parameters. Each scope has its own vector index, keyed also by the embedder's
name since vectors of different embedders do not compare. The index lives in process memory,
is filled from the backend's vector log on first use and re-read every ``refresh_s`` so
several gateway processes see each other's entries. A candidate that a hard veto separates from
the question (vetoes.py: other numbers, operators, non-ASCII words, quoted text, code...) is
never served, whatever the verifier (the vetoes are checked here, once: no verifier checks them);
the others are scored by the hit verifier (verifier.py), and those whose score clears the route's
threshold are offered best first, from one search (the stage serves the first whose entry it can
still read). The verifier sees only the two question texts and their similarity: never labels,
never answers.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from thrifty.cache.alignment import Tokens
from thrifty.cache.backends.base import CacheBackend, EntryMeta, VectorRow
from thrifty.cache.config import DEFAULT_TOP_K
from thrifty.cache.index import VectorIndex
from thrifty.cache.verifier import HitVerifier
from thrifty.cache.vetoes import vetoed
from thrifty.embeddings import Embedder
from thrifty.embeddings.base import TokenEmbedder, TokenVectors
from thrifty.errors import ConfigError

# Embedders slower than this per call (sentence models) run on a worker thread.
_INLINE_EMBEDDERS = ("lexical",)
# Token vectors kept per process for a verifier with alignment features: the cached questions a
# lookup retrieves recur, and each costs a forward pass of the sentence model (~6 KB each).
_TOKEN_MEMO = 4096

# A lookup's neighbours: index positions, texts and similarities of the live top-k entries, nearest first.
Found = tuple[np.ndarray, list[str], np.ndarray]


@dataclass(frozen=True)
class SemanticMatch:
    key: str
    text: str
    similarity: float
    score: float


@dataclass
class _Slot:
    index: VectorIndex
    seen: set[str]
    cursor: int = 0
    refreshed: float = 0.0


def allowed(query: str, texts: list[str]) -> np.ndarray:
    """Which candidate texts no hard veto separates from ``query`` (vetoes.py)."""
    return np.array([not vetoed(query, t) for t in texts], dtype=bool)


class SemanticCache:
    def __init__(self, backend: CacheBackend, embedder: Embedder, *, top_k: int = DEFAULT_TOP_K, ann: str = "auto",
                 ann_min_entries: int = 10_000, refresh_s: float = 1.0, max_indexes: int | None = None,
                 max_vectors: int | None = None) -> None:
        self.backend = backend
        self.embedder = embedder
        self.top_k = top_k
        self.ann = ann
        self.ann_min_entries = ann_min_entries
        self.refresh_s = refresh_s
        # The in-memory indexes, least recently used first. A gateway meets a new scope for every
        # new tenant, system prompt and conversation, and the backend prunes expired and surplus
        # entries but the index of a scope only ever grows: over weeks they held every vector ever
        # cached. So at most ``max_indexes`` indexes and ``max_vectors`` vectors in all are kept
        # (None: no bound, for offline evaluation); the least recently used are dropped, and a
        # dropped scope is re-read from the backend, which holds only live entries, when it is
        # next asked for.
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self.max_indexes = max_indexes
        self.max_vectors = max_vectors
        self._vectors = 0  # vectors in all kept indexes
        self._inline = embedder.name.startswith(_INLINE_EMBEDDERS)
        self._tokens: OrderedDict[str, TokenVectors] = OrderedDict()
        self._tokens_lock = threading.Lock()

    def index_ns(self, scope: str) -> str:
        return hashlib.sha256(f"{scope}|{self.embedder.name}".encode()).hexdigest()[:40]

    async def embed(self, text: str) -> np.ndarray:
        if self._inline:
            return self.embedder.embed([text])[0]
        return (await asyncio.to_thread(self.embedder.embed, [text]))[0]

    async def slot(self, scope: str) -> _Slot:
        ns = self.index_ns(scope)
        slot = self._slots.get(ns)
        if slot is None:
            slot = self._slots[ns] = _Slot(VectorIndex(self.embedder.dim, ann=self.ann,
                                                       ann_min_entries=self.ann_min_entries), set())
        else:
            self._slots.move_to_end(ns)
        now = time.monotonic()
        if now - slot.refreshed >= self.refresh_s:
            slot.refreshed = now
            rows, slot.cursor = await self.backend.vectors_since(ns, slot.cursor)
            # One vector per key: a key stored again (asked after its TTL, refreshed) is the same
            # question, so it renews the expiry of the vector already held, by this instance or another.
            latest: dict[str, VectorRow] = {}
            for r in rows:
                if r.key in slot.seen:
                    slot.index.renew(r.key, r.expires)
                elif len(r.vec) == self.embedder.dim and (r.key not in latest or r.expires > latest[r.key].expires):
                    latest[r.key] = r
            fresh = list(latest.values())
            if fresh:
                slot.seen.update(r.key for r in fresh)
                slot.index.add([r.key for r in fresh], [r.text for r in fresh], np.stack([r.vec for r in fresh]),
                               [r.expires for r in fresh])
                self._grew(ns, slot, len(fresh))
        self._bound()
        return slot

    def _grew(self, ns: str, slot: _Slot, n: int) -> None:
        """Count ``n`` vectors added to ``slot`` (if it is still kept)."""
        if self._slots.get(ns) is slot:
            self._vectors += n

    def _bound(self) -> None:
        """Drop least recently used indexes past ``max_indexes`` or ``max_vectors`` (see __init__).

        The one just used may go too when it alone holds more than ``max_vectors``: its lookup
        still runs on it, and the next one reloads it from the backend, pruned."""
        while self._slots and (
            (self.max_indexes is not None and len(self._slots) > self.max_indexes)
            or (self.max_vectors is not None and self._vectors > self.max_vectors)
        ):
            _, old = self._slots.popitem(last=False)
            self._vectors -= len(old.index)

    @property
    def indexes_kept(self) -> int:
        """Indexes kept in memory."""
        return len(self._slots)

    @property
    def vectors_kept(self) -> int:
        """Vectors in all indexes kept in memory."""
        return self._vectors

    async def lookup(self, scope: str, query: str, verifier: HitVerifier,
                     threshold: float) -> tuple[SemanticMatch | None, np.ndarray]:
        """The verified best candidate for ``query`` (or None) and the query's vector."""
        found, qvec = await self.matches(scope, query, verifier, threshold)
        return (found[0] if found else None), qvec

    async def matches(self, scope: str, query: str, verifier: HitVerifier,
                      threshold: float) -> tuple[list[SemanticMatch], np.ndarray]:
        """Every verified candidate for ``query``, best first, and the query's vector: one search
        and one verification of the live top-k. The caller serves the first whose entry it can
        still read; an entry deleted by `cache clear`, evicted or older than the request's max-age
        keeps its vector in memory until its TTL, and searching again for the next one cost a
        whole search and verification per unservable candidate (up to top_k of them)."""
        if verifier.uses_tokens and isinstance(self.embedder, TokenEmbedder):
            # One forward pass gives the query's vector and its token vectors; memoised, they
            # also serve when this query is cached and later comes back as a candidate.
            qvec = await self.embed_with_tokens(query)
        else:
            qvec = await self.embed(query)
        slot = await self.slot(scope)
        found = self.neighbours(slot.index, qvec)
        ok = allowed(query, found[1])
        tokens = None
        if verifier.uses_tokens and ok.any():
            # The sentence model's forward pass for the token vectors runs on a worker thread, as
            # the query embedding does; only texts the verifier will score are sent.
            mask = verifier.wants(found[2]) & ok
            wanted = [query, *(t for t, m in zip(found[1], mask, strict=True) if m)]
            await asyncio.to_thread(self.token_vectors, wanted)
            tokens = self.token_vectors
        scores = self.scored(slot.index, query, qvec, verifier, found, ok, tokens)
        return self.verified(slot.index, found, scores, threshold), qvec

    async def embed_with_tokens(self, text: str) -> np.ndarray:
        """``text``'s vector, keeping its token vectors in the memo (TokenEmbedder only)."""
        assert isinstance(self.embedder, TokenEmbedder)
        vecs, toks = await asyncio.to_thread(self.embedder.embed_tokens, [text])
        self._remember({text: toks[0]}, [text])
        return vecs[0]

    def token_vectors(self, texts: list[str]) -> list[TokenVectors]:
        """Each text's token vectors, from a per-process memo or one forward pass for the rest."""
        if not isinstance(self.embedder, TokenEmbedder):
            raise ConfigError(f"the verifier needs token vectors, which embedder {self.embedder.name} does not give")
        with self._tokens_lock:  # prefetches run on worker threads, scoring on the event loop
            have = {t: self._tokens[t] for t in texts if t in self._tokens}
        missing = list(dict.fromkeys(t for t in texts if t not in have))
        if missing:
            have.update(zip(missing, self.embedder.embed_tokens(missing)[1], strict=True))
        self._remember(have, texts)
        return [have[t] for t in texts]

    def _remember(self, have: dict[str, TokenVectors], texts: list[str]) -> None:
        """Put ``texts`` (most recent last) in the bounded memo."""
        with self._tokens_lock:
            for t in texts:
                self._tokens[t] = have[t]
                self._tokens.move_to_end(t)
            while len(self._tokens) > _TOKEN_MEMO:
                self._tokens.popitem(last=False)

    def neighbours(self, index: VectorIndex, qvec: np.ndarray) -> Found:
        """The live (unexpired) top-k entries nearest to ``qvec``."""
        pos, sims = index.search(qvec, self.top_k, alive_at=time.time())
        return pos, [index.texts[p] for p in pos], sims

    def candidates(self, index: VectorIndex, query: str, qvec: np.ndarray, verifier: HitVerifier,
                   tokens: Tokens | None = None,
                   ) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
        """The live top-k neighbours of ``query``: index positions, texts, similarities, verifier scores
        (``tokens``: token vectors by text, for a verifier with alignment features). The lookup's
        own search and scoring, for evaluation (pairs.py) and tests."""
        found = self.neighbours(index, qvec)
        pos, texts, sims = found
        return pos, texts, sims, self.scored(index, query, qvec, verifier, found, allowed(query, texts), tokens)

    def scored(self, index: VectorIndex, query: str, qvec: np.ndarray, verifier: HitVerifier, found: Found,
               ok: np.ndarray, tokens: Tokens | None = None) -> np.ndarray:
        """The verifier's score of each neighbour in ``found``; ``ok``: which ones no hard veto
        separates from ``query`` (``allowed``). A vetoed candidate scores -inf whatever the verifier,
        and the verifier never sees it: this is the one place the vetoes apply at lookup."""
        _, texts, sims = found
        scores = np.full(len(texts), -np.inf)
        keep = np.flatnonzero(ok)
        if not len(keep):
            return scores
        kept_texts, kept_pos, kept_sims = [texts[i] for i in keep], found[0][keep], sims[keep]

        def density(mask: np.ndarray) -> np.ndarray:
            # Asked for only by a verifier that reads neighbourhoods, and only for the candidates
            # it scores (most lookups: none).
            return index.density().features(qvec, [t for t, m in zip(kept_texts, mask, strict=True) if m],
                                            index.vectors(kept_pos[mask]), kept_sims[mask])

        scores[keep] = verifier.score(query, kept_texts, kept_sims, density if verifier.uses_density else None,
                                      tokens if verifier.uses_tokens else None)
        # Collect the young generation now, while it holds only this lookup's garbage. CPython counts
        # deallocations against the young generation's allocation count, so the verifier's memo
        # churn (fresh text analyses survive, evicted old ones die) kept that count near zero while
        # the young generation grew past 100,000 objects; the collection that finally ran stalled
        # one lookup in ~100 for 40-480 ms (docs/caching.md). Here it costs ~0.1-0.4 ms.
        gc.collect(0)
        return scores

    @staticmethod
    def verified(index: VectorIndex, found: Found, scores: np.ndarray, threshold: float) -> list[SemanticMatch]:
        """The candidates at or above the threshold, highest score first (ties: the nearer first):
        each was judged the same question, and the first whose entry is servable is served."""
        pos, texts, sims = found
        good = np.flatnonzero(np.isfinite(scores) & (scores >= threshold))
        order = good[np.argsort(-scores[good], kind="stable")]
        return [SemanticMatch(index.keys[int(pos[i])], texts[i], float(sims[i]), float(scores[i])) for i in order]

    async def add(self, scope: str, meta: EntryMeta, query: str, qvec: np.ndarray | None = None) -> None:
        if qvec is None:
            qvec = await self.embed(query)
        ns = self.index_ns(scope)
        await self.backend.add_vector(ns, meta, query, qvec)
        slot = self._slots.get(ns)
        if slot is None:
            return
        if meta.key in slot.seen:
            slot.index.renew(meta.key, meta.expires)  # the same question stored again: a later expiry
            return
        slot.seen.add(meta.key)
        slot.index.add([meta.key], [query], qvec[None, :], [meta.expires])
        self._grew(ns, slot, 1)
        self._bound()

    def forget(self) -> None:
        """Drop the in-memory indexes (after a clear); they reload from the backend."""
        self._slots.clear()
        self._vectors = 0
