"""Tool calls and structured output: when to call a tool and what arguments to send.

Arguments (and ``json_schema`` response bodies) are example values generated from the JSON
schema, deterministic by the request key, so tests can parse them with the schema they sent.

When the model calls a tool, by ``ModelBehaviour.tool_calls``:
  * ``tool_choice`` "required" or a named function: always call (the named one).
  * "always": call whenever tools are given, unless the last message is a tool result
    (so an agent loop ends with a text answer).
  * "auto" (default): call when the last user message mentions a tool by name
    (``get_weather`` or "get weather"); otherwise answer with text.
  * "never", or ``tool_choice`` "none": never call.
"""

from __future__ import annotations

import json
from typing import Any

from thrifty.mock import digest
from thrifty.mock.behaviour import ModelBehaviour
from thrifty.scoring.tools import choice_names


def choose_tool(
    body: dict[str, Any], behaviour: ModelBehaviour, last_user: str, key: bytes
) -> dict[str, Any] | None:
    """The ``function`` object of the tool to call, or None to answer with text."""
    tools = [
        t["function"]
        for t in body.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        # Read as the gateway's scorer reads it, so the mock and the scorer agree on what is
        # allowed; only the mode stays ("auto": maybe, "required": one of them, surely).
        choice, names = choice_names(choice)
        tools = [t for t in tools if names is None or t.get("name") in names]
    if not tools or choice == "none" or behaviour.tool_calls == "never":
        return None
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        return next((t for t in tools if t.get("name") == wanted), tools[0])
    messages = body.get("messages") or []
    after_tool = bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"
    if choice != "required":
        if after_tool:
            return None
        if behaviour.tool_calls == "auto":
            lowered = last_user.lower()
            for tool in tools:
                name = str(tool.get("name", "")).lower()
                if name and (name in lowered or name.replace("_", " ") in lowered):
                    return tool
            return None
    return tools[digest.pick(key, "tool", 0, len(tools) - 1)]


def tool_call(tool: dict[str, Any], key: bytes, text: str) -> dict[str, Any]:
    """One OpenAI ``tool_calls`` entry calling ``tool`` with schema-shaped arguments."""
    args = example_from_schema(tool.get("parameters") or {"type": "object"}, key, text)
    return {
        "id": "call_" + digest.sub_key(key, "call").hex()[:24],
        "type": "function",
        "function": {"name": str(tool.get("name", "tool")), "arguments": json.dumps(args)},
    }


# How many ``$ref`` hops one value may take: a recursive model (a node with child nodes) would
# otherwise be expanded forever; past it the value is null (its optional branch, usually).
_MAX_REF_DEPTH = 8


def example_from_schema(schema: Any, key: bytes, text: str, path: str = "$",
                        root: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """A value matching (the common subset of) JSON ``schema``; strings take words of ``text``.

    ``$ref`` to ``#/$defs/...`` (or ``#/definitions/...``) of the ``root`` schema is followed:
    pydantic writes every nested model that way (what the openai SDK's ``.parse`` and
    ``pydantic_function_tool`` send), and a provider honouring the schema fills them in."""
    if not isinstance(schema, dict):
        return None
    root = schema if root is None else root
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = _resolve(root, ref)
        if target is None or depth >= _MAX_REF_DEPTH:
            return None
        return example_from_schema(target, key, text, path, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][digest.pick(key, path, 0, len(schema["enum"]) - 1)]
    for combo in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(combo), list) and schema[combo]:
            return example_from_schema(schema[combo][0], key, text, path, root, depth)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: example_from_schema(sub, key, text, f"{path}.{name}", root, depth)
                for name, sub in props.items()}
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        return [example_from_schema(schema.get("items", {}), key, text, f"{path}[{i}]", root, depth)
                for i in range(count)]
    if kind == "integer":
        return digest.pick(key, path, int(schema.get("minimum", 0)), int(schema.get("maximum", 100)))
    if kind == "number":
        low, high = float(schema.get("minimum", 0)), float(schema.get("maximum", 100))
        return round(low + (high - low) * digest.unit(key, path), 2)
    if kind == "boolean":
        return digest.unit(key, path) < 0.5
    if kind == "null":
        return None
    words = text.split()
    if not words:
        return "value"
    start = digest.pick(key, path, 0, max(0, len(words) - 3))
    return " ".join(words[start : start + 3])


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any] | None:
    """The sub-schema a local JSON pointer (``#/$defs/City``) names in ``root``; None for any other."""
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, dict) else None
