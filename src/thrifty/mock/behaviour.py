"""Typed configuration of the mock upstream: what each model answers and how it fails.

A ``MockConfig`` holds a ``default`` behaviour and per-model overrides. Only the fields a model
entry sets explicitly override the default (pydantic's ``model_fields_set``), so a YAML file can
say ``models: {weak: {wrong_rate: 0.3}}`` and inherit everything else. Model keys may be glob
patterns (``gpt-4o*``); exact names win over patterns, earlier patterns over later ones.

    seed: 7
    allowed_models: [cheap, strong]        # omit to accept any model name
    default:
      faults: {latency_ms: 20, jitter_ms: 10}
    models:
      strong: {answers: [{pattern: "capital of France", answer: "Paris"}]}
      cheap:  {wrong_rate: 0.3, usage_convention: deepseek, reasoning_tokens: [10, 40]}
      o-mini: {reasoning_model: true, reasoning_tokens: 200}   # refuses max_tokens, temperature 0

The config is validated once at startup (``ConfigError`` names the bad key); request handling
only reads the resolved, immutable objects.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from thrifty.config import yaml_problem
from thrifty.errors import ConfigError

UsageConvention = Literal["openai", "deepseek", "openrouter", "none"]
ToolCallMode = Literal["auto", "always", "never"]
RetryAfterForm = Literal["both", "seconds", "ms", "http_date", "ratelimit_reset"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Faults(_Frozen):
    """Failure injection. Every field also exists as an ``x-mock-behaviour`` header key."""

    latency_ms: float = Field(default=0.0, ge=0, description="Fixed delay before the response starts.")
    jitter_ms: float = Field(
        default=0.0, ge=0, description="Extra delay in [0, jitter_ms), deterministic by seed."
    )
    chunk_delay_ms: float = Field(default=0.0, ge=0, description="Delay between stream chunks.")
    status: int | None = Field(
        default=None, ge=400, le=599, description="Always answer with this HTTP error."
    )
    retry_after: float | None = Field(
        default=None, ge=0, description="Retry-After seconds sent with 429/503."
    )
    error_rate: float = Field(
        default=0.0, ge=0, le=1, description="Fraction of requests failing with fail_status."
    )
    fail_first: int = Field(
        default=0, ge=0, description="The first N requests per model fail with fail_status."
    )
    fail_status: int = Field(default=500, ge=400, le=599)
    error_message: str | None = None
    hang: bool = Field(default=False, description="Never answer; wait until the client gives up.")
    truncate_after: int | None = Field(
        default=None, ge=0, description="Close a stream after N chunks, no [DONE]."
    )
    keep_alive: bool = Field(
        default=False, description="Keep-alive filler, as DeepSeek and OpenRouter send while busy: SSE comment "
        "lines (`: OPENROUTER PROCESSING`, `: keep-alive`) around a stream's chunks, blank lines before a JSON body."
    )
    omit_done: bool = Field(
        default=False, description="End a whole chat stream without `data: [DONE]` (older TGI, llama-box builds)."
    )
    stream_error_after: int | None = Field(
        default=None, ge=0, description="After N stream chunks, an error chunk in OpenRouter's mid-stream shape "
        "(a top-level `error` beside a choice with finish_reason \"error\"), then [DONE]."
    )
    retry_after_form: RetryAfterForm = Field(
        default="both", description="How an injected error says when to come back: `both` (Retry-After seconds "
        "and retry-after-ms), `seconds`, `ms` (retry-after-ms only), `http_date` (Retry-After as a date), "
        "`ratelimit_reset` (only OpenAI's x-ratelimit-reset-requests/-tokens durations, e.g. 6m0s)."
    )
    malformed: bool = Field(default=False, description="Answer 200 with a body that is not valid JSON.")
    ignore_stream: bool = Field(
        default=False, description="Answer a stream request with the whole JSON answer, as servers that ignore "
        "`stream` do (chat, Responses API, legacy completions)."
    )
    background_fail: bool = Field(
        default=False, description="A background Responses API run ends failed, without usage."
    )
    # Packed requests (thrifty batch: K items in one call, see mock/packed.py) misbehave only
    # when they hold at least ``pack_min_items`` items, so smaller retries can succeed.
    pack_drop: int = Field(default=0, ge=0, description="Packed answers leave out N items.")
    pack_duplicate: int = Field(default=0, ge=0, description="Packed answers repeat N items.")
    pack_invalid: int = Field(default=0, ge=0, description="Packed answers give N items a null output.")
    pack_reorder: bool = Field(default=False, description="Packed answers list items in another order.")
    pack_break_json: bool = Field(default=False, description="Packed answers are cut-off JSON.")
    pack_min_items: int = Field(default=2, ge=1, description="Pack faults apply from this many items.")


class AnswerRule(_Frozen):
    """``pattern`` (regex, searched in the last user message) -> ``answer`` (may use ``\\1``)."""

    pattern: str
    answer: str
    ignore_case: bool = True

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regex {value!r}: {exc}") from exc
        return value


class Price(_Frozen):
    """USD per million tokens, used to report ``usage.cost`` like OpenRouter does."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)


# What OpenAI's responses report for each requested service_tier (a priority-enabled project).
_OPENAI_TIERS: dict[str, str | None] = {"auto": "default", "default": "default", "flex": "flex", "priority": "priority"}


class ModelBehaviour(_Frozen):
    """How one model answers. Unset fields inherit from ``MockConfig.default``."""

    answer: str | None = Field(default=None, description="Fixed answer text for every request.")
    answers: tuple[AnswerRule, ...] = Field(default=(), description="First matching rule gives the answer.")
    output_tokens: tuple[int, int] = Field(
        default=(8, 48), description="Range of default-answer length (words)."
    )
    reasoning_tokens: tuple[int, int] = Field(
        default=(0, 0), description="Hidden reasoning tokens, billed as output."
    )
    wrong_rate: float = Field(
        default=0.0, ge=0, le=1, description="Fraction of answers whose option letter is wrong."
    )
    options: str = Field(
        default="ABCD", min_length=2, description="Option letters a wrong answer picks from."
    )
    option_pattern: str = Field(
        default=r"\b([A-D])\b", description="Regex whose group 1 is the option letter."
    )
    tool_calls: ToolCallMode = "auto"
    usage_convention: UsageConvention = "openai"
    price: Price | None = None
    prompt_cache: bool = Field(
        default=False, description="Report cached_tokens for repeated prompt prefixes."
    )
    reasoning_model: bool = Field(
        default=False,
        description="Refuse max_tokens and a temperature other than 1 with OpenAI's 400s, as its "
        "reasoning models do (reasoning_tokens still spend max_completion_tokens first).",
    )
    metadata_needs_store: bool = Field(
        default=False, description="Refuse a chat completion's `metadata` without `store: true` with OpenAI's 400 "
        "\"The 'metadata' parameter is only allowed when 'store' is enabled.\""
    )
    reject_params: tuple[str, ...] = Field(
        default=(), description="Request parameters refused with OpenAI's 400 for an unknown argument."
    )
    reject_values: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description="Request parameter -> values refused with OpenAI's 400 \"Unsupported "
        "value: 'NAME' does not support 'VALUE' with this model.\" (gpt-5.1 and reasoning_effort: minimal)."
    )
    response_formats: tuple[str, ...] | None = Field(
        default=None, description="The response_format types accepted (None: all); others get DeepSeek's 400 "
        "\"This response_format type is unavailable now\" (e.g. [text, json_object])."
    )
    finish_reason: str | None = Field(
        default=None, description="The finish_reason a whole text answer reports instead of \"stop\" (a cut one "
        "still says \"length\"), as providers name an answer cut or blocked: DeepSeek's "
        "insufficient_system_resource, content_filter, OpenRouter's error, vLLM's abort."
    )
    stream_chunk_words: int = Field(default=2, ge=1, description="Words per streamed content chunk.")
    system_fingerprint: str | None = "fp_thrifty_mock"
    # The ``service_tier`` a response reports for the one requested (absent: "auto"), as OpenAI:
    # flex and priority honoured, "auto" served at "default". A tier missing here is served at
    # "default"; a null value leaves the field out (a provider or proxy that does not report it).
    service_tiers: dict[str, str | None] = Field(
        default_factory=lambda: dict(_OPENAI_TIERS),
        description="Requested service_tier -> the one the response reports (null: not reported).",
    )
    faults: Faults = Faults()

    def served_tier(self, body: dict[str, Any]) -> str | None:
        """The ``service_tier`` to report for a request ``body`` (None: leave it out)."""
        requested = body.get("service_tier")
        key = requested if isinstance(requested, str) else "auto"
        return self.service_tiers.get(key, "default")

    @field_validator("output_tokens", "reasoning_tokens", mode="before")
    @classmethod
    def _range(cls, value: Any) -> Any:
        # ``reasoning_tokens: 64`` is shorthand for exactly 64.
        if isinstance(value, int):
            return (value, value)
        return value

    @field_validator("output_tokens", "reasoning_tokens")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] < 0 or value[1] < value[0]:
            raise ValueError("expected [low, high] with 0 <= low <= high")
        return value


def merge(base: ModelBehaviour, override: ModelBehaviour) -> ModelBehaviour:
    """``base`` with the fields ``override`` set explicitly (faults merged field by field)."""
    update: dict[str, Any] = {}
    for name in override.model_fields_set:
        if name == "faults":
            update["faults"] = merge_faults(base.faults, override.faults)
        else:
            update[name] = getattr(override, name)
    return base.model_copy(update=update) if update else base


def merge_faults(base: Faults, override: Faults) -> Faults:
    """``base`` with the fields ``override`` set explicitly."""
    update = {name: getattr(override, name) for name in override.model_fields_set}
    return base.model_copy(update=update) if update else base


class BatchSettings(_Frozen):
    """The files/batches endpoints (mock/batches.py); also per batch via ``x-mock-batch``."""

    completion_s: float = Field(default=0.0, ge=0, description="Seconds from creation to completed.")
    line_fail_rate: float = Field(default=0.0, ge=0, le=1, description="Fraction of lines answered 500.")
    expire: bool = Field(default=False, description="The batch expires with only half its lines done.")
    affect_batches: int | None = Field(
        default=None, ge=0, description="Failures and expiry hit only the first N batches (None: all)."
    )
    create_fail: int = Field(
        default=0, ge=0, description="The first N batch creations are answered 503 (nothing is created)."
    )
    create_stall: bool = Field(
        default=False, description="Those creations first wait until the client is gone (at most 30 s): a "
                                   "process killed while creating its batch."
    )
    answered_at: float | None = Field(
        default=None, gt=0, description="Unix time the answers and the batch's end carry (None: now), to test "
                                        "prices that vary with the hour."
    )


class MockConfig(_Frozen):
    """Everything the mock upstream needs; build with ``from_dict``/``from_yaml`` or directly."""

    seed: int = 0
    default: ModelBehaviour = ModelBehaviour()
    models: dict[str, ModelBehaviour] = Field(default_factory=dict)
    allowed_models: tuple[str, ...] | None = Field(
        default=None, description="When set, other models get 404 model_not_found."
    )
    api_key: str | None = Field(default=None, description="When set, requests must send this bearer key.")
    responses_api: bool = Field(
        default=True, description="False: POST /v1/responses is a 404, as on a server without the Responses API "
                                  "(DeepSeek, Mistral, llama.cpp...): a chat-only provider."
    )
    record_limit: int = Field(default=200, ge=0, description="How many requests /mock/requests keeps.")
    batch: BatchSettings = BatchSettings()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MockConfig:
        """Validate a plain dict (e.g. parsed YAML); errors become one ``ConfigError``."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "<root>"
            raise ConfigError(f"mock config: {where}: {first['msg']}") from exc

    @classmethod
    def from_yaml(cls, path: str | Path) -> MockConfig:
        """Read a behaviours YAML file (see the module docstring for the shape)."""
        # One-line messages: str() of a YAML error spans several lines (the mark and a snippet).
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"mock config {path}: cannot read it: {reason}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"mock config {path}: {yaml_problem(exc)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"mock config {path}: expected a mapping at the top level")
        return cls.from_dict(data)

    def with_default_faults(self, **faults: Any) -> MockConfig:
        """A copy whose default faults also set ``faults`` (used by CLI flags)."""
        try:
            override = Faults(**faults)
        except ValidationError as exc:
            # Callers check their own flags first (cli/mock_cmd.py); this keeps any other caller's
            # bad value a one-line ConfigError rather than pydantic's multi-line report.
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "<root>"
            raise ConfigError(f"mock faults: {where}: {first['msg']}") from None
        merged = merge_faults(self.default.faults, override)
        return self.model_copy(update={"default": self.default.model_copy(update={"faults": merged})})

    def model_names(self) -> list[str]:
        """Names /v1/models lists: the allow-list, else the configured non-pattern names."""
        if self.allowed_models is not None:
            return list(self.allowed_models)
        return [name for name in self.models if not _is_pattern(name)]


def _is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[")


class BehaviourTable:
    """Resolves a model name to its merged behaviour once, then serves it from a dict."""

    def __init__(self, config: MockConfig) -> None:
        self._config = config
        self._resolved: dict[str, ModelBehaviour] = {}
        self._allowed = None if config.allowed_models is None else frozenset(config.allowed_models)

    def allowed(self, model: str) -> bool:
        return self._allowed is None or model in self._allowed

    def get(self, model: str) -> ModelBehaviour:
        found = self._resolved.get(model)
        if found is None:
            found = self._resolve(model)
            if len(self._resolved) < 10_000:  # unbounded model names must not grow memory forever
                self._resolved[model] = found
        return found

    def _resolve(self, model: str) -> ModelBehaviour:
        specific = self._config.models.get(model)
        if specific is None:
            for name, behaviour in self._config.models.items():
                if _is_pattern(name) and fnmatch.fnmatchcase(model, name):
                    specific = behaviour
                    break
        return self._config.default if specific is None else merge(self._config.default, specific)
