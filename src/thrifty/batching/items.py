"""Batch input: one JSON object per line, ``{"id": ..., "input": ...}``.

``id`` is optional (the line number is used) but must be unique; the text may also be given
as ``text`` or ``prompt``, or a line may be a bare JSON string. Any problem is a ``DataError``
naming the line, before a single call is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thrifty.errors import DataError
from thrifty.jsonl import iter_jsonl

_TEXT_KEYS = ("input", "text", "prompt")


@dataclass(frozen=True)
class Item:
    id: str
    input: str


def parse_item(value: Any, line_no: int) -> Item:
    if isinstance(value, str):
        return Item(str(line_no), value)
    if not isinstance(value, dict):
        raise DataError(f"line {line_no}: expected a JSON object with 'input' (or a string)")
    text = next((value[k] for k in _TEXT_KEYS if k in value), None)
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"line {line_no}: 'input' must be a non-empty string")
    raw_id = value.get("id", line_no)
    if not isinstance(raw_id, str | int) or isinstance(raw_id, bool) or str(raw_id) == "":
        raise DataError(f"line {line_no}: 'id' must be a string or an integer")
    return Item(str(raw_id), text)


def load_items(path: str | Path) -> list[Item]:
    """Read and check ITEMS.jsonl (blank lines are skipped)."""
    items = [parse_item(value, n) for n, value in iter_jsonl(path, "items file")]
    return check_items(items)


def check_items(items: list[Item]) -> list[Item]:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise DataError(f"duplicate item id {item.id!r}: every item needs its own id")
        seen.add(item.id)
    if not items:
        raise DataError("no items to run")
    return items


def coerce_items(values: list[Any]) -> list[Item]:
    """Items from Python values (Item, dict or str), for the Python API."""
    return check_items([v if isinstance(v, Item) else parse_item(v, i) for i, v in enumerate(values, 1)])
