"""Labelled question pairs (``{"text_a", "text_b", "label"}`` JSONL) and the cache simulation on them.

The simulation is the product's own semantic path: every ``text_a`` is cached in one scope, then
every ``text_b`` is looked up with ``SemanticCache.candidates``, which sees the two texts and their
similarity only. Labels are read by the scoring code after all lookups, never before.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thrifty.cache.backends.memory import MemoryBackend
from thrifty.cache.config import DEFAULT_TOP_K
from thrifty.cache.index import VectorIndex
from thrifty.cache.semantic import SemanticCache
from thrifty.cache.verifier import HitVerifier
from thrifty.embeddings import Embedder
from thrifty.embeddings.base import TokenEmbedder, TokenVectors
from thrifty.errors import ConfigError, DataError
from thrifty.jsonl import iter_jsonl


@dataclass(frozen=True)
class Pair:
    text_a: str
    text_b: str
    label: int | None


def _records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(record number, record): JSON Lines, or one JSON array (GPTCache's paraphrase files)."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            head = fh.read(4096).lstrip()
    except (OSError, UnicodeDecodeError):
        head = ""  # iter_jsonl says why it cannot be read
    if not head.startswith("["):
        yield from iter_jsonl(path, "pairs file")
        return
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    yield from enumerate(rows if isinstance(rows, list) else [rows], 1)


def read_pairs(path: str | Path) -> list[Pair]:
    """Read a pairs file; ``DataError`` naming the record for anything malformed. Records are
    ``{"text_a", "text_b", "label"?}``, or GPTCache's ``{"origin", "similar"}`` (a paraphrase:
    label 1), one a line or in one JSON array."""
    out = []
    for n, row in _records(path):
        if isinstance(row, dict) and "text_a" not in row and isinstance(row.get("origin"), str) \
                and isinstance(row.get("similar"), str):
            row = {"text_a": row["origin"], "text_b": row["similar"], "label": 1}
        if not isinstance(row, dict) or not isinstance(row.get("text_a"), str) or not isinstance(row.get("text_b"), str):
            raise DataError(f"{path}:{n}: expected an object with string text_a and text_b "
                            "(or GPTCache's origin and similar)")
        label = row.get("label")
        if label is not None and label not in (0, 1):
            raise DataError(f"{path}:{n}: label must be 0 or 1, got {label!r}")
        out.append(Pair(row["text_a"], row["text_b"], None if label is None else int(label)))
    if not out:
        raise DataError(f"{path}: no pairs")
    return out


def embed_all(embedder: Embedder, texts: list[str], batch: int = 512) -> np.ndarray:
    return embed_with_tokens(embedder, texts, False, batch)[0]


def embed_with_tokens(embedder: Embedder, texts: list[str], tokens: bool,
                      batch: int = 512) -> tuple[np.ndarray, dict[str, TokenVectors]]:
    """The texts' vectors and, when ``tokens``, their token vectors by text, from the same forward
    passes. ``ConfigError`` when token vectors are asked of an embedder that has none."""
    if tokens and not isinstance(embedder, TokenEmbedder):
        raise ConfigError(f"this verifier reads token vectors, which embedder {embedder.name} does not give; "
                          "use the embedder it was calibrated with")
    parts: list[np.ndarray] = []
    out: dict[str, TokenVectors] = {}
    for i in range(0, len(texts), batch):
        chunk = texts[i:i + batch]
        if isinstance(embedder, TokenEmbedder) and tokens:
            vecs, toks = embedder.embed_tokens(chunk)
            out.update(zip(chunk, toks, strict=True))
        else:
            vecs = embedder.embed(chunk)
        parts.append(vecs)
    return (np.concatenate(parts) if parts else np.zeros((0, embedder.dim), dtype=np.float32)), out


class PairCache:
    """Every distinct ``text_a`` cached in one scope of a SemanticCache."""

    def __init__(self, texts_a: list[str], embedder: Embedder, *, top_k: int = DEFAULT_TOP_K, ann: str = "none",
                 vecs: np.ndarray | None = None, tokens: bool = False) -> None:
        self.texts = list(dict.fromkeys(texts_a))
        self.semantic = SemanticCache(MemoryBackend(), embedder, top_k=top_k, ann=ann)
        self.index = VectorIndex(embedder.dim, ann=ann, ann_min_entries=0 if ann != "none" else 10**12)
        # Token vectors by text (``tokens``: for a verifier with alignment features), kept for the
        # whole simulation rather than in the lookup's bounded memo.
        self.tokens: dict[str, TokenVectors] = {}
        if vecs is None:
            vecs, self.tokens = embed_with_tokens(embedder, self.texts, tokens)
        far = time.time() + 10 * 365 * 86400.0
        self.index.add([f"a{i}" for i in range(len(self.texts))], self.texts, vecs, [far] * len(self.texts))


@dataclass(frozen=True)
class Lookup:
    """One query's retrieved candidates with their verifier scores (the best one is what is served)."""

    texts: tuple[str, ...]
    scores: tuple[float, ...]
    latency_ms: float

    @property
    def score(self) -> float:
        """The best candidate's score (-inf when the cache had no candidate)."""
        return max(self.scores, default=-np.inf)

    @property
    def served_text(self) -> str | None:
        """The best candidate, whatever its score."""
        return self.texts[int(np.argmax(self.scores))] if self.texts else None

    def score_of(self, text: str) -> float:
        """The verifier's score for cached question ``text`` (-inf when it was not retrieved)."""
        return max((s for t, s in zip(self.texts, self.scores, strict=True) if t == text), default=-np.inf)


def lookup_all(cache: PairCache, queries: list[str], qvecs: np.ndarray, verifier: HitVerifier,
               query_tokens: dict[str, TokenVectors] | None = None) -> list[Lookup]:
    """The product lookup for each query, threshold left open so every operating point can be read.
    ``query_tokens``: the queries' token vectors, for a verifier with alignment features."""
    store = {**cache.tokens, **(query_tokens or {})}

    def tokens(texts: list[str]) -> list[TokenVectors]:
        return [store[t] for t in texts]

    out = []
    for query, qvec in zip(queries, qvecs, strict=True):
        t0 = time.perf_counter()
        _, texts, _, scores = cache.semantic.candidates(cache.index, query, qvec, verifier, tokens)
        ms = (time.perf_counter() - t0) * 1000
        out.append(Lookup(tuple(texts), tuple(float(s) for s in scores), ms))
    return out
