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
        code: {tiers: [{model: cheap, threshold: 0.7}, {model: strong}], scorer: {kind: heuristic}}
        mc: {agreement: {models: [a, b], fallback: strong}}
        general: {learned: {file: router.json, target: 0.8}}
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from thrifty.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _problems(problems: list[tuple[str, str]]) -> None:
    """Raise the problems found at key paths relative to the model being validated."""
    if problems:
        from thrifty.config import KeyProblems  # here, not at the top: thrifty.config imports this module

        raise KeyProblems(problems)


def check_embedder(spec: str | dict[str, Any]) -> str | dict[str, Any]:
    """Validate an embedder spec by name and options without building it (a sentence model
    loads slowly), so a typo fails at load time even where the embedder is not used yet."""
    from thrifty.embeddings.base import embedder_problems

    _problems(embedder_problems(spec))
    return spec


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
    labels: list[str] | None = None  # heuristic: the answer must be one of these (a classification)
    judge_model: str | None = None
    rubric: str | None = None
    file: str | None = None
    parts: list[ScorerConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _needs(self) -> ScorerConfig:
        needs = {"judge": ("judge_model", self.judge_model), "learned": ("file", self.file),
                 "combined": ("parts", self.parts)}
        if self.kind in needs and not needs[self.kind][1]:
            key = needs[self.kind][0]
            _problems([(key, f"required by a {self.kind} scorer")])
        if self.labels is not None:
            # A label is the whole answer: with another expected form it could never match.
            if self.expect not in ("auto", "text"):
                _problems([("labels", f"only with expect auto or text (got expect {self.expect})")])
            if not self.labels or any(not str(label).strip() for label in self.labels):
                _problems([("labels", "expected a list of non-empty labels")])
        return self


class AgreementConfig(_Strict):
    """Ask the models in ``models`` (in order); serve the first answer that ``min_agree`` of them
    give; when they cannot agree, ask ``fallback``."""

    models: list[str] = Field(min_length=2)
    fallback: str
    min_agree: int = Field(default=2, ge=2)
    # Ask the models every answer pattern calls at once (the first min(min_agree, len(models) -
    # min_agree + 2): 2 for 4 of 4, where two differing answers already rule agreement out): the
    # same calls and cost unless a cheap answer fails or is unusable (the next call, made anyway,
    # is paid and unused), one cheap latency instead of several (false: one after another).
    parallel: bool = True

    @model_validator(mode="after")
    def _reachable(self) -> AgreementConfig:
        if self.min_agree > len(self.models):
            _problems([("min_agree", f"{self.min_agree} agreeing answers can never come from "
                                     f"{len(self.models)} models (at most {len(self.models)})")])
        return self


class StateTableConfig(_Strict):
    """A learned agreement cascade (see routing/policies.py): cheap models called in ``order``;
    after each answer the agreement pattern so far is looked up in ``table``:
    ``next`` (call the next model), ``stop:i`` (serve the i-th answer), ``strong``."""

    order: list[str] = Field(default_factory=list)
    table: dict[str, str] = Field(default_factory=dict)
    strong: str
    raw_letters: bool = False
    parallel: bool = True  # as AgreementConfig.parallel: the prefix the table always calls, at once

    @model_validator(mode="after")
    def _actions(self) -> StateTableConfig:
        # Checked here: policies.py reads an unknown action as "strong" and "stop:x" raised
        # ValueError on every request that reached that pattern.
        problems = []
        for state, action in self.table.items():
            m = re.fullmatch(r"stop:(\d+)", action)
            if action in ("next", "strong") or (m and int(m.group(1)) < len(self.order)):
                continue
            where = f"table.{state}" if state else 'table.""'
            why = (f"stop:{m.group(1)} serves answer {m.group(1)}, but order has {len(self.order)} model(s) "
                   f"(stop:0 to stop:{len(self.order) - 1})" if m
                   else f"unknown action {action!r} (expected next, strong or stop:<i>, i < {len(self.order)})")
            problems.append((where, why))
        _problems(problems)
        return self


class LearnedConfig(_Strict):
    file: str
    target: float | None = Field(default=None, ge=0, le=1)
    lam: float | None = Field(default=None, ge=0)
    models: list[str] | None = None


class FitConfig(_Strict):
    """``routing.fit``: how ``thrifty.routing.fit`` fits this section from outcome data (its
    defaults are ``fit.DEFAULTS``; unset here means "the default")."""

    depth: int | None = Field(default=None, ge=1)
    shrink: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    cheap_max_cost_ratio: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    raw_letters: list[str] | None = None
    max_cost_share: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_cheap: int | None = Field(default=None, ge=1)
    top_k: int | None = Field(default=None, ge=1)
    min_family_prompts: int | None = Field(default=None, ge=0)
    inner_folds: int | None = Field(default=None, ge=0)
    fixed: bool | None = None
    budget_margin: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    lams: list[float] | None = Field(default=None, min_length=1)
    by_task: bool | None = None
    mix: bool | None = None

    def options(self) -> dict[str, Any]:
        """The options that are set (the fitter fills in its defaults for the rest)."""
        return self.model_dump(exclude_none=True)


class SplitConfig(_Strict):
    """``share`` of the route's requests (by a hash of the prompt: routing/split.py) take ``route``."""

    share: float = Field(gt=0, lt=1)
    route: str


class RouteConfig(_Strict):
    """Exactly one of: model, tiers, agreement, state_table, learned; optionally a ``split``."""

    model: str | None = None
    tiers: list[TierConfig] | None = None
    scorer: ScorerConfig = Field(default_factory=ScorerConfig)
    agreement: AgreementConfig | None = None
    state_table: StateTableConfig | None = None
    learned: LearnedConfig | None = None
    max_cost_usd: float | None = Field(default=None, gt=0)
    split: SplitConfig | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> RouteConfig:
        kinds = [k for k in ("model", "tiers", "agreement", "state_table", "learned") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError(f"a route needs exactly one of model, tiers, agreement, state_table, learned (got {kinds})")
        if "scorer" in self.model_fields_set and not self.tiers:
            _problems([("scorer", f"only a tiers route uses a scorer; this is a {kinds[0]} route, so it "
                                  "would be ignored (remove it, or make the route a cascade of tiers)")])
        # A tier without threshold accepts every answer: the tiers after it would be reached only
        # when its call fails, which is what a model's `fallbacks` are for.
        _problems([(f"tiers.{i}.threshold", "required on every tier but the last (without one, this tier's "
                                            "answer is always accepted and the later tiers are never reached "
                                            "unless it fails; for that, use models.<name>.fallbacks)")
                   for i, t in enumerate((self.tiers or [])[:-1]) if t.threshold is None])
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
    fit: FitConfig | None = None
    # Facts a fit left behind (training accuracy, cost share, budget): informative, not used to
    # route, so free-form (thrifty writes it; nothing reads it back).
    fitted: dict[str, Any] | None = None

    @field_validator("embedder")
    @classmethod
    def _embedder(cls, spec: str | dict[str, Any]) -> str | dict[str, Any]:
        return check_embedder(spec)

    def route_for_task(self, task: str) -> str | None:
        """The route of a task (a client's label, a classifier's answer, a prompt format):
        its ``tasks:`` entry, else the route named like it, else None."""
        if task in self.tasks:
            return self.tasks[task]
        return task if task in self.routes else None

    @model_validator(mode="after")
    def _refs(self) -> RoutingConfig:
        problems = []
        if self.default_route is not None and self.default_route not in self.routes:
            problems.append(("default_route", f"unknown route {self.default_route!r}"))
        for task, route in self.tasks.items():
            if route not in self.routes:
                problems.append((f"tasks.{task}", f"unknown route {route!r}"))
        for name, r in self.routes.items():
            if r.split is None:
                continue
            target = self.routes.get(r.split.route)
            if target is None:
                problems.append((f"routes.{name}.split.route", f"unknown route {r.split.route!r}"))
            elif r.split.route == name:
                problems.append((f"routes.{name}.split.route", "a route cannot split to itself"))
            elif target.split is not None:
                # One hop only: a chain (or a cycle) would make a share's meaning depend on the order.
                problems.append((f"routes.{name}.split.route",
                                 f"route {r.split.route!r} has a split of its own (splits do not chain)"))
        if self.routes and self.default_route is None:
            problems.append(("default_route", "required when routes are configured"))
        if self.classify.llm is not None:
            # The classifier's answer picks a route like a task label: a task with no route would
            # always fall back to the default route (a typo never routes anything).
            for i, task in enumerate(self.classify.llm.tasks):
                if task not in self.tasks and task not in self.routes:
                    problems.append((f"classify.llm.tasks.{i}", f"task {task!r} has no route (name a route "
                                     f"{task!r} or map it under tasks:; routes: {', '.join(sorted(self.routes))})"))
        _problems(problems)
        return self

    def route_model_refs(self, name: str) -> list[tuple[str, str]]:
        """The models one route names, with their keys (a route name may itself contain dots)."""
        r, at = self.routes[name], f"routes.{name}"
        refs = [(f"{at}.model", r.model)] if r.model else []
        refs += [(f"{at}.tiers.{i}.model", t.model) for i, t in enumerate(r.tiers or [])]
        if r.agreement:
            refs += [(f"{at}.agreement.models", m) for m in r.agreement.models]
            refs.append((f"{at}.agreement.fallback", r.agreement.fallback))
        if r.state_table:
            refs += [(f"{at}.state_table.order", m) for m in r.state_table.order]
            refs.append((f"{at}.state_table.strong", r.state_table.strong))
        if r.learned and r.learned.models:
            refs += [(f"{at}.learned.models", m) for m in r.learned.models]
        return refs + _judges(r.scorer, f"{at}.scorer")

    def model_refs(self) -> list[tuple[str, str]]:
        """Every model the section names, with the key naming it (``routes.faq.tiers.0.model``)."""
        refs = [ref for name in self.routes for ref in self.route_model_refs(name)]
        if self.classify.llm:
            refs.append(("classify.llm.model", self.classify.llm.model))
        return refs


def _judges(scorer: ScorerConfig, at: str) -> list[tuple[str, str]]:
    found = [(f"{at}.judge_model", scorer.judge_model)] if scorer.judge_model else []
    for i, part in enumerate(scorer.parts):
        found += _judges(part, f"{at}.parts.{i}")
    return found


class _Wrapper(_Strict):
    routing: RoutingConfig


class _FitOnly(_Strict):
    fit: FitConfig


class _FitWrapper(_Strict):
    routing: _FitOnly


def parse_fit(section: dict[str, Any] | FitConfig | None) -> FitConfig:
    """Validate a ``routing.fit`` mapping (the fitter reads it from a policy's raw routing
    section); ``ConfigError`` names each bad key as ``routing.fit.<key>``."""
    if isinstance(section, FitConfig):
        return section
    try:
        return _FitWrapper.model_validate({"routing": {"fit": section or {}}}).routing.fit
    except ValidationError as exc:
        from thrifty.config import format_validation_error

        raise ConfigError(format_validation_error(exc)) from None


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
