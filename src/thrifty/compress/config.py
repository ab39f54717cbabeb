"""The ``compression`` section of the config (pydantic only: thrifty.config imports it).

    compression:
      model: deepseek-v4-flash          # the cheap model that compresses and summarises
      store: {path: thrifty-compress.db}   # or redis when the top-level redis_url is set
      routes:                           # opt in per route name, requested model name (or auto), or "*"
        support:
          system_prompt: true
          compaction: true
          history_max_tokens: 3000
          summarize_history: true
      system_prompt:
        min_tokens: 800
        target_ratio: 0.5
        must_keep: [Acme Widgets, "30 days"]
      dictionary: {"Acme Widgets Customer Support Team": ACST}
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Sentences containing one of these (case-sensitive) count as instructions that a compressed
# prompt must keep verbatim. Users mark their own with e.g. "[keep]" by listing it here.
DEFAULT_MARKERS = ["IMPORTANT", "MUST", "NEVER", "ALWAYS", "DO NOT", "[keep]"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ABCheck(_Strict):
    """Optional second validation: answers with the original and the compressed prompt agree."""

    questions: list[str] = Field(min_length=1)
    # The model comparing the two answers (default: compression.model); a name not under
    # ``models:`` is refused when the config loads.
    judge_model: str | None = None
    min_agreement: float = Field(default=0.8, ge=0, le=1)


class SystemPromptConfig(_Strict):
    min_tokens: int = Field(default=800, ge=1)  # shorter prompts are left alone
    target_ratio: float = Field(default=0.5, gt=0, lt=1)  # aim for this share of the original
    target_tokens: int | None = Field(default=None, ge=1)  # absolute budget (wins over ratio)
    must_keep: list[str] = Field(default_factory=list)
    instruction_markers: list[str] = Field(default_factory=lambda: list(DEFAULT_MARKERS))
    # Numbers, URLs, e-mails, `code` and "quoted text" of the original must all survive.
    keep_facts: bool = True
    # A compression using under this share of the original's distinct words has lost content.
    min_vocabulary: float = Field(default=0.3, ge=0, le=1)
    # true: a validated compression is used only after `thrifty compress approve`.
    require_approval: bool = False
    ab_check: ABCheck | None = None
    max_output_tokens: int = Field(default=4000, ge=16)


class StoreConfig(_Strict):
    backend: Literal["auto", "sqlite", "redis"] = "auto"  # auto: redis when redis_url is set
    path: str = "thrifty-compress.db"
    redis_prefix: str = "thrifty:compress"
    # Seconds another instance may hold the "I am compressing this prompt" claim.
    claim_ttl_s: float = Field(default=120.0, gt=0)
    # Seconds an instance trusts its copy of a record: `thrifty compress approve/reject` apply
    # everywhere within this.
    memo_ttl_s: float = Field(default=5.0, ge=0)


class RouteCompression(_Strict):
    """What one route opts into."""

    system_prompt: bool = False
    compaction: bool = True
    history_max_tokens: int | None = Field(default=None, ge=64)
    # Trimming cuts on a grid of this many tokens of history (capped at a quarter of what the turns
    # may fill: history_max_tokens less the system prompt, the tools and a summary's reserve;
    # history.STEP_SHARE), so the kept turns stay byte-identical for that long and the provider's
    # prompt cache keeps serving them at the cached-input price; 0 cuts exactly to the budget on
    # every turn, which changes the message after the system prompt each turn
    # (docs/compression-and-batching.md).
    history_trim_step_tokens: int = Field(default=2048, ge=0)
    summarize_history: bool = False
    summary_max_tokens: int = Field(default=200, ge=16)


class CompressionConfig(_Strict):
    enabled: bool = True
    model: str | None = None  # needed for system_prompt and summarize_history
    # The longest a request waits for a compression (its A/B check included) or a history summary;
    # past it the request is sent uncompressed (or unsummarised) and a later request tries again.
    # Also at most half of server.request_timeout_s: a hanging cheap model used to cost the request
    # its whole deadline (a 504), for a saving that is optional.
    timeout_s: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    store: StoreConfig = Field(default_factory=StoreConfig)
    system_prompt: SystemPromptConfig = Field(default_factory=SystemPromptConfig)
    dictionary: dict[str, str] = Field(default_factory=dict)
    routes: dict[str, RouteCompression] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _needs_model(self) -> CompressionConfig:
        for name, r in self.routes.items():
            if (r.system_prompt or r.summarize_history) and not self.model:
                raise ValueError(f"routes.{name}: system_prompt/summarize_history need compression.model")
        for long, short in self.dictionary.items():
            if not short or len(short) >= len(long):
                raise ValueError(f"dictionary: {short!r} must be shorter than the phrase it replaces")
        return self

    @property
    def active(self) -> bool:
        return self.enabled and bool(self.routes)

    def for_request(self, route: str | None, model: str) -> RouteCompression | None:
        """The route's settings: the request's route name first (``route:NAME``, or the route the
        router classified an ``auto`` request into), then the requested model name, then ``*``.
        Keys that can match nothing are refused at load (thrifty.config)."""
        for key in (route, model, "*"):
            if key is not None and key in self.routes:
                return self.routes[key]
        return None
