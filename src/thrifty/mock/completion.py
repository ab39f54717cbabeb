"""Planning a chat completion: validate the request, then decide every choice's content.

A ``Plan`` is everything about a response that is a pure function of the request body and the
model's behaviour (texts, tool calls, finish reasons, token counts, logprobs). The wire format
(``wire.py``) and the per-request state (faults, prompt cache, ids) are kept out of it, so a
plan can be cached by the body's hash: benchmarks send the same bodies many times and then
skip tokenizing and hashing entirely.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from thrifty.errors import InvalidRequestError
from thrifty.mock import digest
from thrifty.mock.answers import AnswerRequest, answer_text
from thrifty.mock.behaviour import ModelBehaviour
from thrifty.mock.logprobs import token_logprobs
from thrifty.mock.packed import is_packed
from thrifty.mock.tools import choose_tool, example_from_schema, tool_call
from thrifty.tokens import count_messages, count_text, last_user_text, truncate_text


@dataclass(slots=True)
class ChoicePlan:
    """One choice: text or a tool call, why it ended, and what it costs."""

    content: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str
    completion_tokens: int  # visible tokens plus reasoning tokens
    reasoning_tokens: int
    logprobs: list[dict[str, Any]] | None = None
    key: bytes = b""  # this choice's deterministic key (streamed logprobs derive from it)


@dataclass(slots=True)
class Plan:
    """The deterministic part of a response to one request."""

    model: str
    key: bytes
    prompt_tokens: int
    choices: list[ChoicePlan] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)

    @property
    def reasoning_tokens(self) -> int:
        return sum(c.reasoning_tokens for c in self.choices)


def validate(body: Any) -> tuple[str, list[dict[str, Any]]]:
    """Reject what OpenAI rejects with a 400 (the subset clients commonly get wrong)."""
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("'messages' must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequestError(f"messages[{i}] must be an object with a role.", param=f"messages[{i}]")
    n = body.get("n", 1)
    if n is not None and (not _is_int(n) or not 1 <= n <= 128):
        raise InvalidRequestError("n must be an integer between 1 and 128.", param="n")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not _is_int(value) or value < 1):
            raise InvalidRequestError(f"{name} must be a positive integer.", param=name)
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str)
        or (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))
    ):
        raise InvalidRequestError("stop must be a string or an array of up to 4 strings.", param="stop")
    top = body.get("top_logprobs")
    if top is not None:
        if not _is_int(top) or not 0 <= top <= 20:
            raise InvalidRequestError(
                "top_logprobs must be an integer between 0 and 20.", param="top_logprobs"
            )
        if not body.get("logprobs"):
            raise InvalidRequestError(
                "logprobs must be set to true if top_logprobs is used.", param="logprobs"
            )
    fmt = body.get("response_format")
    if fmt is not None and (
        not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema")
    ):
        raise InvalidRequestError("Invalid response_format.", param="response_format")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequestError("tools must be an array.", param="tools")
    return model, messages


def refuse_unsupported(body: dict[str, Any], behaviour: ModelBehaviour) -> None:
    """Raise the 400 OpenAI answers a parameter the model does not take (its messages, type,
    ``param`` and ``code``), so clients and thrifty's own calls can be tested against a reasoning
    model: o-series and GPT-5-and-later refuse ``max_tokens`` and any ``temperature`` but 1."""
    for name in behaviour.reject_params:
        if name in body:
            raise InvalidRequestError(f"Unrecognized request argument supplied: {name}", param=name)
    for name, values in behaviour.reject_values.items():
        if body.get(name) in values:
            raise InvalidRequestError(f"Unsupported value: '{name}' does not support '{body[name]}' with this "
                                      "model.", param=name, code="unsupported_value")
    if behaviour.metadata_needs_store and body.get("metadata") is not None and body.get("store") is not True:
        # OpenAI's chat completions since 2025 (public reports: spiceai/spiceai#5231, BerriAI/litellm#23108).
        raise InvalidRequestError("The 'metadata' parameter is only allowed when 'store' is enabled.",
                                  param="metadata")
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if behaviour.response_formats is not None and kind is not None and kind not in behaviour.response_formats:
        # DeepSeek's words for a json_schema (https://api-docs.deepseek.com/api/create-chat-completion
        # lists only text and json_object), param and code as it sends them.
        raise InvalidRequestError("This response_format type is unavailable now", code="invalid_request_error")
    if not behaviour.reasoning_model:
        return
    if "max_tokens" in body:
        raise InvalidRequestError("Unsupported parameter: 'max_tokens' is not supported with this model. "
                                  "Use 'max_completion_tokens' instead.", param="max_tokens",
                                  code="unsupported_parameter")
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise InvalidRequestError(f"Unsupported value: 'temperature' does not support {temperature} with this "
                                  "model. Only the default (1) value is supported.", param="temperature",
                                  code="unsupported_value")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Planner:
    """Builds plans, remembering the last ``cache_size`` by the hash of the raw body."""

    def __init__(self, seed: int, cache_size: int = 4096) -> None:
        self._seed = seed
        self._cache: OrderedDict[bytes, Plan] = OrderedDict()
        self._cache_size = cache_size

    def plan(self, raw: bytes, body: dict[str, Any], model: str, behaviour: ModelBehaviour) -> Plan:
        cache_key = hashlib.blake2b(raw, digest_size=16).digest()
        found = self._cache.get(cache_key)
        if found is not None:
            self._cache.move_to_end(cache_key)
            return found
        plan = build_plan(self._seed, body, model, behaviour)
        self._cache[cache_key] = plan
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return plan


def build_plan(seed: int, body: dict[str, Any], model: str, behaviour: ModelBehaviour) -> Plan:
    """Every choice of the answer to ``body`` (assumed ``validate``d)."""
    messages = body["messages"]
    key = digest.request_key(seed, model, body)
    plan = Plan(
        model=model,
        key=key,
        prompt_tokens=count_messages(messages, body.get("tools")),
        logprobs=bool(body.get("logprobs")),
        top_logprobs=int(body.get("top_logprobs") or 0),
    )
    last_user = last_user_text(messages)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    for index in range(int(body.get("n") or 1)):
        choice_key = key if index == 0 else digest.sub_key(key, index)
        plan.choices.append(
            _choice(AnswerRequest(model, body, last_user, choice_key), behaviour, limit, plan)
        )
    return plan


def _choice(req: AnswerRequest, behaviour: ModelBehaviour, limit: int | None, plan: Plan) -> ChoicePlan:
    low, high = behaviour.reasoning_tokens
    reasoning = digest.pick(req.key, "reasoning", low, high)
    if limit is not None:
        reasoning = min(reasoning, limit)  # reasoning spends the budget first, as on o-series
    tool = choose_tool(req.body, behaviour, req.last_user, req.key)
    if tool is not None:
        call = tool_call(tool, req.key, req.last_user)
        tokens = count_text(call["function"]["name"]) + count_text(call["function"]["arguments"]) + 3
        return ChoicePlan(None, [call], "tool_calls", tokens + reasoning, reasoning, key=req.key)

    text = _shape(answer_text(req, behaviour), req)
    finish = behaviour.finish_reason or "stop"
    stop = req.body.get("stop")
    for marker in [stop] if isinstance(stop, str) else stop or []:
        cut = text.find(marker) if marker else -1
        if cut >= 0:
            text = text[:cut]
    visible = count_text(text)
    if limit is not None and visible > limit - reasoning:
        text = truncate_text(text, limit - reasoning) if limit > reasoning else ""
        visible = count_text(text)
        finish = "length"
    logprobs = token_logprobs(text, req.key, plan.top_logprobs) if plan.logprobs else None
    return ChoicePlan(text, None, finish, visible + reasoning, reasoning, logprobs, req.key)


def _shape(text: str, req: AnswerRequest) -> str:
    """Apply ``response_format``: JSON mode wraps the answer in a valid JSON object."""
    fmt = req.body.get("response_format")
    if not isinstance(fmt, dict):
        return text
    if fmt.get("type") == "json_object":
        if text.lstrip().startswith("{"):
            try:  # a configured answer that is already a JSON object is sent as-is
                json.loads(text)
                return text
            except ValueError:
                pass
        return json.dumps({"answer": text})
    if fmt.get("type") == "json_schema":
        if is_packed(req.body):  # shaped by mock/packed.py already (and maybe broken on purpose)
            return text
        schema = (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
        return json.dumps(example_from_schema(schema, req.key, text))
    return text
