"""Neighbourhood features: how crowded the cache is around the new question and around a candidate.

Two questions at cosine 0.93 are likely the same question when nothing else in the cache comes
close to either of them, and likely two different questions of a busy topic ("how do I lose
weight ...") when dozens of cached questions sit at 0.90 and above. The pair features see only
the two texts; these see the cache around them, as hubness corrections (CSLS) in nearest-neighbour
matching do. Measured on the QQP dev pairs (research runs, pairwise 5-fold CV, MiniLM):
duplicates accepted at a 0.5% false-hit rate rose from about 13% to about 17%; the figures of the
product path are in docs/benchmarks.md.

Crowding depends on how many questions the cache holds, so a verifier calibrated on a 20,000-entry
cache would misread a 100,000-entry one. The features are therefore measured against a fixed-size
uniform sample of the namespace: the ``sample_size(dim)`` cached questions with the smallest hash of
their text (a bottom-k sample: deterministic, the same in calibration and at lookup, and kept up
to date one insert at a time). A cache smaller than the sample is measured whole; it looks less
crowded than calibration saw, and the verifier's scores drop (measured: a verifier calibrated on
16,000 pairs and judged on a 4,000-pair cache served 0.26% false hits for a 0.5% target), so a
young cache errs towards misses, not wrong answers.

Reads only vectors and texts: never labels, never answers.
"""

from __future__ import annotations

import hashlib
import heapq
import threading
from functools import lru_cache

import numpy as np
from threadpoolctl import ThreadpoolController

SAMPLE_SIZE = 4000
# A neighbourhood costs one product with the sample per candidate, so the sample holds at most this
# many floats: 4,000 questions at MiniLM's 384 dimensions, 1,500 for the 1,024-dimension lexical
# embedder (whose 4,000-row product made lookups with the neighbourhood verifier miss the 15 ms p99).
SAMPLE_FLOATS = SAMPLE_SIZE * 384
NEIGHBOURS = 10
DENSITY_NAMES = [
    "cand_nn1", "cand_nn3", "cand_nn10",  # the candidate's nearest other cached questions (mean of top 1/3/10)
    "query_nn1", "query_nn3", "query_nn10",  # the new question's nearest cached questions, candidate left out
    "query_rank",  # sampled questions nearer to the new question than the candidate
    "cand_rank",  # sampled questions nearer to the candidate than the new question
    "mutual_rank",  # the smaller of the two: 0 when they are each other's nearest neighbours
    "gap_query", "gap_cand",  # similarity minus the nearest rival's, from either side
    "csls",  # 2 * similarity - both neighbourhood means (cross-domain similarity local scaling)
]


@lru_cache(maxsize=1)
def _blas() -> ThreadpoolController:
    """The process's BLAS thread pools (inspected once: ~0.5 ms; a limit then costs ~20 us)."""
    return ThreadpoolController()


def sample_size(dim: int) -> int:
    """Rows of the density sample for vectors of ``dim`` dimensions."""
    return max(NEIGHBOURS, min(SAMPLE_SIZE, SAMPLE_FLOATS // max(1, dim)))


def text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


class DensitySample:
    """A bottom-k hash sample of one namespace's question vectors (at most ``size`` rows)."""

    def __init__(self, dim: int, size: int | None = None) -> None:
        self.dim = dim
        self.size = sample_size(dim) if size is None else size
        self._mat = np.zeros((0, dim), dtype=np.float32)
        self._row: dict[str, int] = {}  # sampled text -> row
        self._heap: list[tuple[int, str]] = []  # (-hash, text): the largest sampled hash on top
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._row)

    def add(self, texts: list[str], vecs: np.ndarray) -> None:
        vecs = np.asarray(vecs, dtype=np.float32).reshape(-1, self.dim)
        with self._lock:
            for text, vec in zip(texts, vecs, strict=True):
                if text in self._row:
                    continue
                h = text_hash(text)
                if len(self._row) < self.size:
                    row = len(self._row)
                    if row >= len(self._mat):
                        grown = np.zeros((min(self.size, max(256, 2 * len(self._mat))), self.dim), dtype=np.float32)
                        grown[:row] = self._mat[:row]
                        self._mat = grown
                elif h < -self._heap[0][0]:
                    _, evicted = heapq.heappop(self._heap)
                    row = self._row.pop(evicted)
                else:
                    continue
                self._row[text] = row
                self._mat[row] = vec
                heapq.heappush(self._heap, (-h, text))

    def features(self, qvec: np.ndarray, cand_texts: list[str], cand_vecs: np.ndarray,
                 sims: np.ndarray) -> np.ndarray:
        """One row of DENSITY_NAMES per candidate (each candidate left out of its own neighbourhood)."""
        n = len(cand_texts)
        with self._lock:
            mat = self._mat[:len(self._row)]
            own = [self._row.get(t, -1) for t in cand_texts]
        q = np.asarray(qvec, dtype=np.float32).reshape(-1)
        cv = np.asarray(cand_vecs, dtype=np.float32).reshape(n, self.dim)
        if len(mat) == 0:
            sq = np.zeros((n, 0), dtype=np.float32)
            sc = np.zeros((n, 0), dtype=np.float32)
        else:
            # One BLAS thread: these are small products on a request path, and OpenBLAS's threads
            # waiting for a core another process holds made them 5-25x slower at p99 (measured:
            # 1,500 x 1,024 sample, p99 44 ms with the default 2 threads, 10 ms with one).
            with _blas().limit(limits=1, user_api="blas"):
                sq = np.repeat((mat @ q)[None, :], n, axis=0)
                sc = cv @ mat.T
            for i, r in enumerate(own):
                if r >= 0:
                    sq[i, r] = -np.inf
                    sc[i, r] = -np.inf
        s = np.asarray(sims, dtype=np.float64).reshape(n)
        tq, tc = _top(sq), _top(sc)
        rank_q = (sq > s[:, None]).sum(axis=1)
        rank_c = (sc > s[:, None]).sum(axis=1)
        out = np.column_stack([tc[:, 0], tc[:, :3].mean(1), tc.mean(1), tq[:, 0], tq[:, :3].mean(1), tq.mean(1),
                               rank_q, rank_c, np.minimum(rank_q, rank_c),
                               s - tq[:, 0], s - tc[:, 0], 2 * s - tc.mean(1) - tq.mean(1)])
        return out.astype(np.float64)


def _top(sims: np.ndarray) -> np.ndarray:
    """The ``NEIGHBOURS`` largest values per row, best first; missing neighbours (a cache smaller
    than that, or a left-out row) count as similarity 0, i.e. unrelated."""
    n = sims.shape[0]
    out = np.zeros((n, NEIGHBOURS), dtype=np.float64)
    if sims.shape[1] == 0:
        return out
    k = min(NEIGHBOURS, sims.shape[1])
    part = -np.partition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else sims
    top = -np.sort(-part, axis=1)[:, :k]
    out[:, :k] = np.where(np.isfinite(top), top, 0.0)
    return out
