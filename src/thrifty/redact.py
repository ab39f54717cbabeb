"""Keeping secrets out of logs, errors, the ledger and cached data.

Known secrets (configured provider keys) are registered once at start-up; any text leaving
thrifty through an error message or log line goes through ``redact``, which also masks
anything shaped like a bearer key even when it was never registered.
"""

from __future__ import annotations

import re

_KEY_SHAPES = re.compile(r"\b(sk|tk|rk|pk|thr)-[A-Za-z0-9_\-]{6,}|\bBearer\s+[A-Za-z0-9_\-.=]{8,}", re.I)


class Redactor:
    def __init__(self, secrets: list[str] | None = None) -> None:
        self._secrets: set[str] = set()
        for s in secrets or []:
            self.add(s)

    def add(self, secret: str | None) -> None:
        # Very short values would mask ordinary words; they are not real keys anyway.
        if secret and len(secret) >= 6:
            self._secrets.add(secret)

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, "[REDACTED]")
        return _KEY_SHAPES.sub("[REDACTED]", text)


def redact(text: str) -> str:
    """Mask key-shaped substrings (for places with no configured Redactor at hand)."""
    return _KEY_SHAPES.sub("[REDACTED]", text)
