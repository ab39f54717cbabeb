"""Tool-call answers: a model that answers with ``tool_calls`` (and no text) has answered.

A tool call is usable when every call names a function the request offered (``tools``) and
its ``arguments`` are a JSON object matching that function's parameter schema (the subset
``scoring/jsonschema.py`` checks). Scorers read such an answer as a well-formed one; agreement
cascades compare calls by function name and canonical arguments (keys sorted, no spacing), so
two models calling ``get_weather({"city": "Paris"})`` agree however they format the JSON.
Scorers that read text (the LLM judge, the learned scorer) read a tool-call answer as
``graded_answer`` renders it, and give an unusable one 0 without looking further.
"""

from __future__ import annotations

import json
from typing import Any

from thrifty.scoring.jsonschema import schema_problems
from thrifty.types import ChatRequest


def tool_calls(response: dict[str, Any], index: int = 0) -> list[dict[str, Any]]:
    """The ``tool_calls`` of choice ``index`` (empty when the answer is not a tool call)."""
    try:
        calls = response["choices"][index]["message"].get("tool_calls")
    except (KeyError, IndexError, TypeError, AttributeError):
        return []
    return [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []


def offered_functions(request: ChatRequest) -> dict[str, dict[str, Any]]:
    """name -> parameter schema of every function the request offered in ``tools``."""
    out: dict[str, dict[str, Any]] = {}
    for tool in request.params.get("tools") or []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            params = fn.get("parameters")
            out[fn["name"]] = params if isinstance(params, dict) else {}
    return out


def _parsed(call: dict[str, Any]) -> tuple[str | None, Any, str | None]:
    """(function name, parsed arguments, problem) of one call."""
    fn = call.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        return None, None, "a tool call without a function name"
    raw = fn.get("arguments")
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return fn["name"], None, f"{fn['name']}: arguments are not valid JSON"
    if not isinstance(args, dict):
        return fn["name"], None, f"{fn['name']}: arguments are not a JSON object"
    return fn["name"], args, None


def tool_call_problems(request: ChatRequest, calls: list[dict[str, Any]]) -> list[str]:
    """Why ``calls`` are not a usable answer to ``request`` (empty when they are)."""
    offered = offered_functions(request)
    problems: list[str] = []
    for call in calls:
        name, args, problem = _parsed(call)
        if problem is not None:
            problems.append(problem)
        elif name not in offered:
            problems.append(f"{name}: not a function the request offered")
        else:
            problems += [f"{name}: {p}" for p in schema_problems(args, offered[name], "arguments")]
    return problems


def tool_answer(request: ChatRequest, response: dict[str, Any]) -> str | None:
    """The normalised answer of a tool-call response (``name(canonical args)`` per call, in
    order), None when it is not a tool call or not a usable one."""
    calls = tool_calls(response)
    if not calls or tool_call_problems(request, calls):
        return None
    parts = []
    for call in calls:
        name, args, _ = _parsed(call)
        parts.append(f"{name}({json.dumps(args, sort_keys=True, separators=(',', ':'), ensure_ascii=False)})")
    return "; ".join(parts)


def graded_answer(request: ChatRequest, response: dict[str, Any], text: str) -> tuple[str, str | None]:
    """What a text-reading scorer should grade: ``text`` itself, or, for an answer made of tool
    calls only, their rendering (``Tool calls: name({...})``). The second value names why the
    answer is unusable (a tool call the request did not offer or with bad arguments), else None."""
    calls = tool_calls(response)
    if text.strip() or not calls:
        return text, None
    problems = tool_call_problems(request, calls)
    if problems:
        return "", f"unusable tool call: {problems[0]}"
    return f"Tool calls: {tool_answer(request, response)}", None
