"""The OpenAI chat-completions shapes thrifty works with.

Requests keep every parameter the client sent (``params``) so that anything the upstream
accepts passes through untouched; thrifty only reads the few fields it acts on. Responses stay
OpenAI-shaped dicts (what clients receive), with ``Usage`` as the one normalised view of token
counts across provider conventions.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from thrifty.errors import InvalidRequestError

# Body keys thrifty consumes itself and never forwards upstream.
THRIFTY_BODY_KEYS = frozenset({"thrifty", "cache"})
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def body_model(body: Any) -> str:
    """The ``model`` of a request body (chat or embeddings); ``InvalidRequestError`` when the body
    is not a JSON object or names no model."""
    if not isinstance(body, dict):
        raise InvalidRequestError("Request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequestError("'model' is required and must be a non-empty string.", param="model")
    return model


def body_options(body: dict[str, Any]) -> dict[str, Any]:
    """thrifty's per-request options of a body (chat or embeddings): ``thrifty: {...}`` and the
    ``cache`` shorthand; ``InvalidRequestError`` naming the bad field."""
    options: dict[str, Any] = {}
    raw_opts = body.get("thrifty")
    if raw_opts is not None:
        if not isinstance(raw_opts, dict):
            raise InvalidRequestError("'thrifty' must be an object of thrifty options.", param="thrifty")
        options.update(raw_opts)
    if body.get("cache") is not None:  # null is "not set", as for every thrifty option
        # Shorthand `"cache": false` documented for clients that cannot send headers.
        if options.get("cache") is not None and options["cache"] != body["cache"]:
            # Which one wins would be a guess, and a wrong guess serves a cached answer to a
            # client that said not to.
            raise InvalidRequestError("'cache' and 'thrifty.cache' disagree; send one of them.", param="cache")
        options["cache"] = body["cache"]
    return options


@dataclass
class ChatRequest:
    """One chat-completions request: the model asked for, messages, and every other parameter."""

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    # thrifty's own per-request options (body key "thrifty", e.g. {"cache": false, "task": "faq"}).
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Any) -> ChatRequest:
        """Validate an OpenAI request body; raise ``InvalidRequestError`` naming the bad field."""
        model = body_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequestError("'messages' must be a non-empty array.", param="messages")
        for i, msg in enumerate(messages):
            _check_message(i, msg)
        stream = body.get("stream", False)
        if stream is not None and not isinstance(stream, bool):
            raise InvalidRequestError("'stream' must be a boolean.", param="stream")
        options = body_options(body)
        _check_param_types(body)
        params = {
            k: v for k, v in body.items() if k not in ("model", "messages", "stream") and k not in THRIFTY_BODY_KEYS
        }
        return cls(model=model, messages=messages, params=params, stream=bool(stream), options=options)

    @property
    def include_usage(self) -> bool:
        opts = self.params.get("stream_options")
        return bool(isinstance(opts, dict) and opts.get("include_usage"))

    @property
    def metadata(self) -> dict[str, Any]:
        md = self.params.get("metadata")
        return md if isinstance(md, dict) else {}

    def to_body(self, model: str, *, stream: bool | None = None) -> dict[str, Any]:
        """The body to send upstream for ``model`` (the provider's own model name)."""
        body: dict[str, Any] = {"model": model, "messages": self.messages, **self.params}
        if body.get("store") is not True:
            # OpenAI refuses metadata without store (400 "only allowed when 'store' is enabled"), and
            # it means nothing to a provider then; thrifty has read it already (metadata.task).
            body.pop("metadata", None)
        use_stream = self.stream if stream is None else stream
        if use_stream:
            body["stream"] = True
            # Always ask for usage: thrifty must price the stream even if the client did not ask.
            # from_body has already refused a non-object; a ChatRequest built in code gets the same
            # treatment as none rather than a ValueError mid-request.
            raw = body.get("stream_options")
            opts = dict(raw) if isinstance(raw, dict) else {}
            opts["include_usage"] = True
            body["stream_options"] = opts
        else:
            body.pop("stream_options", None)
        return body

    def copy_with(self, **changes: Any) -> ChatRequest:
        new = copy.copy(self)
        for k, v in changes.items():
            setattr(new, k, v)
        return new

    def output_limit(self) -> int | None:
        """The most output tokens one choice may have: the larger of ``max_completion_tokens`` and
        ``max_tokens`` when both are sent (a provider may honour either, so the smaller alone would
        let a client reserve 1 token and be billed for 100k); None when neither is."""
        limits = [v for v in (self.params.get("max_completion_tokens"), self.params.get("max_tokens"))
                  if isinstance(v, int) and not isinstance(v, bool) and v > 0]
        return max(limits) if limits else None

    def choices(self) -> int:
        """How many answers the request asks for (``n``, at least 1)."""
        n = self.params.get("n")
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1

    def last_user_text(self) -> str:
        from thrifty.tokens import last_user_text

        return last_user_text(self.messages)

    def system_text(self) -> str:
        from thrifty.tokens import content_text

        return "\n".join(
            content_text(m.get("content")) for m in self.messages if m.get("role") in ("system", "developer")
        )


def _check_message(i: int, msg: Any) -> None:
    where = f"messages[{i}]"
    if not isinstance(msg, dict):
        raise InvalidRequestError(f"'{where}' must be an object with 'role' and 'content'.", param=where)
    role = msg.get("role")
    if role not in _ROLES:
        raise InvalidRequestError(
            f"'{where}.role' must be one of {sorted(_ROLES)}, got {role!r}.", param=f"{where}.role"
        )
    content = msg.get("content")
    if content is None:
        # An assistant turn may be only tool calls, a refusal or an audio reference, and SDKs send
        # a past reply back with `"content": null`: whether it is complete is the upstream's call.
        if role == "assistant":
            return
        raise InvalidRequestError(f"'{where}.content' is required.", param=f"{where}.content")
    if isinstance(content, str):
        return
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise InvalidRequestError(
                    f"'{where}.content[{j}]' must be an object with a 'type'.", param=f"{where}.content"
                )
            if part["type"] in ("text", "input_text") and not isinstance(part.get("text"), str):
                raise InvalidRequestError(
                    f"'{where}.content[{j}].text' must be a string.", param=f"{where}.content"
                )
        return
    raise InvalidRequestError(
        f"'{where}.content' must be a string or an array of content parts, got {type(content).__name__}.",
        param=f"{where}.content",
    )


_NUMERIC_PARAMS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
_INT_PARAMS = ("max_tokens", "max_completion_tokens", "n", "seed", "top_logprobs")
# Parameters OpenAI defines as JSON objects. thrifty reads or rewrites some of them (stream_options
# is copied into the upstream body, metadata.task picks a route), so a string or an array there
# must be the client's 400, not a ValueError deep in the pipeline (a 500).
_OBJECT_PARAMS = ("stream_options", "metadata", "response_format", "logit_bias")


def _check_param_types(body: dict[str, Any]) -> None:
    for key in _OBJECT_PARAMS:
        v = body.get(key)
        if v is not None and not isinstance(v, dict):
            raise InvalidRequestError(f"'{key}' must be an object, got {_json_type(v)}.", param=key)
    for key in _NUMERIC_PARAMS:
        v = body.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise InvalidRequestError(f"'{key}' must be a number.", param=key)
    for key in _INT_PARAMS:
        v = body.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise InvalidRequestError(f"'{key}' must be an integer.", param=key)
    n = body.get("n")
    if isinstance(n, int) and n < 1:
        raise InvalidRequestError("'n' must be at least 1.", param="n")
    # The items too: token counting and the cache key read each tool, and the message promises strings.
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        raise InvalidRequestError("'tools' must be an array of objects.", param="tools")
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (
            isinstance(stop, list) and all(isinstance(s, str) for s in stop))):
        raise InvalidRequestError("'stop' must be a string or an array of strings.", param="stop")


def _json_type(value: Any) -> str:
    """The JSON name of ``value``'s type, for messages a client reads (not Python's names)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else type(value).__name__


@dataclass
class Usage:
    """Token counts normalised to one convention.

    ``prompt_tokens`` is ALL input tokens, cached ones included (OpenAI's convention);
    ``cached_tokens`` is the part of them read from the provider's prompt cache;
    ``cache_write_tokens`` the part written to it (Anthropic bills these at a premium);
    ``completion_tokens`` is ALL output tokens, reasoning included, since reasoning bills as output;
    ``cost`` is the provider's own figure for the call when it reports one (``usage.cost``).
    Audio (OpenAI audio and realtime models) bills at its own rates, so its share is kept apart:
    ``audio_prompt_tokens`` is the part of ``prompt_tokens`` that is audio, ``cached_audio_tokens``
    the part of that read from the cache (also inside ``cached_tokens``), and
    ``audio_completion_tokens`` the part of ``completion_tokens`` that is audio.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float | None = None
    audio_prompt_tokens: int = 0
    cached_audio_tokens: int = 0
    audio_completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def uncached_prompt_tokens(self) -> int:
        return max(0, self.prompt_tokens - self.cached_tokens - self.cache_write_tokens)

    def __add__(self, other: Usage) -> Usage:
        cost = None if self.cost is None and other.cost is None else (self.cost or 0.0) + (other.cost or 0.0)
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            cost,
            self.audio_prompt_tokens + other.audio_prompt_tokens,
            self.cached_audio_tokens + other.cached_audio_tokens,
            self.audio_completion_tokens + other.audio_completion_tokens,
        )

    @classmethod
    def from_openai(cls, raw: Any) -> Usage:
        """Read a provider's ``usage`` object, whatever its convention.

        - OpenAI: prompt_tokens includes prompt_tokens_details.cached_tokens; completion_tokens
          includes completion_tokens_details.reasoning_tokens.
        - DeepSeek: prompt_cache_hit_tokens + prompt_cache_miss_tokens == prompt_tokens.
        - Moonshot/Kimi: the cache hits are a top-level ``cached_tokens`` (inside prompt_tokens).
        - OpenRouter: prompt_tokens_details.cache_write_tokens (inside prompt_tokens); with
          ``is_byok`` the provider's own charge is added to OpenRouter's fee (``cost``).
        - Anthropic-style (input_tokens/output_tokens): input_tokens EXCLUDES
          cache_read_input_tokens and cache_creation_input_tokens, so they are added back;
          OpenAI Responses-style (input_tokens_details.cached_tokens) includes them.
        - xAI and some Gemini bridges report reasoning OUTSIDE completion_tokens (total_tokens =
          prompt + completion + reasoning, or more): then it is added, so reasoning is never
          billed as free. A reasoning count larger than completion_tokens can only mean the same.
          Gemini's own OpenAI-compatible endpoint does not name its thoughts at all: whatever
          total_tokens counts beyond prompt and completion is taken as reasoning output.
        - Audio: ``prompt_tokens_details.audio_tokens`` and ``completion_tokens_details.audio_tokens``
          (chat completions), ``input_token_details`` / ``output_token_details`` (realtime, with
          ``cached_tokens_details.audio_tokens``); all inside the totals. Chat completions do not
          split cached tokens by modality: they are taken as text unless there are more of them
          than text tokens.
        """
        if not isinstance(raw, dict):
            return cls()
        rawi = _details(raw.get("prompt_tokens_details") or raw.get("input_tokens_details")
                        or raw.get("input_token_details"))
        if "input_tokens" in raw and "prompt_tokens" not in raw:
            written = _count(raw, "cache_creation_input_tokens")
            if "cache_read_input_tokens" in raw or written:
                cached = _count(raw, "cache_read_input_tokens")
                prompt = _count(raw, "input_tokens") + cached + written
            else:  # Responses-style: both inside input_tokens (OpenRouter names the writes here too)
                cached, prompt = _count(rawi, "cached_tokens"), _count(raw, "input_tokens")
                written = _count(rawi, "cache_write_tokens")
            completion = _count(raw, "output_tokens")
        else:
            prompt = _count(raw, "prompt_tokens")
            completion = _count(raw, "completion_tokens")
            cached = _count(rawi, "cached_tokens") or _count(raw, "cached_tokens")
            written = _count(rawi, "cache_write_tokens")
            if not cached and "prompt_cache_hit_tokens" in raw:
                cached = _count(raw, "prompt_cache_hit_tokens")
                if not prompt:
                    prompt = cached + _count(raw, "prompt_cache_miss_tokens")
        cdetails = _details(raw.get("completion_tokens_details") or raw.get("output_tokens_details")
                            or raw.get("output_token_details"))
        reasoning = _count(cdetails, "reasoning_tokens")
        # What total_tokens counts beyond prompt and completion is output the provider left out of
        # completion_tokens: its reasoning (xAI), or thoughts it does not name at all (Gemini's
        # OpenAI-compatible endpoint answers {"prompt_tokens": 9, "completion_tokens": 1,
        # "total_tokens": 103} for a thinking model, https://discuss.ai.google.dev/t/127400).
        # Read as nothing, they were priced as free.
        unreported = _count(raw, "total_tokens") - prompt - completion
        if reasoning and (reasoning > completion or unreported >= reasoning):
            completion += reasoning
            unreported -= reasoning
        if unreported > 0:
            completion += unreported
            reasoning += unreported
        cost = _number(raw.get("cost"))
        if cost is not None and raw.get("is_byok") is True:
            # OpenRouter with the user's own provider key: ``cost`` is only OpenRouter's fee; the
            # provider bills the inference itself (``cost_details.upstream_inference_cost``).
            details = raw.get("cost_details")
            cost += _number(details.get("upstream_inference_cost") if isinstance(details, dict) else None) or 0.0
        cached = min(cached, prompt)
        audio_in = min(_count(rawi, "audio_tokens"), prompt)
        cached_audio = _count(_details(rawi.get("cached_tokens_details")), "audio_tokens")
        # Cached tokens that cannot all be text are partly audio; none can be more than either total.
        cached_audio = min(max(cached_audio, cached - (prompt - audio_in)), cached, audio_in)
        audio_out = min(_count(cdetails, "audio_tokens"), completion)
        return cls(prompt, completion, cached, written, reasoning, cost, audio_in, cached_audio, audio_out)

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }
        if self.audio_prompt_tokens:  # only when there is audio: text-only usage keeps its old shape
            out["prompt_tokens_details"]["audio_tokens"] = self.audio_prompt_tokens
            if self.cached_audio_tokens:
                out["prompt_tokens_details"]["cached_tokens_details"] = {"audio_tokens": self.cached_audio_tokens}
        if self.audio_completion_tokens:
            out["completion_tokens_details"]["audio_tokens"] = self.audio_completion_tokens
        if self.cost is not None:
            out["cost"] = self.cost
        return out


# Built once: ``int | float`` written inside isinstance() makes a new union on every call.
_NUMBERS = (int, float)


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, _NUMBERS) and not isinstance(v, bool) else None


# What a missing or malformed ``*_details`` object reads as. Module-level functions over a dict,
# not a closure made per object: ``from_openai`` runs for every call priced, and making and
# calling those closures cost about 3% of the gateway's CPU per request.
_NO_DETAILS: dict[str, Any] = {}


def _details(d: Any) -> dict[str, Any]:
    return d if isinstance(d, dict) else _NO_DETAILS


def _count(d: dict[str, Any], key: str) -> int:
    """``d[key]`` as a token count: a positive number, else 0 (missing, null, negative, a bool)."""
    v = d.get(key)
    return int(v) if isinstance(v, _NUMBERS) and not isinstance(v, bool) and v > 0 else 0


def response_text(response: dict[str, Any], index: int = 0) -> str:
    """The assistant text of choice ``index`` of an OpenAI chat completion ("" when absent)."""
    try:
        content = response["choices"][index]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""
    return content if isinstance(content, str) else ""


def finish_reason(response: dict[str, Any], index: int = 0) -> str | None:
    """The ``finish_reason`` of choice ``index`` (None when absent or not a string)."""
    try:
        reason = response["choices"][index].get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return reason if isinstance(reason, str) else None


# Finish reasons of a whole answer: OpenAI's (stop, tool_calls, function_call), Anthropic's
# (end_turn, stop_sequence, tool_use), TGI's and others' (eos, eos_token). Every other one means
# the answer was cut or blocked, whatever a provider calls it: "length" (OpenAI), "max_tokens"
# (Anthropic), "insufficient_system_resource" (DeepSeek), "content_filter", "error" (OpenRouter),
# "abort" (vLLM)... An unknown name is taken as a cut too: escalating or retrying costs a call,
# while accepting a cut answer serves it. No finish_reason at all is no evidence either way.
WHOLE_FINISH_REASONS = frozenset({"stop", "tool_calls", "function_call", "end_turn", "stop_sequence", "tool_use",
                                  "eos", "eos_token"})


def cut_or_blocked(reason: str | None) -> bool:
    """Whether a ``finish_reason`` says the answer was cut or blocked (``WHOLE_FINISH_REASONS``)."""
    return reason is not None and reason.lower() not in WHOLE_FINISH_REASONS


def cut_short(response: dict[str, Any], index: int = 0) -> str | None:
    """The finish_reason of choice ``index`` when it says the answer was cut or blocked, else None."""
    reason = finish_reason(response, index)
    return reason if cut_or_blocked(reason) else None


def cut_at_limit(response: dict[str, Any]) -> bool:
    """True when the first choice stopped at ``max_tokens`` (``finish_reason: "length"``): a cut
    answer is not a whole answer, even when its first words would pass a check."""
    return finish_reason(response) == "length"
