"""A Responses API request for ``auto`` or a route, as the chat completion the pipeline runs, and
the chat answer back as a Responses ``response`` object (server/responses_routed.py serves them).

Why translate rather than pass through: routing, cascades, caches and compression work on chat
completions, and most cheap providers (DeepSeek, Together, vLLM, Ollama...) have no /responses
endpoint at all. Pure functions: no I/O, so the two shapes can be checked apart from the server.

What cannot be carried is refused with a 400 naming the field, never silently dropped: state
kept at one provider (``previous_response_id``, ``conversation``, ``prompt``), ``background``
runs, built-in tools (they run at OpenAI) and input items other than messages and function
calls. ``store`` goes to the chat completion (OpenAI keeps that, with its ``metadata``, which is
sent only then), but the routed response itself is not stored anywhere. Reasoning items are
dropped (another model cannot read an encrypted chain of thought).
"""

from __future__ import annotations

from typing import Any

from thrifty.errors import InvalidRequestError
from thrifty.server.passthrough import checked_stream, is_int
from thrifty.types import THRIFTY_BODY_KEYS, Usage, body_model

# Request fields that name state a provider keeps: only that provider can continue it.
_STATEFUL = {
    "previous_response_id": "a stored response lives at the provider that answered it",
    "conversation": "a conversation is stored at one provider",
    "prompt": "a stored prompt template lives at one provider",
}
# Fields copied to the chat request as they are (the same name and meaning in both APIs).
_SAME = ("temperature", "top_p", "user", "metadata", "store", "service_tier", "parallel_tool_calls",
         "safety_identifier", "prompt_cache_key", "prompt_cache_retention")
# Top-level fields read elsewhere, or accepted and ignored (documented in docs/http-api.md).
_HANDLED = frozenset({"model", "input", "instructions", "tools", "tool_choice", "text", "max_output_tokens",
                      "reasoning", "stream", "store", "background", "include", "truncation", "stream_options",
                      "top_logprobs",
                      *_SAME, *_STATEFUL, *THRIFTY_BODY_KEYS})
# Message roles a Responses input message may have, all of which chat knows too.
_ROLES = frozenset({"user", "assistant", "system", "developer"})
# The ``include`` value asking for the output text's logprobs.
LOGPROBS_INCLUDE = "message.output_text.logprobs"
# A chat finish_reason that cut the answer, and the Responses ``incomplete_details.reason`` for it.
_CUT = {"length": "max_output_tokens", "content_filter": "content_filter"}


class Unsupported(InvalidRequestError):
    """What a Responses request served as a chat completion cannot carry. The message tells a
    client of ``auto`` or a route what to do; ``why`` is kept for other wordings (a named model
    whose provider has no /responses: responses_routed.py)."""

    def __init__(self, param: str, why: str) -> None:
        super().__init__(f"'{param}' is not supported with model 'auto' or a route: {why}. Name a catalog model "
                         "to use it (the request is then passed through to that model's provider).",
                         param=param, code="unsupported_parameter")
        self.why = why


def refused(param: str, why: str) -> Unsupported:
    """The 400 for what a Responses request served as a chat completion cannot carry."""
    return Unsupported(param, why)


def chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completions body for a Responses ``body`` (``InvalidRequestError`` naming the field)."""
    model = body_model(body)
    for key, why in _STATEFUL.items():
        if body.get(key) is not None:
            raise refused(key, why)
    if body.get("background") is True:
        raise refused("background", "a background run is stored and polled at one provider")
    out: dict[str, Any] = {"model": model, "messages": _messages(body)}
    out.update({k: body[k] for k in THRIFTY_BODY_KEYS if k in body})
    if checked_stream(body):
        out["stream"] = True
    out.update({k: body[k] for k in _SAME if body.get(k) is not None})
    tools = _tools(body["tools"]) if body.get("tools") is not None else []
    if tools:
        out["tools"] = tools
        if body.get("tool_choice") is not None:
            out["tool_choice"] = _tool_choice(body["tool_choice"])
    else:
        # The Responses API takes these without tools; chat completions refuse them then (OpenAI:
        # 400 "only allowed when 'tools' are specified"), and there is nothing for them to say.
        out.pop("parallel_tool_calls", None)
        if body.get("tool_choice") is not None:
            _tool_choice(body["tool_choice"])  # still checked: a built-in tool choice is refused
    limit = body.get("max_output_tokens")
    if limit is not None:
        if not is_int(limit) or limit < 1:
            raise InvalidRequestError("'max_output_tokens' must be a positive integer.", param="max_output_tokens")
        out["max_completion_tokens"] = limit
    out.update(_text(body.get("text")))
    out.update(_logprobs(body))
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        out["reasoning_effort"] = reasoning["effort"]
    return out


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequestError("'instructions' must be a string.", param="instructions")
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    value = body.get("input")
    if isinstance(value, str):
        return [*messages, {"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise InvalidRequestError("'input' must be a string or a non-empty array of input items.", param="input")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidRequestError(f"'input[{i}]' must be an object.", param=f"input[{i}]")
        _add_item(messages, item, f"input[{i}]")
    if not messages:
        raise InvalidRequestError("'input' holds nothing a model can read (only reasoning items).", param="input")
    return messages


def _add_item(messages: list[dict[str, Any]], item: dict[str, Any], where: str) -> None:
    """Append what one input item says to ``messages``: function calls join the assistant message
    before them, as chat carries a turn's text and its tool calls in one message."""
    kind = item.get("type", "message")
    if kind == "message":
        message = _message(item, where)
        last = messages[-1] if messages else None
        if message["role"] == "assistant" and last is not None and last["role"] == "assistant" and last.get("tool_calls"):
            # The Responses API may give a turn's text after its function calls (OpenAI's streams
            # do; the Agents SDK replays them in that order). Chat refuses an assistant message
            # with tool_calls not followed by their tool messages, so the text joins that message.
            last["content"] = "\n".join(t for t in (last["content"], message["content"]) if t)
        else:
            messages.append(message)
    elif kind == "function_call":
        call = {"id": _text_field(item, "call_id", where), "type": "function",
                "function": {"name": _text_field(item, "name", where), "arguments": _text_field(item, "arguments", where)}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":  # its text (always a string here) or calls
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        messages.append({"role": "tool", "tool_call_id": _text_field(item, "call_id", where),
                         "content": _tool_output(item.get("output"), f"{where}.output")})
    elif kind == "reasoning":
        return  # another model's (often encrypted) reasoning: nothing this one can use
    else:
        raise refused(f"{where}.type", f"an input item of type '{kind}' cannot be carried to a chat model "
                      "(messages, function_call and function_call_output items can)")


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise InvalidRequestError(f"'{where}.role' must be one of user, assistant, system, developer.",
                                  param=f"{where}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequestError(f"'{where}.content' must be a string or an array of content parts.",
                                  param=f"{where}.content")
    parts = [_part(part, f"{where}.content[{j}]") for j, part in enumerate(content)]
    if role == "user" and any(p["type"] != "text" for p in parts):
        return {"role": role, "content": parts}
    if any(p["type"] != "text" for p in parts):
        raise refused(f"{where}.content", f"a {role} message can only hold text in a chat completion")
    # Text only: one string, which every chat provider reads (some refuse parts in system or
    # assistant messages).
    return {"role": role, "content": "".join(p["text"] for p in parts)}


def _part(part: Any, where: str) -> dict[str, Any]:
    """One content part in chat's form."""
    kind = part.get("type") if isinstance(part, dict) else None
    if not isinstance(kind, str):
        raise InvalidRequestError(f"'{where}' must be a content part object with a 'type'.", param=where)
    if kind in ("input_text", "output_text") and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "refusal" and isinstance(part.get("refusal"), str):  # an earlier turn's refusal, as its text
        return {"type": "text", "text": part["refusal"]}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise refused(where, "an image must be given by 'image_url' (a URL or a data: URL); an uploaded "
                          "file's 'file_id' is known only to the provider that holds it")
        image: dict[str, Any] = {"url": url}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        if part.get("file_url") is not None:
            raise refused(where, "chat completions take a file as 'file_data' or 'file_id', not 'file_url'")
        file = {k: part[k] for k in ("file_data", "file_id", "filename") if part.get(k) is not None}
        if not file.get("file_data") and not file.get("file_id"):
            raise InvalidRequestError(f"'{where}' needs 'file_data' or 'file_id'.", param=where)
        return {"type": "file", "file": file}
    raise refused(where, f"a content part of type '{kind}' cannot be carried to a chat model")


def _tool_output(output: Any, where: str) -> str:
    """A function call's output as a tool message's text (chat tool messages hold text only)."""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = [_part(p, f"{where}[{j}]") for j, p in enumerate(output)]
        if all(t["type"] == "text" for t in texts):
            return "".join(t["text"] for t in texts)
        raise refused(where, "a chat tool message can only hold text")
    raise InvalidRequestError(f"'{where}' must be a string or an array of content parts.", param=where)


def _text_field(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise InvalidRequestError(f"'{where}.{key}' must be a string.", param=f"{where}.{key}")
    return value


def _tools(tools: Any) -> list[dict[str, Any]]:
    """Responses function tools (flat) in chat's nested form; built-in tools are refused."""
    if not isinstance(tools, list):
        raise InvalidRequestError("'tools' must be an array.", param="tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not isinstance(kind, str):
            raise InvalidRequestError(f"'tools[{i}]' must be a tool object with a 'type'.", param=f"tools[{i}]")
        if kind != "function":
            raise refused(f"tools[{i}].type", f"'{kind}' is a tool OpenAI runs itself (only 'function' tools "
                          "work with any model)")
        if not isinstance(tool.get("name"), str):
            raise InvalidRequestError(f"'tools[{i}].name' must be a string.", param=f"tools[{i}].name")
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise refused("tool_choice", "only 'auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...} "
                  "can be carried to a chat model")


def _text(text: Any) -> dict[str, Any]:
    """``text.format`` as chat's ``response_format`` and ``text.verbosity`` as ``verbosity``."""
    if text is None:
        return {}
    if not isinstance(text, dict):
        raise InvalidRequestError("'text' must be an object.", param="text")
    out: dict[str, Any] = {}
    if text.get("verbosity") is not None:
        out["verbosity"] = text["verbosity"]
    fmt = text.get("format")
    if fmt is None:
        return out
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("text", "json_object"):
        out["response_format"] = {"type": kind}
    elif kind == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise InvalidRequestError("'text.format' of type json_schema needs a 'name' and a 'schema' object.",
                                      param="text.format")
        schema = {k: fmt[k] for k in ("name", "description", "schema", "strict") if fmt.get(k) is not None}
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    else:
        raise refused("text.format", f"a format of type '{kind}' cannot be carried to a chat model")
    return out


def _logprobs(body: dict[str, Any]) -> dict[str, Any]:
    """Chat's ``logprobs`` / ``top_logprobs`` when the request includes the output text's logprobs
    (the Agents SDK asks so for ``ModelSettings(top_logprobs=N)``); the Responses API returns them
    only then, whatever ``top_logprobs`` says, and chat refuses ``top_logprobs`` without ``logprobs``."""
    include = body.get("include")
    if not isinstance(include, list) or LOGPROBS_INCLUDE not in include:
        return {}
    top = body.get("top_logprobs")
    if top is None:
        return {"logprobs": True}
    if not is_int(top) or not 0 <= top <= 20:
        raise InvalidRequestError("'top_logprobs' must be an integer from 0 to 20.", param="top_logprobs")
    return {"logprobs": True, "top_logprobs": top}


def unknown_fields(body: dict[str, Any]) -> list[str]:
    """Top-level fields this translation neither reads nor knows to ignore (logged, not refused)."""
    return sorted(k for k in body if k not in _HANDLED)


# --- the answer ---------------------------------------------------------------------------------

def obj(value: Any) -> dict[str, Any]:
    """``value`` when it is an object, else an empty one (a provider's answer is read, not trusted)."""
    return value if isinstance(value, dict) else {}


# How a routed response's id starts: ``resp_`` + thrifty's request id (``req_...``), which no
# provider's id does, so GET /v1/responses/{id} can tell why it holds no such response.
ROUTED_PREFIX = "resp_req_"


def response_id(request_id: str) -> str:
    """A routed response's id: thrifty's request id, so the ledger row is found from it."""
    return "resp_" + request_id


def item_id(prefix: str, request_id: str, index: int) -> str:
    """An output item's id (``msg_...``, ``fc_...``): unique per response and output index."""
    return f"{prefix}_{request_id.removeprefix('req_')}_{index}"


def shell(body: dict[str, Any], request_id: str, created_at: int, model: str) -> dict[str, Any]:
    """The response object before any output: the request's settings echoed, as OpenAI does."""
    return {
        "id": response_id(request_id), "object": "response", "created_at": created_at, "status": "in_progress",
        "background": False, "error": None, "incomplete_details": None, "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"), "model": model, "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True), "previous_response_id": None,
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "service_tier": body.get("service_tier"), "store": False, "temperature": body.get("temperature"),
        "text": body.get("text") or {"format": {"type": "text"}}, "tool_choice": body.get("tool_choice", "auto"),
        "top_logprobs": body.get("top_logprobs"),
        "tools": body.get("tools") or [], "top_p": body.get("top_p"), "truncation": body.get("truncation", "disabled"),
        "usage": None, "user": body.get("user"), "metadata": body.get("metadata") or {},
    }


def finished(base: dict[str, Any], output: list[dict[str, Any]], finish_reason: Any, raw_usage: Any,
             service_tier: Any) -> dict[str, Any]:
    """``base`` (a ``shell``) finished with ``output``: its status from the chat finish_reason."""
    cut = _CUT.get(finish_reason) if isinstance(finish_reason, str) else None
    out = {**base, "status": "incomplete" if cut else "completed", "output": output,
           "incomplete_details": {"reason": cut} if cut else None, "usage": responses_usage(raw_usage)}
    if service_tier is not None:
        out["service_tier"] = service_tier
    return out


def item_status(cut: bool, last: bool) -> str:
    """An output item's status: the last item of a cut answer is the one left incomplete."""
    return "incomplete" if cut and last else "completed"


def is_cut(finish_reason: Any) -> bool:
    return isinstance(finish_reason, str) and finish_reason in _CUT


def text_part(text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def _token_logprob(entry: dict[str, Any]) -> dict[str, Any]:
    token = str(entry.get("token") or "")
    raw_bytes = entry.get("bytes")
    # The SDK's Logprob requires ``bytes``; chat may send null (a token that is not valid UTF-8 alone).
    return {"token": token, "logprob": entry.get("logprob", 0.0),
            "bytes": raw_bytes if isinstance(raw_bytes, list) else list(token.encode())}


def text_logprobs(raw: Any) -> list[dict[str, Any]]:
    """A chat choice's ``logprobs`` (its ``content`` tokens) as an ``output_text`` part's logprobs."""
    out: list[dict[str, Any]] = []
    for entry in obj(raw).get("content") or []:
        if isinstance(entry, dict):
            top = [_token_logprob(t) for t in entry.get("top_logprobs") or [] if isinstance(t, dict)]
            out.append({**_token_logprob(entry), "top_logprobs": top})
    return out


def refusal_part(text: str) -> dict[str, Any]:
    return {"type": "refusal", "refusal": text}


def message_item(request_id: str, index: int, content: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": item_id("msg", request_id, index), "type": "message", "role": "assistant", "status": status,
            "content": content}


def call_item(request_id: str, index: int, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item_id("fc", request_id, index), "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}


def response_object(chat: dict[str, Any], base: dict[str, Any], request_id: str) -> dict[str, Any]:
    """A whole chat completion as the Responses object ``base`` (a ``shell``) becomes."""
    choices = chat.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = obj(choice.get("message"))
    finish = choice.get("finish_reason")
    content: list[dict[str, Any]] = []
    # The refusal first, as the same answer streamed (streaming.response_to_chunks: a cache hit,
    # a cascade's) arrives and is translated (server/responses_stream.py).
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        content.append(refusal_part(message["refusal"]))
    if isinstance(message.get("content"), str) and message["content"]:
        content.append(text_part(message["content"], text_logprobs(choice.get("logprobs"))))
    calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict) and isinstance(c.get("function"), dict)]
    count = (1 if content else 0) + len(calls)
    output: list[dict[str, Any]] = []
    if content:
        output.append(message_item(request_id, 0, content, item_status(is_cut(finish), count == 1)))
    for call in calls:
        index = len(output)
        fn = call["function"]
        output.append(call_item(request_id, index, str(call.get("id") or ""), str(fn.get("name") or ""),
                                str(fn.get("arguments") or ""), item_status(is_cut(finish), index == count - 1)))
    return finished(base, output, finish, chat.get("usage"), chat.get("service_tier"))


def responses_usage(raw: Any) -> dict[str, Any] | None:
    """A chat ``usage`` in the Responses API's shape (read whatever the provider's convention)."""
    if not isinstance(raw, dict):
        return None
    usage = Usage.from_openai(raw)
    # cache_write_tokens: the SDK's InputTokensDetails requires it (0 where nothing was written).
    details = {"cached_tokens": usage.cached_tokens, "cache_write_tokens": usage.cache_write_tokens}
    return {"input_tokens": usage.prompt_tokens, "input_tokens_details": details,
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.total_tokens}
