"""History trimming: keep the system prompt and the latest turns within a token budget.

Messages after the leading system/developer messages are grouped into units that are kept or
dropped whole: an assistant message that calls tools forms one unit with the tool results that
follow it, so a tool call is never separated from its result (providers reject that). The
current turn (the last user message and every message after it) is always kept, even over the
budget; earlier units are kept newest first while they fit, and the kept part starts with a
user message (Anthropic and Gemini refuse a conversation whose first turn is the assistant's).
A system/developer message later in the conversation (retrieved context, a framework's note) is
history like the turns around it: kept while it fits, dropped with the older turns. Images,
audio and files count what ``thrifty.media_tokens`` estimates (through ``count_message``, the same
numbers as budgets and accounting). With a summariser, the dropped middle becomes one message
``Summary of the earlier conversation: ...`` (in the role of the leading messages: ``developer``
for a client that uses it, else ``system``), cut to the summary's reserve and cached per
conversation prefix (the same dropped messages give the same summary, without a new call).
With a step (``history_trim_step_tokens``), the cut falls on a grid of cumulative history tokens
instead of exactly at the budget, so the kept turns (and the summary of the dropped ones) stay the
same across turns and the provider's prompt cache keeps matching them (``_cut``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from thrifty.media_tokens import image_tokens
from thrifty.scoring.tools import call_spec
from thrifty.tokens import content_text, count_message, count_messages, count_text, count_tools, truncate_text

Message = dict[str, Any]
Summariser = Callable[[list[Message]], Awaitable[str | None]]

SUMMARY_PREFIX = "Summary of the earlier conversation: "
# What trimming counts for an image whose size cannot be read (a URL), and for one with detail
# "low": ``thrifty.media_tokens`` estimates every image (from its size when a data URL gives it),
# for trimming as for budgets and accounting; these names are kept for callers that read them.
IMAGE_TOKENS = image_tokens(None, None)
IMAGE_TOKENS_LOW = image_tokens(None, None, "low")
_IMAGE_PARTS = ("image_url", "input_image")
INSTRUCTION_ROLES = ("system", "developer")
# The trimming grid's step is at most this fraction (1/n) of the budget left for the turns:
# the cut keeps up to a step fewer tokens than fit, so at most a quarter of the history budget.
STEP_SHARE = 4


@dataclass
class Trimmed:
    messages: list[Message]
    dropped: int  # messages removed
    saved_tokens: int


def message_tokens(message: Message, model: str | None = None) -> int:
    """Tokens ``message`` costs for trimming: text and framing, images, audio and files, counted
    for ``model`` (its tokenizer and image rule; cl100k and gpt-4o's rule when None)."""
    return count_message(message, model=model)


def messages_tokens(messages: list[Message], model: str | None = None) -> int:
    """Prompt tokens of ``messages`` for trimming (the request's tool schemas are counted apart,
    once: ``trim``'s ``schema_cost``)."""
    return count_messages(messages, model=model)


def transcript(messages: list[Message]) -> str:
    """``messages`` as the text the summariser reads: images and tool calls are named (as text
    only, a turn that was a screenshot or a tool call read as an empty line)."""
    lines = []
    for m in messages:
        content = m.get("content")
        text = content_text(content)
        if isinstance(content, list):
            images = sum(1 for p in content if isinstance(p, dict) and p.get("type") in _IMAGE_PARTS)
            text = " ".join(t for t in ([f"[{images} image(s)]"] if images else []) + [text] if t)
        for call in m.get("tool_calls") or []:
            if not isinstance(call, dict):
                continue
            # A custom (free-form) tool's call carries its input where a function's has arguments.
            spec = call_spec(call)
            if spec is not None:
                text += f" [calls {spec.get('name')}({spec.get('input', spec.get('arguments', ''))})]"
        lines.append(f"{m.get('role')}: {text.strip()}")
    return "\n".join(lines)


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
    while i < len(messages) and messages[i].get("role") in INSTRUCTION_ROLES:
        i += 1
    return messages[:i], messages[i:]


def prefix_key(dropped: list[Message], model: str, max_tokens: int) -> str:
    """The cache key of the summary of ``dropped``: made by ``model`` within ``max_tokens`` (a route
    with a 300-token summary was served another route's 20-token one for the same dropped turns)."""
    blob = json.dumps([model, max_tokens, dropped], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _role(unit: list[Message]) -> Any:
    return unit[0].get("role")


def _turn_start(units: list[list[Message]], start: int, current: int) -> int:
    """The first unit at or after ``start`` from which the kept messages open with a user turn
    (system/developer messages before it are fine: providers take them out of the turn order).
    Linear: each unit is looked at once."""
    if _role(units[current]) != "user":
        return start  # no user message at all: nothing to align to
    while start < current:
        k = start
        while k < current and _role(units[k]) in INSTRUCTION_ROLES:
            k += 1
        if _role(units[k]) == "user":
            break
        start = k + 1
    return start


def _cut(costs: list[int], room: int, step: int) -> int:
    """The first history unit kept, given each unit's tokens (oldest first) and the ``room`` the
    kept ones may fill. ``step`` 0: the newest units while they fit. ``step`` B > 0: the oldest
    units are dropped up to the first multiple of B tokens of cumulative history at or past what
    must go. The cumulative counts of a conversation never change as it grows, and what must go
    only grows (each turn's messages become history), so the cut stays on one grid line for about
    B tokens of new conversation: the kept prefix is byte-identical from turn to turn and the
    provider's prompt cache (an exact-prefix match) keeps serving it at the cached-input price."""
    if step <= 0:
        start = len(costs)
        while start > 0 and costs[start - 1] <= room:
            start -= 1
            room -= costs[start]
        return start
    excess = sum(costs) - room
    if excess <= 0:
        return 0
    line = -(-excess // step) * step  # the first grid line at or past the excess
    dropped = 0
    for k, cost in enumerate(costs):
        if dropped >= line:
            return k
        dropped += cost
    return len(costs)


async def trim(messages: list[Message], budget: int, summarise: Summariser | None = None,
               summary_reserve: int = 0, schemas: list[Any] | None = None, step: int = 0,
               model: str | None = None) -> Trimmed:
    """``messages`` cut to ``budget`` prompt tokens (see the module docstring). With
    ``summarise``, ``summary_reserve`` tokens are kept free for the summary, which is cut to fit.
    ``schemas``: the request's tool (or legacy function) definitions, counted in the budget like
    the head: a chat app's tools of 1,000 tokens left a budget of N sending N + 1,000.
    ``step``: cut on a grid of that many tokens of history (``_cut``), at most 1/``STEP_SHARE``
    of what the turns may fill, so a large step cannot leave a small budget with no history;
    0 cuts exactly to the budget. ``model``: the model the request names, whose tokenizer and image
    rule count the budget (a route name such as ``auto`` counts as cl100k and gpt-4o's rule)."""
    # The schemas are counted once: they are sent whole whatever is trimmed (and dumping and
    # tokenising a large tool list three times cost more than the trimming itself).
    schema_cost = count_tools(schemas, model=model)
    # Each message is tokenised once: the total, the head, the units and the saving are sums of
    # these (counting the conversation, then each unit, then the output took twice as long).
    costs = [message_tokens(m, model) for m in messages]
    primer = messages_tokens([], model)  # what a request costs beyond its messages (the reply primer)
    total = sum(costs) + primer + schema_cost
    if total <= budget:
        return Trimmed(messages, 0, 0)
    head, rest = split_head(messages)
    units = _units(rest)
    unit_costs: list[int] = []
    at = len(head)
    for u in units:
        unit_costs.append(sum(costs[at : at + len(u)]))
        at += len(u)
    # The current turn (the last user message and everything after it: tool calls and their
    # results) is kept whatever the budget; without it the model would answer something else.
    current = max((i for i, u in enumerate(units) if _role(u) == "user"), default=len(units) - 1)
    if current <= 0:
        return Trimmed(messages, 0, 0)
    summary_role = head[-1].get("role") if head else "system"  # a client that says developer gets developer
    overhead = message_tokens({"role": summary_role, "content": SUMMARY_PREFIX}, model)
    # What the conversation's turns may fill: the same on every turn of one conversation, so the
    # step it caps is too (a step of 1,024 in a budget with 400 left after the tools kept no turns).
    head_cost = sum(costs[: len(head)]) + primer
    turns_room = budget - head_cost - schema_cost - (summary_reserve + overhead if summarise else 0)
    room = turns_room - sum(unit_costs[current:])
    step = min(step, max(turns_room, 0) // STEP_SHARE)
    start = _cut(unit_costs[:current], room, step)
    if start == 0:
        return Trimmed(messages, 0, 0)
    start = _turn_start(units, start, current)
    dropped = [m for u in units[:start] for m in u]
    tail = [m for u in units[start:] for m in u]
    middle: list[Message] = []
    if summarise is not None:
        summary = await summarise(dropped)
        if summary and summary_reserve > 0 and count_text(summary, model=model) > summary_reserve:
            # The model's max_tokens counts in its own tokenizer: cut in ours, so the budget holds.
            summary = truncate_text(summary, summary_reserve, model=model)
        if summary:
            middle = [{"role": summary_role, "content": SUMMARY_PREFIX + summary}]
    saved = sum(unit_costs[:start]) - sum(message_tokens(m, model) for m in middle)
    return Trimmed(head + middle + tail, len(dropped), max(0, saved))
