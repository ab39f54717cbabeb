"""Text answers to a request with a JSON ``response_format``: usable only as the client reads them.

A client that asks for ``json_object`` or ``json_schema`` reads ``message.content`` with
``json.loads`` (or the SDK's ``.parse``, which validates against its model), relying on OpenAI's
guarantee that the content is JSON. So such an answer passes only when it is exactly JSON,
whitespace aside: a ```json fence or prose around the JSON, which a cheap model may add, makes
the client fail, and thrifty escalates it rather than serve it (it does not strip the fence:
served content is the model's own, and a model that ignored JSON mode is not trusted for the
rest). Without a ``response_format`` (``expect: json`` from the scorer's config) fences stay allowed.
"""

from __future__ import annotations

from typing import Any

from thrifty.routing.formats import parse_json_answer
from thrifty.scoring.jsonschema import schema_problems
from thrifty.types import ChatRequest


def asks_for_json(request: ChatRequest) -> bool:
    fmt = request.params.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def request_schema(request: ChatRequest) -> dict[str, Any] | None:
    fmt = request.params.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        js = fmt.get("json_schema")
        if isinstance(js, dict) and isinstance(js.get("schema"), dict):
            return js["schema"]
    return None


def json_problem(request: ChatRequest, text: str, schema: dict[str, Any] | None = None) -> tuple[str, str] | None:
    """(kind, why) when ``text`` is not a JSON answer the client can use, kind ``invalid`` (no
    usable JSON) or ``schema`` (JSON that breaks ``schema``, default the request's); None when it is.
    Bare JSON is required when the request has a JSON ``response_format``."""
    bare = asks_for_json(request)
    try:
        value = parse_json_answer(text, bare=bare)
    except (ValueError, RecursionError):
        if bare and _fenced_json(text):
            return "invalid", "not bare JSON (a fence or text around it): the client's json.loads would fail"
        return "invalid", "invalid JSON"
    if bare and request.params["response_format"].get("type") == "json_object" and not isinstance(value, dict):
        # JSON mode always answers an object, and clients index into it (json.loads(...)["x"]).
        return "invalid", "not a JSON object: JSON mode answers an object"
    schema = schema if schema is not None else request_schema(request)
    if schema is not None:
        problems = schema_problems(value, schema)
        if problems:
            return "schema", "JSON does not match the schema: " + problems[0]
    return None


def _fenced_json(text: str) -> bool:
    try:
        parse_json_answer(text)
    except (ValueError, RecursionError):
        return False
    return True
