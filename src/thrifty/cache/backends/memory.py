"""An in-process backend (evaluation, benchmarks and tests of the layers above)."""

from __future__ import annotations

import time

import numpy as np

from thrifty.cache.backends.base import EntryMeta, VectorRow


class MemoryBackend:
    name = "memory"

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, tuple[EntryMeta, bytes]] = {}
        self._vectors: dict[str, list[VectorRow]] = {}
        self._locks: dict[str, float] = {}

    async def get(self, key: str) -> bytes | None:
        item = self._entries.get(key)
        return item[1] if item else None

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [item[1] if (item := self._entries.get(k)) else None for k in keys]

    async def put_many(self, items: list[tuple[EntryMeta, bytes]]) -> None:
        for meta, value in items:
            await self.put(meta, value)

    async def put(self, meta: EntryMeta, value: bytes) -> None:
        self._entries.pop(meta.key, None)
        self._entries[meta.key] = (meta, value)
        while len(self._entries) > self.max_entries:  # dicts keep insertion order: oldest first
            self._entries.pop(next(iter(self._entries)))

    async def add_vector(self, index_ns: str, meta: EntryMeta, text: str, vec: np.ndarray) -> None:
        self._vectors.setdefault(index_ns, []).append(VectorRow(meta.key, text, vec, meta.expires))

    async def vectors_since(self, index_ns: str, cursor: int) -> tuple[list[VectorRow], int]:
        rows = self._vectors.get(index_ns, [])
        return rows[cursor:], len(rows)

    async def try_lock(self, key: str, ttl_s: float) -> bool:
        now = time.time()
        if self._locks.get(key, 0.0) > now:
            return False
        self._locks[key] = now + ttl_s
        return True

    async def unlock(self, key: str) -> None:
        self._locks.pop(key, None)

    async def clear(self, tenant: str | None = None, model: str | None = None,
                    older_than: float | None = None) -> int:
        doomed = [k for k, (m, _) in self._entries.items()
                  if (tenant is None or m.tenant == tenant) and (model is None or m.model == model)
                  and (older_than is None or m.created < older_than)]
        for k in doomed:
            del self._entries[k]
        return len(doomed)

    async def stats(self) -> dict[str, int]:
        now = time.time()
        return {"entries": len(self._entries), "bytes": sum(len(v) for _, v in self._entries.values()),
                "vectors": sum(r.expires > now for rows in self._vectors.values() for r in rows)}

    async def aclose(self) -> None:
        return None
