"""The ``routing:`` section of the configuration, typed (``extra="forbid"`` everywhere).

    routing:
      default_route: general            # unknown / low-confidence requests
      embedder: lexical                 # for the embedding classifier (or "minilm")
      classify:
        rules: [{task: code, keywords: [python, traceback], regex: ["```"]}]
        examples: {faq: ["How do I reset my password?", ...]}
        examples_file: examples.jsonl   # {"task": ..., "prompt": ...} per line
        min_confidence: 0.35
        llm: {model: cheap, tasks: [faq, code, general]}
        formats: true                   # fall back to the prompt's format (multiple choice, code)
      tasks: {faq: faq}                 # task -> route (default: the route named like the task)
      routes:
        faq: {model: cheap}
        code: {tiers: [{model: cheap, threshold: 0.7}, {model: strong}], scorer: heuristic}
        mc: {agreement: {models: [a, b], fallback: strong}}
        general: {learned: {file: router.json, target: 0.8}}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from thrifty.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Rule(_Strict):
    """A request matching any keyword (case-insensitive substring) or regex gets ``task``."""

    task: str
    keywords: list[str] = Field(default_factory=list)
    regex: list[str] = Field(default_factory=list)
    where: Literal["last_user", "all", "system"] = "last_user"


class LLMClassifierConfig(_Strict):
    model: str
    tasks: list[str]
    max_tokens: int = Field(default=8, gt=0)


class ClassifyConfig(_Strict):
    rules: list[Rule] = Field(default_factory=list)
    examples: dict[str, list[str]] = Field(default_factory=dict)
    examples_file: str | None = None
    min_confidence: float = Field(default=0.35, ge=0, le=1)
    llm: LLMClassifierConfig | None = None
    formats: bool = True
    # Trust a task label sent by the client (metadata.task, x-thrifty-task, body thrifty.task).
    client_labels: bool = True


class TierConfig(_Strict):
    model: str
    threshold: float | None = Field(default=None, ge=0, le=1)


class ScorerConfig(_Strict):
    """Which scorer a cascade uses; ``kind`` picks it, the rest are its options."""

    kind: Literal["heuristic", "judge", "logprob", "learned", "combined"] = "heuristic"
    expect: Literal["auto", "option", "json", "code", "text"] = "auto"
    json_schema: dict[str, Any] | None = None
    min_chars: int = Field(default=1, ge=0)
    judge_model: str | None = None
    rubric: str | None = None
    file: str | None = None
    parts: list[ScorerConfig] = Field(default_factory=list)


class AgreementConfig(_Strict):
    """Ask the models in ``models`` (in order); serve the first answer that ``min_agree`` of them
    give; when they cannot agree, ask ``fallback``."""

    models: list[str] = Field(min_length=2)
    fallback: str
    min_agree: int = Field(default=2, ge=2)


class StateTableConfig(_Strict):
    """A learned agreement cascade (see routing/policies.py): cheap models called in ``order``;
    after each answer the agreement pattern so far is looked up in ``table``:
    ``next`` (call the next model), ``stop:i`` (serve the i-th answer), ``strong``."""

    order: list[str] = Field(default_factory=list)
    table: dict[str, str] = Field(default_factory=dict)
    strong: str
    raw_letters: bool = False


class LearnedConfig(_Strict):
    file: str
    target: float | None = Field(default=None, ge=0, le=1)
    lam: float | None = Field(default=None, ge=0)
    models: list[str] | None = None


class RouteConfig(_Strict):
    """Exactly one of: model, tiers, agreement, state_table, learned."""

    model: str | None = None
    tiers: list[TierConfig] | None = None
    scorer: ScorerConfig = Field(default_factory=ScorerConfig)
    agreement: AgreementConfig | None = None
    state_table: StateTableConfig | None = None
    learned: LearnedConfig | None = None
    max_cost_usd: float | None = Field(default=None, gt=0)
    description: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> RouteConfig:
        kinds = [k for k in ("model", "tiers", "agreement", "state_table", "learned") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError(f"a route needs exactly one of model, tiers, agreement, state_table, learned (got {kinds})")
        return self


class RoutingConfig(_Strict):
    default_route: str | None = None
    embedder: str | dict[str, Any] = "lexical"
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)
    tasks: dict[str, str] = Field(default_factory=dict)
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    # Budget for fitting (``thrifty eval --max-cost-share`` overrides it): the most accurate
    # policy whose training cost stays within this share of the baseline's cost.
    max_cost_share: float | None = Field(default=None, gt=0)
    # How ``fit_policy`` fits this section from outcome data (see routing/fit.py).
    fit: dict[str, Any] | None = None
    # Facts a fit left behind (training accuracy, cost share, budget): informative, not used to route.
    fitted: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _refs(self) -> RoutingConfig:
        problems = []
        if self.default_route is not None and self.default_route not in self.routes:
            problems.append(f"default_route: unknown route {self.default_route!r}")
        for task, route in self.tasks.items():
            if route not in self.routes:
                problems.append(f"tasks.{task}: unknown route {route!r}")
        if self.routes and self.default_route is None:
            problems.append("default_route: required when routes are configured")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def models_used(self) -> set[str]:
        used: set[str] = set()
        for r in self.routes.values():
            if r.model:
                used.add(r.model)
            for t in r.tiers or []:
                used.add(t.model)
            if r.agreement:
                used.update([*r.agreement.models, r.agreement.fallback])
            if r.state_table:
                used.update([*r.state_table.order, r.state_table.strong])
            if r.scorer.judge_model:
                used.add(r.scorer.judge_model)
        if self.classify.llm:
            used.add(self.classify.llm.model)
        return used


class _Wrapper(_Strict):
    routing: RoutingConfig


def parse_routing(section: dict[str, Any] | RoutingConfig | None) -> RoutingConfig:
    """Validate a ``routing:`` mapping; ``ConfigError`` names each bad key as ``routing.<path>``."""
    if isinstance(section, RoutingConfig):
        return section
    try:
        # Validated inside a wrapper so error paths read ``routing.routes.x...`` like the file.
        return _Wrapper.model_validate({"routing": section or {}}).routing
    except ValidationError as exc:
        from thrifty.config import format_validation_error

        raise ConfigError(format_validation_error(exc)) from None
