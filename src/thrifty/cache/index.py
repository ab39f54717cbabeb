"""Nearest-neighbour search over one semantic namespace's question vectors.

Vectors are L2-normalised, so the inner product is the cosine similarity. Small namespaces use
exact search in numpy; past ``ann_min_entries`` an HNSW graph (faiss, else hnswlib) is built in
a worker thread and takes over once ready: exact search over N vectors of dimension d costs
O(N*d) per lookup, which at 100k x 1024 floats is ~100 ms on a small CPU, while HNSW stays near
a millisecond. faiss is preferred over hnswlib: same recall, faster to build and to query on the
lexical vectors (docs/benchmarks.md, `python bench/cache_lookup.py --ann-compare 20000`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

import numpy as np

from thrifty.cache.density import DensitySample

log = logging.getLogger("thrifty.cache")

# Rows of the first matrix an index allocates; it doubles from there.
_MIN_ROWS = 4


class Ann(Protocol):
    def add(self, vecs: np.ndarray, start: int) -> None: ...

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


class HnswlibAnn:
    def __init__(self, dim: int, capacity: int, m: int = 16, ef_construction: int = 100, ef: int = 64) -> None:
        import hnswlib

        self._index: Any = hnswlib.Index(space="ip", dim=dim)
        self._index.init_index(max_elements=max(capacity, 1024), ef_construction=ef_construction, M=m)
        self._index.set_ef(ef)
        self._lock = threading.Lock()

    def add(self, vecs: np.ndarray, start: int) -> None:
        with self._lock:
            need = start + len(vecs)
            if need > self._index.get_max_elements():
                self._index.resize_index(max(need, 2 * self._index.get_max_elements()))
            self._index.add_items(vecs, np.arange(start, need))

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self._index.get_current_count())
        labels, dist = self._index.knn_query(q[None, :], k=k)
        return labels[0].astype(np.int64), (1.0 - dist[0]).astype(np.float32)


class FaissAnn:
    def __init__(self, dim: int, capacity: int, m: int = 16, ef_construction: int = 100, ef: int = 64) -> None:
        import faiss

        self._index: Any = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        self._index.hnsw.efConstruction = ef_construction
        self._index.hnsw.efSearch = ef
        self._lock = threading.Lock()

    def add(self, vecs: np.ndarray, start: int) -> None:
        with self._lock:
            self._index.add(np.ascontiguousarray(vecs, dtype=np.float32))

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims, labels = self._index.search(q[None, :].astype(np.float32), k)
        keep = labels[0] >= 0
        return labels[0][keep].astype(np.int64), sims[0][keep].astype(np.float32)


def make_ann(kind: str, dim: int, capacity: int) -> Ann | None:
    """The ANN index named by ``kind`` ("auto": faiss, else hnswlib), or None if not installed."""
    order = {"auto": ("faiss", "hnswlib"), "hnswlib": ("hnswlib",), "faiss": ("faiss",)}.get(kind, ())
    for name in order:
        try:
            return HnswlibAnn(dim, capacity) if name == "hnswlib" else FaissAnn(dim, capacity)
        except ImportError:
            continue
    return None


class VectorIndex:
    """The vectors of one namespace with their entry keys and question texts."""

    def __init__(self, dim: int, *, ann: str = "auto", ann_min_entries: int = 10_000) -> None:
        self.dim = dim
        self.ann_kind = ann
        self.ann_min_entries = ann_min_entries
        self._mat = np.zeros((0, dim), dtype=np.float32)
        self._until = np.zeros(0, dtype=np.float64)  # each vector's expiry (searched: live ones only)
        self._n = 0
        self.keys: list[str] = []
        self.texts: list[str] = []
        self._pos: dict[str, int] = {}  # each key's position (its first, should it be added twice)
        self._ann: Ann | None = None
        self._ann_building = False
        self._density: DensitySample | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._n

    @property
    def uses_ann(self) -> bool:
        return self._ann is not None

    def add(self, keys: list[str], texts: list[str], vecs: np.ndarray, expires: list[float]) -> None:
        vecs = np.asarray(vecs, dtype=np.float32).reshape(-1, self.dim)
        if not len(vecs):
            return
        with self._lock:
            start = self._n
            if start + len(vecs) > len(self._mat):
                # Doubling from a few rows, not from 256: a gateway keeps one index per scope (tenant,
                # system prompt, earlier turns) and most scopes hold a handful of questions; 256 rows
                # of 1024 floats made every one of them cost 1 MB (bench/soak.py).
                grown = np.zeros((max(start + len(vecs), 2 * len(self._mat), _MIN_ROWS), self.dim), dtype=np.float32)
                grown[:start] = self._mat[:start]
                self._mat = grown
                until = np.zeros(len(grown), dtype=np.float64)
                until[:start] = self._until[:start]
                self._until = until
            self._mat[start:start + len(vecs)] = vecs
            self._until[start:start + len(vecs)] = expires
            self._n = start + len(vecs)
            self.keys.extend(keys)
            self.texts.extend(texts)
            for i, key in enumerate(keys):
                self._pos.setdefault(key, start + i)
            ann = self._ann
            if self._density is not None:
                self._density.add(texts, vecs)
        if ann is not None:
            ann.add(vecs, start)
        elif self._n >= self.ann_min_entries and self.ann_kind != "none" and not self._ann_building:
            self._ann_building = True
            threading.Thread(target=self._build_ann, name="thrifty-cache-ann", daemon=True).start()

    def renew(self, key: str, expires: float) -> None:
        """``key``'s entry was stored again (asked after it expired, after a ``cache clear``, or
        refreshed by ``no-cache``): the same key is the same question, so its vector stays and takes
        the later expiry. Without this the index kept the first store's expiry and dropped the live
        entry from every semantic lookup once that passed."""
        with self._lock:
            pos = self._pos.get(key)
            if pos is not None and expires > self._until[pos]:
                self._until[pos] = expires

    def density(self) -> DensitySample:
        """The namespace's neighbourhood sample (density.py), built on first use and kept up to date."""
        with self._lock:
            if self._density is None:
                self._density = DensitySample(self.dim)
                self._density.add(self.texts[:self._n], self._mat[:self._n])
            return self._density

    def vectors(self, pos: np.ndarray) -> np.ndarray:
        """The stored vectors at positions ``pos``."""
        return self._mat[np.asarray(pos, dtype=np.int64)]

    def build_ann_now(self) -> bool:
        """Build the ANN index synchronously (benchmarks, warm starts); False if unavailable."""
        self._ann_building = True
        self._build_ann()
        return self._ann is not None

    def _build_ann(self) -> None:
        # Vectors added while the graph builds are caught up before it takes over.
        n = self._n
        ann = make_ann(self.ann_kind, self.dim, 2 * n)
        if ann is None:
            log.warning("no ANN library installed (pip install 'thrifty[ann]'); using exact search")
            return
        ann.add(self._mat[:n], 0)
        with self._lock:
            if self._n > n:
                ann.add(self._mat[n:self._n], n)
            self._ann = ann

    def search(self, q: np.ndarray, k: int, alive_at: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Positions and cosine similarities of the ``k`` nearest vectors, best first; with
        ``alive_at``, of the ``k`` nearest that expire after it. The index keeps expired vectors (a
        scope's index only grows while it is in memory), and a question asked every day is stored
        again each time in other words: the nearest ``k`` of all would then be yesterday's expired
        copies, hiding the one live entry behind them."""
        q = np.asarray(q, dtype=np.float32).reshape(-1)
        n = self._n
        if n == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if self._ann is not None:
            return self._ann_search(q, k, alive_at)
        sims = self._mat[:n] @ q
        if alive_at is not None:
            live = np.flatnonzero(self._until[:n] > alive_at)
            if len(live) < n:
                if not len(live):
                    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
                pos, best = self._top(sims[live], k)
                return live[pos], best
        return self._top(sims, k)

    def _ann_search(self, q: np.ndarray, k: int, alive_at: float | None) -> tuple[np.ndarray, np.ndarray]:
        """The graph's nearest, fetching more until ``k`` of them are live or all were seen."""
        assert self._ann is not None
        fetch = k
        while True:
            pos, sims = self._ann.search(q, fetch)
            if alive_at is None:
                return pos, sims
            keep = self._until[pos] > alive_at
            if keep.sum() >= k or fetch >= self._n:
                return pos[keep][:k], sims[keep][:k]
            fetch = min(4 * fetch, self._n)

    @staticmethod
    def _top(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions in ``sims`` of its ``k`` largest values, best first, and those values."""
        n = len(sims)
        k = min(k, n)
        top = np.argpartition(-sims, k - 1)[:k] if k < n else np.arange(n)
        order = np.argsort(-sims[top], kind="stable")
        return top[order].astype(np.int64), sims[top[order]].astype(np.float32)
