"""Packed requests: K items in one call (``thrifty batch``), answered item by item.

A request is packed when its system text contains ``thrifty-pack`` and its last user message
is a JSON object ``{"items": [{"id": ..., "input": ...}, ...]}``. The answer is the JSON the
caller asked for, ``{"results": [{"id": ..., "output": ...}, ...]}``, where each output is
what the model would answer for that item alone: its fixed ``answer``, else its first
``answers`` rule matching the item's input, else (when the response schema's ``output`` is an
``enum`` of labels) a label chosen by hash of the input, else the default answer for the item.

Misbehaviour, from the model's ``faults`` or the ``x-mock-behaviour`` header (only for packs of
at least ``pack_min_items``): ``pack_drop=N`` leaves N items out, ``pack_duplicate=N`` repeats N,
``pack_invalid=N`` gives N a null output, ``pack_reorder`` lists items in another order, and
``pack_break_json`` cuts the JSON in half. Items are chosen by hash, so runs repeat exactly.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from thrifty.mock import digest
from thrifty.mock.behaviour import Faults, ModelBehaviour
from thrifty.tokens import content_text

if TYPE_CHECKING:
    from thrifty.mock.answers import AnswerRequest

MARKER = "thrifty-pack"
SCHEMA_NAME = "thrifty_pack"
PACK_FAULTS = ("pack_drop", "pack_duplicate", "pack_invalid", "pack_reorder", "pack_break_json")


def pack_items(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The items of a packed request, or None when ``body`` is not one."""
    messages = body.get("messages") or []
    system = " ".join(
        content_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") in ("system", "developer")
    )
    if MARKER not in system:
        return None
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        return None
    try:
        data = json.loads(content_text(users[-1].get("content")))
    except ValueError:
        return None
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) and "id" in i for i in items):
        return None
    return items


def is_packed(body: dict[str, Any]) -> bool:
    return pack_items(body) is not None


def _labels(body: dict[str, Any]) -> list[str] | None:
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    schema = (fmt.get("json_schema") or {}).get("schema") or {}
    try:
        enum = schema["properties"]["results"]["items"]["properties"]["output"]["enum"]
    except (KeyError, TypeError):
        return None
    return [str(x) for x in enum] if isinstance(enum, list) and enum else None


def label_for(text: str, labels: list[str]) -> str:
    """The label the mock gives ``text``: by hash, the same in a pack and alone."""
    return labels[digest.pick(digest.sub_key(b"label", text), "label", 0, len(labels) - 1)]


def item_answer(req: AnswerRequest, behaviour: ModelBehaviour, text: str, labels: list[str] | None) -> str:
    """What the model answers for one item (the same rules as for a single request)."""
    from thrifty.mock import answers

    sub = answers.AnswerRequest(req.model, req.body, text, digest.sub_key(req.key, text))
    for strategy in (answers.fixed_answer, answers.mapped_answer):
        found = strategy(sub, behaviour)
        if found is not None:
            return found
    if labels:
        return label_for(text, labels)
    return answers.default_answer(sub, behaviour)


def misbehave(results: list[dict[str, Any]], faults: Faults, key: bytes) -> list[dict[str, Any]]:
    """Apply the pack faults to a list of results (deterministic by ``key``)."""
    if len(results) < faults.pack_min_items:
        return results
    out = list(results)

    def victims(salt: str, n: int, pool: int) -> set[int]:
        order = sorted(range(pool), key=lambda i: digest.unit(key, f"{salt}{i}"))
        return set(order[: min(n, pool)])

    if faults.pack_invalid:
        bad = victims("invalid", faults.pack_invalid, len(out))
        out = [{**r, "output": None} if i in bad else r for i, r in enumerate(out)]
    if faults.pack_duplicate:
        for i in sorted(victims("dup", faults.pack_duplicate, len(out))):
            out.append(dict(out[i]))
    if faults.pack_drop:
        gone = victims("drop", faults.pack_drop, len(out))
        out = [r for i, r in enumerate(out) if i not in gone]
    if faults.pack_reorder:
        out.sort(key=lambda r: digest.unit(key, f"order{r.get('id')}"))
        if out and out == results:
            out.reverse()
    return out


def packed_answer(req: AnswerRequest, behaviour: ModelBehaviour) -> str | None:
    """The ``STRATEGIES`` entry: a JSON answer for a packed request, None for anything else."""
    items = pack_items(req.body)
    if items is None:
        return None
    labels = _labels(req.body)
    results = [
        {"id": item["id"], "output": item_answer(req, behaviour, content_text(item.get("input")), labels)}
        for item in items
    ]
    faults = behaviour.faults
    text = json.dumps({"results": misbehave(results, faults, req.key)}, ensure_ascii=False)
    if faults.pack_break_json and len(items) >= faults.pack_min_items:
        text = text[: len(text) // 2]
    return text
