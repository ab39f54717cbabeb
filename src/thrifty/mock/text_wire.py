"""Wire shapes of the Responses API and of legacy text completions (the mock's text_apis.py).

Only this module knows their JSON field names, so a test comparing against the OpenAI API
reference has one place to look (chat's are in wire.py); the Responses stream's events are
built from a response object by thrifty/responses_events.py, a completion's chunks from its
object by thrifty/completion_events.py, both of which the gateway uses too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from thrifty.mock.completion import Plan
from thrifty.tokens import count_text


def prompt_tokens(prompt: str) -> int:
    """A completion prompt's tokens: its text, no chat framing."""
    return count_text(prompt)


def responses_usage(usage: dict[str, Any]) -> dict[str, Any] | None:
    """Chat ``usage`` (mock/usage.py) in the Responses API's names; None for convention ``none``."""
    if not usage:
        return None
    details = usage["prompt_tokens_details"]
    out: dict[str, Any] = {
        "input_tokens": usage["prompt_tokens"],
        # cache_write_tokens is required by the SDK's InputTokensDetails (OpenAI sends it, 0 or more).
        "input_tokens_details": {"cached_tokens": details["cached_tokens"],
                                 "cache_write_tokens": details.get("cache_write_tokens", 0)},
        "output_tokens": usage["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": usage["completion_tokens_details"]["reasoning_tokens"]},
        "total_tokens": usage["total_tokens"],
    }
    if "cost" in usage:
        out["cost"] = usage["cost"]
    return out


def response_object(response_id: str, message_id: str, created: int, body: dict[str, Any], plan: Plan,
                    usage: dict[str, Any] | None) -> dict[str, Any]:
    """The non-streaming ``response`` object (also the payload of ``response.completed``)."""
    choice = plan.choices[0]
    incomplete = choice.finish_reason == "length"
    text = choice.content or ""
    return {
        "id": response_id, "object": "response", "created_at": created,
        "status": "incomplete" if incomplete else "completed", "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "model": plan.model,
        "output": [{"id": message_id, "type": "message", "status": "incomplete" if incomplete else "completed",
                    "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "parallel_tool_calls": True, "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None}, "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0), "text": {"format": {"type": "text"}},
        "tool_choice": "auto", "tools": [], "top_p": body.get("top_p", 1.0), "truncation": "disabled",
        "usage": usage, "user": None, "metadata": body.get("metadata") or {},
    }


def _choices(plans: list[Plan]) -> Iterator[tuple[int, Any]]:
    """(index, choice) over every prompt's choices: prompt-major, as OpenAI numbers them."""
    index = 0
    for plan in plans:
        for choice in plan.choices:
            yield index, choice
            index += 1


def completion_object(completion_id: str, created: int, model: str, plans: list[Plan],
                      usage: dict[str, Any]) -> dict[str, Any]:
    """The non-streaming ``text_completion`` object."""
    return {
        "id": completion_id, "object": "text_completion", "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [{"text": c.content or "", "index": i, "logprobs": None, "finish_reason": c.finish_reason}
                    for i, c in _choices(plans)],
        "usage": usage,
    }


# --- stored responses (GET / DELETE /v1/responses/{id}, /cancel, /input_items) ---------------


def not_found(response_id: str) -> dict[str, Any]:
    """OpenAI's 404 body for a response id it does not hold (never stored, deleted, or another account's)."""
    return {"error": {"message": f"Response with id '{response_id}' not found.", "type": "invalid_request_error",
                      "param": None, "code": None}}


def deleted(response_id: str) -> dict[str, Any]:
    return {"id": response_id, "object": "response", "deleted": True}


def queued(response: dict[str, Any]) -> dict[str, Any]:
    """A ``background: true`` response as create answers it: queued, no output or usage yet."""
    return {**response, "status": "queued", "output": [], "usage": None, "incomplete_details": None}


def failed(response: dict[str, Any]) -> dict[str, Any]:
    """A background response whose run failed: no output, no usage, the error OpenAI reports."""
    return {**response, "status": "failed", "output": [], "usage": None, "incomplete_details": None,
            "error": {"code": "server_error", "message": "The model failed to generate a response."}}


def input_items(body: dict[str, Any], new_id: Any) -> list[dict[str, Any]]:
    """A request's ``input`` as the items ``/input_items`` lists (oldest first): a string is one
    user message; message items get an id and ``input_text`` parts; other items are kept."""
    value = body.get("input")
    items = [{"role": "user", "content": value}] if isinstance(value, str) else list(value or [])
    out: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("role"), str):
            content = item.get("content")
            parts = [{"type": "input_text", "text": content}] if isinstance(content, str) else list(content or [])
            out.append({"id": item.get("id") or new_id("msg"), "type": "message", "role": item["role"],
                        "status": "completed", "content": parts})
        else:
            out.append({"id": item.get("id") or new_id("item"), **item})
    return out


def item_page(items: list[dict[str, Any]], *, order: str, after: str | None, limit: int) -> dict[str, Any]:
    """One page of ``items`` (a cursor list: ``after`` is the last id of the previous page)."""
    ordered = items if order == "asc" else list(reversed(items))
    if after is not None:
        ids = [i["id"] for i in ordered]
        ordered = ordered[ids.index(after) + 1:] if after in ids else []
    page = ordered[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(ordered) > limit}
