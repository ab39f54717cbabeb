"""One packed call: K items in, one JSON answer out, validated item by item.

Request: the task and the answer format in the system message (with the ``thrifty-pack``
marker), the items as ``{"items": [{"id": "1", "input": ...}, ...]}`` in the user message with
pack-local ids "1".."K" (short ids cost fewer tokens and cannot collide), and a
``response_format`` JSON schema when the model supports JSON mode (json_object, then none, for a
provider that refuses it: ``FORMATS``). Answer:
``{"results": [{"id": "1", "output": ...}, ...]}``. An item is accepted when its id appears
exactly once with a valid output (a non-empty string; one of the labels when labels are given;
and whatever the caller's ``validate`` says). Everything else is returned as failed, for the
runner to retry in a smaller pack, then alone.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from thrifty.batching.items import Item
from thrifty.catalog import Catalog, ModelInfo
from thrifty.cost import price_tokens
from thrifty.providers.refusals import learn, learned, refuses_param
from thrifty.tokens import count_messages, count_text
from thrifty.types import Usage

MARKER = "thrifty-pack"  # the mock upstream (mock/packed.py) recognises packed requests by it
SCHEMA_NAME = "thrifty_pack"

Validator = Callable[[Item, str], bool]


def pack_schema(labels: list[str] | None) -> dict[str, Any]:
    output: dict[str, Any] = {"type": "string", "enum": list(labels)} if labels else {"type": "string"}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["results"],
        "properties": {"results": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["id", "output"],
            "properties": {"id": {"type": "string"}, "output": output},
        }}},
    }


def labels_clause(labels: list[str] | None) -> str:
    return f" Each output must be exactly one of: {', '.join(labels)}." if labels else ""


def packed_messages(task: str, items: list[Item], labels: list[str] | None) -> list[dict[str, Any]]:
    system = (
        f"{task}\n\n{MARKER}: the user sends a JSON object {{\"items\": [{{\"id\", \"input\"}}]}}. "
        "Apply the task to each item on its own. Reply with JSON only: "
        "{\"results\": [{\"id\": <the item's id>, \"output\": <your answer for that item>}]}, "
        "exactly one result per item, ids unchanged." + labels_clause(labels)
    )
    payload = {"items": [{"id": str(i + 1), "input": it.input} for i, it in enumerate(items)]}
    user = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def packed_params(labels: list[str] | None, json_mode: bool, max_tokens: int,
                  fmt: str = "json_schema") -> dict[str, Any]:
    """A pack's parameters; ``fmt`` (one of ``FORMATS``) the response_format when ``json_mode``."""
    params: dict[str, Any] = {"temperature": 0, "max_tokens": max_tokens}
    if json_mode and fmt == "json_schema":
        params["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": pack_schema(labels)},
        }
    elif json_mode and fmt == "json_object":
        params["response_format"] = {"type": "json_object"}
    return params


# The response_format a pack is sent with, strongest first. A provider may refuse json_schema
# (DeepSeek: 400 "This response_format type is unavailable now") or json_object too; the pack is
# then sent with the next one. The prompt asks for the JSON either way (DeepSeek's json_object
# wants the word "json" in it), and parse_packed checks every item's answer whatever was sent.
FORMATS = ("json_schema", "json_object", "none")
# What a refusal of the response_format names (DeepSeek's message names the parameter only).
FORMAT_NAMES = ("response_format", "json_schema", "json schema", "json_object")


def format_refused(status: int | None, param: str | None, message: str) -> bool:
    """Whether an error (``status`` None: an attempt's message, status unknown) refuses the
    response_format sent."""
    return refuses_param(status, param, message, FORMAT_NAMES)


def _lesson(fmt: str) -> str:
    """The catalog lesson (providers/refusals.py) of a target refusing ``fmt``."""
    return f"refuses:response_format={fmt}"


def known_format(catalog: Catalog, target: str) -> str:
    """The response_format packs to ``target`` (a model or route name) are sent with now: the
    strongest of ``FORMATS`` it has not refused in this process."""
    return next(f for f in FORMATS if f == FORMATS[-1] or not learned(catalog, _lesson(f), target))


def weaker_format(catalog: Catalog, target: str, refused: str) -> str:
    """Learn that ``target`` refuses ``refused``; the format its packs are sent with from now (the
    next one, or a weaker one a concurrent pack learned)."""
    if refused != FORMATS[-1]:
        learn(catalog, _lesson(refused), target)
    return known_format(catalog, target)


def cut_why(finish: str, max_tokens: Any = None) -> str:
    """Why an answer cut or blocked (``types.cut_short``'s ``finish``) answers none of its items."""
    if finish == "length":
        limit = f"{max_tokens}; " if max_tokens is not None else ""
        return f"answer cut at max_tokens ({limit}see batching.max_output_tokens_per_item)"
    return f"answer cut or blocked by the provider (finish_reason={finish})"


def single_messages(task: str, item: Item, labels: list[str] | None) -> list[dict[str, Any]]:
    """The one-item fallback (and the one-call-per-item baseline): a plain request."""
    clause = labels_clause(labels).replace(" Each output", " The answer")
    system = task + (clause + " Reply with the answer only." if labels else "")
    return [{"role": "system", "content": system}, {"role": "user", "content": item.input}]


def alone_baseline_usd(task: str, item: Item, output: str, labels: list[str] | None,
                       baseline: ModelInfo | None) -> float | None:
    """What the baseline model would have charged for ``item`` sent on its own: its one-item
    prompt (``single_messages``) and ``output`` as the answer, counted offline (the item was never
    sent alone). A packed call's baseline is the sum of this over the items it answered; priced on
    the packed prompt instead, the baseline carried the pack's JSON framing and hid what packing
    bought. None when the baseline has no price."""
    if baseline is None or baseline.price is None:
        return None
    model = baseline.upstream_model or baseline.name
    usage = Usage(prompt_tokens=count_messages(single_messages(task, item, labels), model=model),
                  completion_tokens=count_text(output, model=model))
    return price_tokens(usage, baseline.price)


def valid_output(value: Any, item: Item, labels: list[str] | None, validate: Validator | None) -> str | None:
    """The accepted output text, or None."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if labels:
        match = next((lab for lab in labels if lab.lower() == text.lower().strip(" .!\"'")), None)
        if match is None:
            return None
        text = match
    if validate is not None and not validate(item, text):
        return None
    return text


@dataclass
class PackOutcome:
    accepted: dict[str, str] = field(default_factory=dict)  # item id -> output
    failed: dict[str, str] = field(default_factory=dict)  # item id -> why


def parse_packed(text: str, items: list[Item], labels: list[str] | None,
                 validate: Validator | None = None) -> PackOutcome:
    out = PackOutcome()
    local = {str(i + 1): it for i, it in enumerate(items)}
    try:
        data = json.loads(_strip_fence(text))
        results = data["results"] if isinstance(data, dict) else data
        if not isinstance(results, list):
            raise ValueError("no results array")
    except (ValueError, KeyError, TypeError) as exc:
        for it in items:
            out.failed[it.id] = f"answer was not the expected JSON ({type(exc).__name__})"
        return out
    rows = [r for r in results if isinstance(r, dict)]
    counts = Counter(str(r.get("id")) for r in rows)
    for r in rows:
        lid = str(r.get("id"))
        item = local.get(lid)
        if item is None or item.id in out.accepted or item.id in out.failed:
            continue
        if counts[lid] > 1:
            out.failed[item.id] = "duplicated in the answer"
            continue
        ok = valid_output(r.get("output"), item, labels, validate)
        if ok is None:
            out.failed[item.id] = "invalid output"
        else:
            out.accepted[item.id] = ok
    for it in items:
        if it.id not in out.accepted and it.id not in out.failed:
            out.failed[it.id] = "missing from the answer"
    return out


def _strip_fence(text: str) -> str:
    """Models without JSON mode often wrap JSON in a Markdown fence."""
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[1] if "\n" in t else ""
        t = t.rsplit("```", 1)[0]
    return t
