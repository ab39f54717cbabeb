"""Reading JSON Lines input files (items, pairs, outcomes) with errors that name the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from thrifty.errors import DataError


def text_lines(text: str) -> list[str]:
    """The lines of a JSON Lines text: split at ``\\n`` (a ``\\r`` before it dropped) only.

    Not ``str.splitlines``: it also splits at ``\\x85``, ``\\u2028``, ``\\u2029``, ``\\x0b``, ``\\x0c``
    and ``\\x1c``-``\\x1e``, which a JSON string may hold unescaped (a writer that does not escape
    non-ASCII text, e.g. orjson), so one valid record would be cut into two invalid lines."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def iter_jsonl(path: str | Path, what: str = "file") -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` for each non-blank line; ``DataError`` on unreadable input."""
    try:
        # utf-8-sig: a byte-order mark (Windows editors, Excel exports) is not part of line 1.
        lines = text_lines(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise DataError(f"cannot read {what} {path}: {reason}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}: line {n}: not valid JSON ({exc})") from None
