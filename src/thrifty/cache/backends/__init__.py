"""Where cache entries live: SQLite (embedded default), Redis (shared), memory (evaluation)."""

from thrifty.cache.backends.base import CacheBackend, EntryMeta, VectorRow

__all__ = ["CacheBackend", "EntryMeta", "VectorRow"]
