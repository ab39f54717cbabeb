"""Tool-call answers: a model that answers with ``tool_calls`` (and no text) has answered.

A tool call is usable when every call names a function the request offered (``tools``) and
its ``arguments`` are a JSON object matching that function's parameter schema (checked by
``scoring/jsonschema.py``). Scorers read such an answer as a well-formed one; agreement
cascades compare calls by function name and canonical arguments (keys sorted, no spacing), so
two models calling ``get_weather({"city": "Paris"})`` agree however they format the JSON.
Scorers that read text (the LLM judge, the learned scorer) read a tool-call answer as
``graded_answer`` renders it, and give an unusable one 0 without looking further.

The request's ``tool_choice`` and ``parallel_tool_calls`` are part of what makes an answer usable:
OpenAI guarantees them to the client (a named function is the one called, ``required`` always
calls, ``none`` never does, ``parallel_tool_calls: false`` calls at most one), so a cheap answer
that breaks them (``tool_choice_problems``) is unusable too, text answers included.

The legacy form (``functions`` / ``function_call`` in the request, a ``function_call`` in the
answer; deprecated, still served) is read as one tool call, so it is scored the same way.

Custom tools (``{"type": "custom", "custom": {"name": ...}}``, GPT-5's free-form tools) are called
with ``{"type": "custom", "custom": {"name", "input"}}``: usable when the name is a custom tool
the request declared and the input is a string. A grammar-format tool's grammar (Lark, regex) is
not checked: thrifty has no parser for it, so such an input is taken as the model gave it.
"""

from __future__ import annotations

import json
from typing import Any

from thrifty.scoring.jsonschema import schema_problems
from thrifty.scoring.structured import asks_for_json, json_problem
from thrifty.types import ChatRequest


def tool_calls(response: dict[str, Any], index: int = 0) -> list[dict[str, Any]]:
    """The ``tool_calls`` of choice ``index`` (empty when the answer is not a tool call); a legacy
    ``function_call`` answer is one call (it used to read as an empty text answer, score 0 and
    always escalate)."""
    try:
        message = response["choices"][index]["message"]
        calls = message.get("tool_calls")
        legacy = message.get("function_call")
    except (KeyError, IndexError, TypeError, AttributeError):
        return []
    if not calls and isinstance(legacy, dict):
        return [{"type": "function", "function": legacy}]
    return [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []


def offered_functions(request: ChatRequest) -> dict[str, dict[str, Any]]:
    """name -> parameter schema of every function the request offered in ``tools`` (or in the
    legacy ``functions``, a list of the same function objects)."""
    out: dict[str, dict[str, Any]] = {}
    tools = [t.get("function") if isinstance(t, dict) else None for t in request.params.get("tools") or []]
    legacy = request.params.get("functions")  # not checked on the way in: the provider judges it
    for fn in [*tools, *(legacy if isinstance(legacy, list) else [])]:
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            params = fn.get("parameters")
            out[fn["name"]] = params if isinstance(params, dict) else {}
    return out


def offered_custom(request: ChatRequest) -> set[str]:
    """Names of the custom (free-form input) tools the request offered in ``tools``."""
    return {t["custom"]["name"] for t in request.params.get("tools") or []
            if isinstance(t, dict) and t.get("type") == "custom" and isinstance(t.get("custom"), dict)
            and isinstance(t["custom"].get("name"), str)}


def _is_custom(call: dict[str, Any]) -> bool:
    return call.get("type") == "custom"


def _parsed(call: dict[str, Any]) -> tuple[str | None, Any, str | None]:
    """(tool name, parsed arguments or a custom call's input, problem) of one call."""
    if _is_custom(call):
        custom = call.get("custom")
        if not isinstance(custom, dict) or not isinstance(custom.get("name"), str) or not custom["name"]:
            return None, None, "a custom tool call without a name"
        if not isinstance(custom.get("input"), str):
            return custom["name"], None, f"{custom['name']}: input is not a string"
        return custom["name"], custom["input"], None
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


def call_spec(call: dict[str, Any]) -> dict[str, Any] | None:
    """A tool call's ``function`` (its name and arguments), or a custom (free-form) tool's
    ``custom`` (its name and input); None when it has none."""
    spec = call.get("custom") if _is_custom(call) else call.get("function")
    return spec if isinstance(spec, dict) else None


def call_name(call: dict[str, Any]) -> str | None:
    """The tool a call names (a function's or a custom tool's), None without one; its arguments
    are not parsed (they may be tens of kB, and ``tool_call_problems`` parses them once)."""
    spec = call_spec(call)
    name = spec.get("name") if spec is not None else None
    return name if isinstance(name, str) and name else None


def choice_names(choice: Any) -> tuple[str, set[str] | None]:
    """(mode, the function names ``tool_choice`` allows or None for any) of a ``tool_choice``:
    mode ``none`` | ``auto`` | ``required``; a named function and ``allowed_tools`` with mode
    ``required`` force a call among their names, as does a legacy ``function_call: {"name": ...}``.
    Forms thrifty does not know read as ``auto``."""
    if choice in ("none", "auto", "required"):
        return str(choice), None
    if not isinstance(choice, dict):
        return "auto", None
    if "type" not in choice and isinstance(choice.get("name"), str):
        return "required", {choice["name"]}  # legacy function_call
    if choice.get("type") in ("function", "custom"):
        spec = choice.get(choice["type"])
        name = spec.get("name") if isinstance(spec, dict) else None
        return ("required", {name}) if isinstance(name, str) else ("auto", None)
    allowed = choice.get("allowed_tools")
    if choice.get("type") == "allowed_tools" and isinstance(allowed, dict) and isinstance(allowed.get("tools"), list):
        names = {str(t[t["type"]]["name"]) for t in allowed["tools"] if isinstance(t, dict)
                 and t.get("type") in ("function", "custom") and isinstance(t.get(t["type"]), dict)
                 and isinstance(t[t["type"]].get("name"), str)}
        return ("required" if allowed.get("mode") == "required" else "auto"), names
    return "auto", None


def tool_choice_problems(request: ChatRequest, calls: list[dict[str, Any]]) -> list[str]:
    """How an answer making ``calls`` (empty: a text answer) breaks the request's ``tool_choice``
    or ``parallel_tool_calls``. A cheap model that ignores them (some providers do) would
    otherwise be served as a well-formed answer the client was promised it would never get."""
    params = request.params
    if not params.get("tools") and not params.get("functions"):
        return []
    mode, names = choice_names(params["tool_choice"] if "tool_choice" in params else params.get("function_call"))
    problems: list[str] = []
    if mode == "none" and calls:
        problems.append("tool_choice is 'none' but the answer calls a tool")
    if mode == "required" and not calls:
        wanted = f"a call to {', '.join(sorted(names))}" if names else "a tool call"
        problems.append(f"tool_choice requires {wanted} but the answer calls no tool")
    if names is not None:
        for call in calls:
            name = call_name(call)
            if name is not None and name not in names:
                problems.append(f"{name}: tool_choice allows only {', '.join(sorted(names))}")
    if request.params.get("parallel_tool_calls") is False and len(calls) > 1:
        problems.append(f"{len(calls)} tool calls but parallel_tool_calls is false")
    return problems


def tool_call_problems(request: ChatRequest, calls: list[dict[str, Any]]) -> list[str]:
    """Why ``calls`` are not a usable answer to ``request`` (empty when they are)."""
    offered = offered_functions(request)
    custom = offered_custom(request)
    problems: list[str] = tool_choice_problems(request, calls)
    for call in calls:
        name, args, problem = _parsed(call)
        if problem is not None:
            problems.append(problem)
        elif _is_custom(call):
            if name not in custom:  # a free-form input to a tool the client does not have
                problems.append(f"{name}: not a custom tool the request offered")
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
        name, args, _ = _parsed(call)  # a custom call's input: a JSON string, so agreement compares it exactly
        parts.append(f"{name}({json.dumps(args, sort_keys=True, separators=(',', ':'), ensure_ascii=False)})")
    return "; ".join(parts)


def graded_answer(request: ChatRequest, response: dict[str, Any], text: str) -> tuple[str, str | None]:
    """What a text-reading scorer should grade: ``text`` itself, or, for an answer made of tool
    calls only, their rendering (``Tool calls: name({...})``). The second value names why the
    answer is unusable (a call the request did not offer, with bad arguments or against its
    ``tool_choice`` / ``parallel_tool_calls``, text beside it or not), else None."""
    calls = tool_calls(response)
    if not calls:
        # A text answer where tool_choice forces a call is as unusable as a bad call.
        problems = tool_choice_problems(request, [])
        if problems:
            return "", f"unusable answer: {problems[0]}"
        # A JSON response_format: the client json.loads the text, a judge's grade cannot fix that.
        bad = json_problem(request, text) if asks_for_json(request) and text.strip() else None
        return (text, None) if bad is None else ("", f"unusable answer: {bad[1]}")
    # Checked before the text: the client gets the calls whatever the text beside them says
    # ("Let me check." and a call under tool_choice "none", or to another function than the one
    # named), so such an answer is unusable, as the heuristic scorer and the agreement cascades have it.
    problems = tool_call_problems(request, calls)
    if problems:
        return "", f"unusable tool call: {problems[0]}"
    if text.strip():
        return text, None
    return f"Tool calls: {tool_answer(request, response)}", None
