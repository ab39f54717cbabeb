"""Batch input: one JSON object per line, ``{"id": ..., "input": ...}``.

``id`` is optional (the line number is used) but must be unique; the text may also be given
as ``text`` or ``prompt``, or a line may be a bare JSON string. Any problem is a ``DataError``
naming the file and the line, before a single call is made.

An item keeps the JSON type of its id (``7`` stays a number, ``"7"`` a string) so output lines
can be joined back to the input; the line number given to an item without an id is a number.
Internally ids are compared as text, so ``7`` and ``"7"`` are the same id (a duplicate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thrifty.errors import DataError
from thrifty.jsonl import iter_jsonl

_TEXT_KEYS = ("input", "text", "prompt")


@dataclass(frozen=True)
class Item:
    id: str
    input: str
    # The id as the input gave it (JSON string or integer); None means ``id`` is the whole story.
    given_id: str | int | None = field(default=None, compare=False)
    # True when the input had no id and ``id`` is the item's line (or position) number.
    numbered: bool = field(default=False, compare=False)

    @property
    def json_id(self) -> str | int:
        """The id to write back: with the input's JSON type."""
        return self.id if self.given_id is None else self.given_id


def _at(source: str | None, unit: str, n: int) -> str:
    """Where an item is, for messages: ``items.jsonl: line 3`` (or ``item 3`` in a Python list)."""
    return f"{source}: {unit} {n}" if source else f"{unit} {n}"


def parse_item(value: Any, line_no: int, source: str | None = None, unit: str = "line") -> Item:
    """The item on line ``line_no`` of ``source`` (named in errors)."""
    where = _at(source, unit, line_no)
    if isinstance(value, str):
        return Item(str(line_no), value, line_no, numbered=True)
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a JSON object with 'input' (or a string)")
    text = next((value[k] for k in _TEXT_KEYS if k in value), None)
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: 'input' must be a non-empty string")
    if "id" not in value:
        return Item(str(line_no), text, line_no, numbered=True)
    raw_id = value["id"]
    if not isinstance(raw_id, str | int) or isinstance(raw_id, bool) or str(raw_id) == "":
        raise DataError(f"{where}: 'id' must be a string or an integer")
    return Item(str(raw_id), text, raw_id)


def load_items(path: str | Path) -> list[Item]:
    """Read and check ITEMS.jsonl (blank lines are skipped)."""
    parsed = [(n, parse_item(value, n, str(path))) for n, value in iter_jsonl(path, "items file")]
    if not parsed:
        raise DataError(f"{path}: no items to run")
    return check_items([it for _, it in parsed], [n for n, _ in parsed], str(path))


def check_items(items: list[Item], lines: list[int] | None = None, source: str | None = None) -> list[Item]:
    """``items`` when every id is unique; else a ``DataError`` naming both places.

    ``lines`` are the items' line numbers in ``source``; without them, positions from 1."""
    if not items:
        raise DataError("no items to run")
    places = lines if lines is not None else list(range(1, len(items) + 1))
    unit = "line" if lines is not None else "item"
    seen: dict[str, int] = {}
    for item, place in zip(items, places, strict=True):
        first = seen.setdefault(item.id, place)
        if first == place:
            continue
        other = items[places.index(first)]
        if item.numbered or other.numbered:
            # A line without an id is numbered; that number is another line's explicit id.
            blank, named = (place, first) if item.numbered else (first, place)
            raise DataError(f"{_at(source, unit, blank)} has no 'id', and its default id (its number, {blank}) "
                            f"is the id of {unit} {named}: give every item an id, or none")
        raise DataError(f"{_at(source, unit, place)}: duplicate item id {item.json_id!r} (also {unit} {first}): "
                        "every item needs its own id")
    return items


def coerce_items(values: list[Any]) -> list[Item]:
    """Items from Python values (Item, dict or str), for the Python API."""
    return check_items([v if isinstance(v, Item) else parse_item(v, i, unit="item") for i, v in enumerate(values, 1)])
