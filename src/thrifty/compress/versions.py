"""The stored record of one system prompt and its compressed versions (a plain JSON document).

    {"hash", "original", "original_tokens", "created",
     "versions": [{"version", "text", "tokens", "status", "reason", "model", "cost_usd", "created"}]}

Statuses: ``validated`` (passed the checks; used unless approval is required), ``failed``
(did not pass; never used), ``approved`` (pinned by a person; at most one), ``rejected`` (never
used). Which text a request gets is decided here and only here (``active``).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from thrifty.errors import InvalidRequestError, NotFoundError

USABLE = ("approved", "validated")


def prompt_hash(text: str, settings: Any = None) -> str:
    """The record's key: the prompt text and, when given, the compression settings that shaped
    and validated its versions (compressor model, target, must-keep items, markers...), so a
    change of any of them compresses and validates the prompt again instead of reusing a version
    made under other rules."""
    blob = text if settings is None else json.dumps([text, settings], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def new_record(h: str, original: str, original_tokens: int) -> dict[str, Any]:
    return {"hash": h, "original": original, "original_tokens": original_tokens, "created": time.time(),
            "versions": []}


def add_version(doc: dict[str, Any], text: str, tokens: int, status: str, reason: str = "",
                model: str | None = None, cost_usd: float | None = None) -> dict[str, Any]:
    version = {"version": len(doc["versions"]) + 1, "text": text, "tokens": tokens, "status": status,
               "reason": reason, "model": model, "cost_usd": cost_usd, "created": time.time()}
    doc["versions"].append(version)
    return version


def active(doc: dict[str, Any], require_approval: bool) -> dict[str, Any] | None:
    """The version requests use: the approved one, else (unless approval is required) the latest
    validated one, else None (the original is used)."""
    approved = [v for v in doc["versions"] if v["status"] == "approved"]
    if approved:
        return approved[-1]
    if require_approval:
        return None
    validated = [v for v in doc["versions"] if v["status"] == "validated"]
    return validated[-1] if validated else None


def _pick(doc: dict[str, Any], version: int | None) -> dict[str, Any]:
    if not doc["versions"]:
        raise NotFoundError(f"prompt {doc['hash'][:12]} has no compressed version")
    if version is None:
        return doc["versions"][-1]
    for v in doc["versions"]:
        if v["version"] == version:
            return v
    raise NotFoundError(f"prompt {doc['hash'][:12]} has no version {version}")


def approve(doc: dict[str, Any], version: int | None) -> dict[str, Any]:
    """Pin ``version`` (default: the latest); a previously pinned one goes back to validated."""
    chosen = _pick(doc, version)
    if not chosen["text"].strip():
        raise InvalidRequestError("cannot approve an empty version")
    for v in doc["versions"]:
        if v["status"] == "approved":
            v["status"] = "validated"
    chosen["status"] = "approved"
    chosen["reason"] = "approved by a person"
    return chosen


def reject(doc: dict[str, Any], version: int | None) -> dict[str, Any]:
    chosen = _pick(doc, version)
    chosen["status"] = "rejected"
    chosen["reason"] = "rejected by a person"
    return chosen
