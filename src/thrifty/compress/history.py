"""History trimming: keep the system prompt and the latest turns within a token budget.

Messages after the leading system/developer messages are grouped into units that are kept or
dropped whole: an assistant message that calls tools forms one unit with the tool results that
follow it, so a tool call is never separated from its result (providers reject that). The
current turn (the last user message and every message after it) is always kept, even over the
budget; earlier units are kept newest first while they fit. With a summariser, the
dropped middle becomes one system message ``Summary of the earlier conversation: ...``, cached
per conversation prefix (the same dropped messages give the same summary, without a new call).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from thrifty.tokens import count_message, count_messages

Message = dict[str, Any]
Summariser = Callable[[list[Message]], Awaitable[str | None]]

SUMMARY_PREFIX = "Summary of the earlier conversation: "


@dataclass
class Trimmed:
    messages: list[Message]
    dropped: int  # messages removed
    saved_tokens: int


def _units(messages: list[Message]) -> list[list[Message]]:
    units: list[list[Message]] = []
    for m in messages:
        if m.get("role") in ("tool", "function") and units:
            units[-1].append(m)  # a tool result stays with the call before it
        else:
            units.append([m])
    return units


def split_head(messages: list[Message]) -> tuple[list[Message], list[Message]]:
    """(leading system/developer messages, the rest)."""
    i = 0
    while i < len(messages) and messages[i].get("role") in ("system", "developer"):
        i += 1
    return messages[:i], messages[i:]


def prefix_key(dropped: list[Message], model: str) -> str:
    blob = json.dumps([model, dropped], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


async def trim(messages: list[Message], budget: int, summarise: Summariser | None = None,
               summary_reserve: int = 0) -> Trimmed:
    """``messages`` cut to ``budget`` prompt tokens (see the module docstring)."""
    total = count_messages(messages)
    if total <= budget:
        return Trimmed(messages, 0, 0)
    head, rest = split_head(messages)
    units = _units(rest)
    # The current turn (the last user message and everything after it: tool calls and their
    # results) is kept whatever the budget; without it the model would answer something else.
    start = max((i for i, u in enumerate(units) if u[0].get("role") == "user"), default=len(units) - 1)
    if start <= 0:
        return Trimmed(messages, 0, 0)
    room = budget - count_messages(head) - (summary_reserve if summarise else 0)
    room -= sum(count_message(m) for u in units[start:] for m in u)
    while start > 0:
        cost = sum(count_message(m) for m in units[start - 1])
        if cost > room:
            break
        start -= 1
        room -= cost
    if start == 0:
        return Trimmed(messages, 0, 0)
    dropped = [m for u in units[:start] for m in u]
    tail = [m for u in units[start:] for m in u]
    middle: list[Message] = []
    if summarise is not None:
        summary = await summarise(dropped)
        if summary:
            middle = [{"role": "system", "content": SUMMARY_PREFIX + summary}]
    out = head + middle + tail
    return Trimmed(out, len(dropped), max(0, total - count_messages(out)))
