"""Cache keys: a stable hash of everything that can change the answer.

The exact key covers the deployment namespace, the tenant, the model asked for, what serves it
(``serving``: a fingerprint of the resolved model, its provider and upstream name, or of the
route's configuration; fingerprint.py), the route and task, every request parameter except a
short list that cannot change the answer, and the full message list (system prompt, tools
results, earlier turns). Unknown parameters are part of the key, so a new upstream parameter can
only cause misses, never a wrong hit. Numbers in parameters are canonical: ``temperature: 0`` and
``temperature: 0.0`` are one key.

The semantic *scope* is the same hash without the last user message: two requests may share a
semantic answer only when everything but the final question is identical.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from thrifty.cache.vetoes import looks_like_code
from thrifty.tokens import content_text
from thrifty.types import ChatRequest

# tc2: the serving fingerprint and canonical numbers joined the key (tc1 entries simply miss).
KEY_VERSION = "tc2"

# Parameters that identify or route the caller but do not change the answer.
NEUTRAL_PARAMS = frozenset(
    {"user", "metadata", "stream_options", "store", "service_tier", "prompt_cache_key", "safety_identifier",
     "prompt_cache_retention"}
)


def canonical(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no whitespace) for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def _digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(parts)).hexdigest()


@dataclass(frozen=True)
class CacheKey:
    exact: str  # hex sha256 of the whole request scope
    scope: str  # hex sha256 of everything but the last user message (semantic namespace)
    query: str | None  # the last user message text, when the request can use the semantic cache


def answer_params(request: ChatRequest) -> dict[str, Any]:
    return {k: canonical_numbers(v) for k, v in request.params.items() if k not in NEUTRAL_PARAMS}


def canonical_numbers(value: Any) -> Any:
    """``value`` with every whole float written as an int (0.0 -> 0, 1.0 -> 1), recursively: JSON
    has one number type, and a client sending ``0.0`` asks the same as one sending ``0``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: canonical_numbers(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical_numbers(v) for v in value]
    return value


def make_key(
    request: ChatRequest, *, tenant: str, model: str, namespace: str = "", route: str | None = None,
    task: str | None = None, serving: str = "",
) -> CacheKey:
    """``serving``: the fingerprint of what serves the request (fingerprint.py); a config change
    that changes it makes the old entries miss."""
    base = {"v": KEY_VERSION, "ns": namespace, "tenant": tenant, "model": model, "serving": serving,
            "route": route, "task": task, "params": answer_params(request)}
    exact = _digest({**base, "messages": request.messages})
    query = semantic_query(request)
    context = request.messages[:-1] if query is not None else request.messages
    scope = _digest({**base, "context": context, "semantic": True})
    return CacheKey(exact=exact, scope=scope, query=query)


def semantic_query(request: ChatRequest) -> str | None:
    """The final user question when the semantic cache may answer this request, else None.

    Only plain-text final user turns qualify; requests with tools, several choices, non-text
    content or a question that looks like code (vetoes.py: no two such questions may share an
    answer, so they are neither looked up nor indexed) always need an exact match.
    """
    last = request.messages[-1]
    if last.get("role") != "user" or request.params.get("tools") or request.params.get("functions"):
        return None
    n = request.params.get("n")
    if n not in (None, 1):
        return None
    content = last.get("content")
    if isinstance(content, list) and any(p.get("type") not in ("text", "input_text") for p in content):
        return None
    text = content_text(content).strip()
    if any(m.get("role") in ("tool", "function") for m in request.messages) or looks_like_code(text):
        return None
    return text or None
