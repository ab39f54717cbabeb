"""The last N requests the mock received, for tests to assert what thrifty sent upstream.

Secrets are never stored: any credential-like header (Authorization, api-key, x-api-key,
cookies, ...) is reduced to its last 4 characters, e.g. ``Bearer sk-test-abcd1234`` is kept as
``...1234``, enough to tell which key was used.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

_SECRET_MARKERS = ("authorization", "api-key", "api_key", "apikey", "cookie", "token", "secret")


def redact(value: str) -> str:
    """``...`` plus the last 4 characters (all of a value of 4 or fewer characters is hidden)."""
    return "..." + value[-4:] if len(value) > 4 else "..."


def _is_secret(name: str) -> bool:
    return any(marker in name for marker in _SECRET_MARKERS)


class Recorder:
    """A bounded, in-order record of requests (method, path, redacted headers, body)."""

    def __init__(self, limit: int) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=limit)
        self.total = 0

    def add(self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: Any) -> None:
        self.total += 1
        if self._items.maxlen == 0:
            return
        clean: dict[str, str] = {}
        for raw_name, raw_value in headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            clean[name] = redact(value) if _is_secret(name) else value
        self._items.append(
            {"method": method, "path": path, "headers": clean, "body": body, "time": time.time()}
        )

    def last(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Oldest first; the last ``limit`` entries when given."""
        items = list(self._items)
        return items if limit is None else items[-limit:] if limit > 0 else []

    def reset(self) -> None:
        self._items.clear()
        self.total = 0
