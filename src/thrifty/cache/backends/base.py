"""The backend interface: opaque entry bytes by key, plus append-only vector logs per index."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class EntryMeta:
    key: str
    tenant: str
    model: str
    created: float
    expires: float


@dataclass(frozen=True)
class VectorRow:
    key: str
    text: str
    vec: np.ndarray
    expires: float


class CacheBackend(Protocol):
    """Entries are opaque bytes (see entry.py for their checksum); vectors are appended to a log
    per semantic index so every gateway process can catch up from its last cursor."""

    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """``get`` of each key, in order, in one round trip (a batch of embeddings inputs): one
        call per key at once took a pooled connection each, more than Redis's pool holds."""
        ...

    async def put(self, meta: EntryMeta, value: bytes) -> None: ...

    async def put_many(self, items: list[tuple[EntryMeta, bytes]]) -> None:
        """``put`` of each entry in one write (one transaction, one pipeline); the size limit is
        checked once. Raises StorageError as ``put`` does."""
        ...

    async def add_vector(self, index_ns: str, meta: EntryMeta, text: str, vec: np.ndarray) -> None: ...

    async def vectors_since(self, index_ns: str, cursor: int) -> tuple[list[VectorRow], int]:
        """Vectors appended to ``index_ns`` after ``cursor`` (0 = all) and the new cursor."""
        ...

    async def try_lock(self, key: str, ttl_s: float) -> bool:
        """Take a short cross-process lock on ``key`` (single flight); False if someone holds it."""
        ...

    async def unlock(self, key: str) -> None: ...

    async def clear(self, tenant: str | None = None, model: str | None = None,
                    older_than: float | None = None) -> int:
        """Delete matching entries (all when no filter); returns how many were deleted."""
        ...

    async def stats(self) -> dict[str, int]:
        """``entries``, ``bytes`` and ``vectors`` currently stored."""
        ...

    async def aclose(self) -> None: ...


def vec_bytes(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype=np.float32).tobytes()


def vec_from(raw: bytes) -> np.ndarray | None:
    if not raw or len(raw) % 4:
        return None
    return np.frombuffer(raw, dtype=np.float32)
