"""thrifty's own calls to a cheap model, shaped for the model that answers them.

thrifty asks a model things of its own: the cascade judge (``scoring/judge.py``), the LLM task
classifier (``routing/llm_classifier.py``), system-prompt compression and its A/B check
(``compress/system_prompt.py``), history summaries (``compress/stage.py``), the semantic cache's
confirm model (``cache/confirm.py``) and ``thrifty outcomes collect``'s judge. They want short,
repeatable answers: ``temperature: 0`` and a few tokens (``max_tokens: 4`` for a grade).

A reasoning model (OpenAI's o-series and GPT-5-and-later, gpt-oss, DeepSeek's reasoner, QwQ, Gemini
2.5 and later, xAI's Grok 3 mini and Grok 4, ``*-thinking`` models...) cannot take that request:
OpenAI's reject ``max_tokens`` ("Use 'max_completion_tokens' instead") and any ``temperature`` but
the default with a 400, and every reasoning model spends output tokens on reasoning before the
answer, so a 4-token budget comes back empty with ``finish_reason: "length"``. For such a model the
call is sent the reasoning way: the limit under the family's field with ``reasoning_budget`` tokens
of room added (default 1024), no ``temperature``, and a low ``reasoning_effort`` where the family
takes one (``FAMILIES``).

A hybrid model (``HYBRIDS``: Qwen3, DeepSeek V4, GLM-4.5 and later) thinks by default but has a
documented switch that turns thinking off for one request: its internal calls are sent the plain
way with that switch, the cheapest answer there is. A server that ignores the switch (it reasons
anyway) or refuses it (a 400 naming it) teaches the reasoning way or the plain way without it,
as below.

Whether a model reasons: ``models.NAME.reasoning`` (``true``/``false``), else ``auto``: its
upstream name matches a family of ``FAMILIES``, or this process learned it (per gateway catalog,
kept in memory only) from an internal call that

- got a 400 naming a parameter thrifty chose as unsupported: ``max_tokens`` or ``temperature``
  (reasoning), ``max_completion_tokens`` (use ``max_tokens`` instead), ``reasoning_effort``
  (send none), a hybrid's thinking switch (send none); or
- came back empty, cut off (``finish_reason: "length"``), having reasoned (reasoning tokens in
  its usage, or reasoning text): the model accepted ``max_tokens`` and spent it thinking.

Each lesson retries the call at once with the new shape (at most ``MAX_LESSONS`` times per call,
and only when the shape changed, so nothing loops), and so does a call that failed the same way
while a concurrent call learned the lesson. Each model of a ``fallbacks`` chain is sent its own
shape, and what a fallback's answer teaches is learned for it, never for the model asked.
``reasoning: false`` turns all of this off.

Client requests are not shaped here: one sent to a model thrifty chose (``auto``, a route, a
cascade tier, a fallback) is fitted to that model from these same families
(pipeline/routed_params.py); one naming its model goes upstream as the client wrote it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from thrifty.catalog import Catalog, ModelInfo
from thrifty.errors import UpstreamError
from thrifty.model_names import base_model
from thrifty.types import ChatRequest, Usage, cut_at_limit

if TYPE_CHECKING:
    from thrifty.pipeline.caller import ModelCaller
    from thrifty.pipeline.context import Attempt, RequestContext

MAX_LESSONS = 2  # e.g. o1-mini by an unknown name: max_tokens rejected, then reasoning_effort
_LIMITS = ("max_tokens", "max_completion_tokens")
# The words a provider's 400 uses for a parameter it will not take (OpenAI: "Unsupported
# parameter" / "Unsupported value" / "Unrecognized request argument" / "Unknown parameter"; vLLM:
# "Extra inputs are not permitted"). Not "invalid": a range error ("Invalid max_tokens value, the
# valid range is ...") is no refusal of the parameter, and must not be learned as one.
_REFUSAL_RE = re.compile(r"unsupported|not supported|does not support|unknown|unrecognized|not permitted|"
                         r"not allowed", re.I)


@dataclass(frozen=True)
class Family:
    """Upstream names of one reasoning family and how its API takes an internal call."""

    name: str
    pattern: re.Pattern[str]  # matched at the start of the normalised name (see ``_normalise``)
    limit_field: str  # the output limit's parameter: "max_completion_tokens" or "max_tokens"
    effort: str | None  # the reasoning_effort sent, None: the API takes none
    exclude: re.Pattern[str] | None = None
    # For a client's request to a model thrifty chose (pipeline/routed_params.py), not read here:
    # the sampling parameters the API refuses, the reasoning_effort values it takes (None: not
    # known, sent as asked) and whether it takes ``verbosity``.
    refuses: frozenset[str] = frozenset()
    efforts: tuple[str, ...] | None = None
    verbosity: bool = False


def _family(name: str, pattern: str, limit_field: str, effort: str | None, exclude: str | None = None, *,
            refuses: frozenset[str] = frozenset(), efforts: tuple[str, ...] | None = None,
            verbosity: bool = False) -> Family:
    return Family(name, re.compile(pattern), limit_field, effort, re.compile(exclude) if exclude else None,
                  refuses, efforts, verbosity)


# OpenAI's reasoning models refuse these with a 400 (any value but the default: "Unsupported
# value"/"Unsupported parameter"): https://platform.openai.com/docs/guides/reasoning. Not logprobs:
# a client that asks for them reads them (a refusal is its answer, routing/policies.py).
_OPENAI_REFUSES = frozenset({"temperature", "top_p", "presence_penalty", "frequency_penalty", "logit_bias"})
# xAI: "presencePenalty, frequencyPenalty and stop ... not supported by reasoning models. Adding
# them in the request would result in an error" (https://docs.x.ai/docs/guides/reasoning).
_XAI_REFUSES = frozenset({"presence_penalty", "frequency_penalty"})
_LOW_MEDIUM_HIGH = ("low", "medium", "high")


# THE list of reasoning families (documented in docs/configuration.md, "Reasoning models"). First
# match wins. Sources: OpenAI's API reference (reasoning_effort: o-series low/medium/high, gpt-5
# minimal..high, gpt-5.1 and later none/low/medium/high: "low" is what every one takes); o1-mini
# and o1-preview take no reasoning_effort at all ("Unknown parameter"); DeepSeek's reasoner guide
# (max_tokens counts the chain of thought; temperature accepted but ignored; no reasoning_effort);
# Qwen's QwQ and thinking models, Mistral's Magistral: reasoning always on, max_tokens.
FAMILIES: tuple[Family, ...] = (
    _family("openai-o1-early", r"o1-(mini|preview)", "max_completion_tokens", None, refuses=_OPENAI_REFUSES),
    _family("openai-o-series", r"o[1-9]\d*(-|$)", "max_completion_tokens", "low", refuses=_OPENAI_REFUSES,
            efforts=_LOW_MEDIUM_HIGH),
    # gpt-5, gpt-5-mini, gpt-5.1, gpt-6-luna... but not the non-reasoning gpt-5-chat(-latest).
    # Their efforts differ by version (gpt-5 minimal..high, gpt-5.1 none..high): sent as asked.
    _family("openai-gpt-5+", r"gpt-([5-9]|[1-9]\d+)(\.\d+)?(-|$)", "max_completion_tokens", "low",
            exclude=r".*-chat(-|$)", refuses=_OPENAI_REFUSES, verbosity=True),
    _family("gpt-oss", r"gpt-oss", "max_completion_tokens", "low", efforts=_LOW_MEDIUM_HIGH),
    _family("deepseek-reasoner", r"(deepseek-reasoner|deepseek-r1|r1(-|$))", "max_tokens", None),
    _family("qwq", r"qwq", "max_tokens", None),
    _family("magistral", r"magistral", "max_tokens", None),
    # Gemini 2.5 and 3 think by default; Google's OpenAI-compatible endpoint takes reasoning_effort
    # (low = a 1K-token thinking budget on 2.5; 2.5 Pro and 3 Pro cannot turn thinking off) and
    # both max_completion_tokens and max_tokens:
    # https://ai.google.dev/gemini-api/docs/openai, https://ai.google.dev/api/compatibility.
    # 2.5 Flash-Lite does not think unless asked, and reasoning_effort would turn it on; the
    # image models do not think.
    _family("gemini-2.5+", r"gemini-(2\.5|[3-9])(\.\d+)?(-|$)", "max_completion_tokens", "low",
            exclude=r"gemini-2\.5-flash-(lite|image)|.*-image(-|$)"),
    # xAI (https://docs.x.ai/docs/guides/reasoning; max_tokens "DEPRECATED in favor of
    # max_completion_tokens" in its API reference): grok-3-mini takes reasoning_effort low/high;
    # grok-4, grok-4-fast-reasoning, grok-4-1-fast and grok-4.20 reason always and answer an error
    # to reasoning_effort; grok-4.3 takes none/low/medium/high
    # (https://docs.x.ai/developers/model-capabilities/text/reasoning). Not grok-3 (no reasoning)
    # nor the *-non-reasoning variants.
    _family("grok-3-mini", r"grok-3-mini", "max_completion_tokens", "low", refuses=_XAI_REFUSES,
            efforts=("low", "high")),
    _family("grok-4.3", r"grok-4\.3(-|$)", "max_completion_tokens", "low", refuses=_XAI_REFUSES,
            efforts=("none", "low", "medium", "high")),
    _family("grok-4", r"grok-4", "max_completion_tokens", None, exclude=r".*non-reasoning", refuses=_XAI_REFUSES),
    _family("thinking", r".*thinking", "max_tokens", None),
)
# ``reasoning: true`` on a name no family knows: OpenAI's way, the one most APIs now take;
# a provider that refuses a part of it is learned from (see the module docstring).
GENERIC = Family("reasoning", re.compile(r"$^"), "max_completion_tokens", "low", refuses=_OPENAI_REFUSES,
                 verbosity=True)


@dataclass(frozen=True)
class Hybrid:
    """Upstream names of a model that thinks by default and the parameter that turns it off."""

    name: str
    pattern: re.Pattern[str]  # matched at the start of the normalised name, as a Family's
    switch: tuple[str, Any]  # (parameter, value) that turns thinking off for one request; a flat
    # value (a scalar, or a dict of scalars): Shape.params sends each request a shallow copy
    exclude: re.Pattern[str] | None = None


def _hybrid(name: str, pattern: str, switch: tuple[str, Any], exclude: str | None = None) -> Hybrid:
    return Hybrid(name, re.compile(pattern), switch, re.compile(exclude) if exclude else None)


# THE list of hybrid families (docs/configuration.md, "Reasoning models"), after FAMILIES: a name
# both know (a Qwen3 *-Thinking-* model, which thinks always) is a reasoning one.
HYBRIDS: tuple[Hybrid, ...] = (
    # Qwen3 hybrid (qwen3-8b, qwen3-235b-a22b, qwen3.5-plus...): enable_thinking true/false per
    # request on Alibaba Cloud Model Studio's OpenAI-compatible API
    # (https://www.alibabacloud.com/help/en/model-studio/deep-thinking); the open models think by
    # default (https://qwen.readthedocs.io/en/stable/getting_started/quickstart.html). Not the
    # Qwen3-*-Instruct-2507 and Coder models, which never think (and do not take the switch).
    _hybrid("qwen3", r"qwen3(\.\d+)?-", ("enable_thinking", False), exclude=r".*(instruct|coder)"),
    # DeepSeek V4 thinks by default; {"thinking": {"type": "disabled"}} turns it off
    # (https://api-docs.deepseek.com/guides/thinking_mode). deepseek-chat (V3.1+ non-thinking
    # mode) never thinks; deepseek-reasoner always does (FAMILIES).
    _hybrid("deepseek-v4", r"deepseek-(v4|flash)(-|$)", ("thinking", {"type": "disabled"})),
    # GLM-4.5 and later think by default (dynamic thinking), thinking.type enabled/disabled
    # (https://docs.z.ai/guides/capabilities/thinking-mode, docs.bigmodel.cn GLM-4.5).
    _hybrid("glm-4.5+", r"glm-(4\.([5-9]|\d\d)|[5-9])", ("thinking", {"type": "disabled"})),
)


def _normalise(upstream_model: str) -> str:
    """``openai/gpt-6-luna`` -> ``gpt-6-luna``; ``deepseek/deepseek-r1:free`` -> ``deepseek-r1``:
    routers prefix the vendor and suffix a variant, the family is in between (``base_model``)."""
    return base_model(upstream_model)


_Named = TypeVar("_Named", Family, Hybrid)


def _named(entries: Sequence[_Named], upstream_model: str) -> _Named | None:
    """The first of ``entries`` whose pattern matches ``upstream_model``'s name and whose
    exclusion does not."""
    name = _normalise(upstream_model)
    return next((e for e in entries if e.pattern.match(name) and not (e.exclude and e.exclude.match(name))), None)


def family_of(upstream_model: str) -> Family | None:
    """The reasoning family ``upstream_model`` belongs to by name, or None."""
    return _named(FAMILIES, upstream_model)


def hybrid_of(upstream_model: str) -> Hybrid | None:
    """The hybrid family ``upstream_model`` belongs to by name (and no reasoning one), or None."""
    return None if family_of(upstream_model) is not None else _named(HYBRIDS, upstream_model)


@dataclass(frozen=True)
class Shape:
    """How an internal call to one model is sent."""

    reasoning: bool
    limit_field: str = "max_tokens"
    effort: str | None = None
    budget: int = 0
    switch: tuple[str, Any] | None = None  # a hybrid's thinking-off parameter, sent the plain way
    # The reasoning family the name matched (None: none, GENERIC's way), carried so a routed call
    # need not match the name again (routed_params); not compared: it follows from the name.
    family: Family | None = field(default=None, compare=False)

    def params(self, max_tokens: int | None, temperature: float | None) -> dict[str, Any]:
        """The request parameters of an internal call wanting ``max_tokens`` answer tokens."""
        out: dict[str, Any] = {}
        if not self.reasoning:
            if max_tokens is not None:
                out["max_tokens"] = max_tokens
            if temperature is not None:
                out["temperature"] = temperature
            if self.switch is not None:  # a copy: a request's params are its own to change
                value = self.switch[1]  # flat (HYBRIDS): a shallow copy is a whole one
                out[self.switch[0]] = dict(value) if isinstance(value, dict) else value
            return out
        # No temperature: OpenAI's reasoning models refuse any but the default, DeepSeek's ignores it.
        if max_tokens is not None:
            out[self.limit_field] = max_tokens + self.budget
        if self.effort is not None:
            out["reasoning_effort"] = self.effort
        return out


def configured_shape(info: ModelInfo) -> Shape:
    """The shape the config and the name give, before anything is learned."""
    if info.reasoning is False:
        return Shape(False)
    fam = family_of(info.upstream_model)
    if fam is None and info.reasoning is not True:
        hybrid = _named(HYBRIDS, info.upstream_model)  # no reasoning family here: skip hybrid_of's check
        if hybrid is None:
            return Shape(False)
        # A hybrid's budget: the room a client's routed request gets (it thinks by default); the
        # internal calls, sent with the switch, do not read it.
        return Shape(False, budget=info.reasoning_budget, switch=hybrid.switch)
    fam = fam or GENERIC
    effort = fam.effort if info.reasoning_effort == "auto" else info.reasoning_effort
    return Shape(True, fam.limit_field, effort, info.reasoning_budget, family=fam)


def shape_for(catalog: Catalog, model: str) -> Shape:
    """How an internal call to ``model`` (a name or alias of ``catalog``) is sent now."""
    info = catalog.get(model)
    if info is None:  # the caller raises its own "unknown model" error on the call
        return Shape(False)
    # What this process learned per model is kept on the catalog (one gateway's models), so a
    # closed gateway's lessons go with it and two gateways in one process never share them.
    learned: Shape | None = catalog.learned_shapes.get(info.name)
    if learned is not None:
        return learned
    # Memoised: the config and the name do not change, and every routed call asks (routed_params).
    configured: Shape | None = catalog.configured_shapes.get(info.name)
    if configured is None:
        configured = catalog.configured_shapes[info.name] = configured_shape(info)
    return configured


def _remember(catalog: Catalog, model: str, old: Shape, new: Shape) -> bool:
    info = catalog.get(model)
    if info is None or info.reasoning is False or new == old:
        return False
    catalog.learned_shapes[info.name] = new
    return True


def internal_request(catalog: Catalog, model: str, messages: list[dict[str, Any]], *,
                     max_tokens: int | None, temperature: float | None = 0.0) -> ChatRequest:
    """An internal call's request to ``model``: ``max_tokens`` answer tokens at ``temperature``
    for a model that does not reason, the reasoning way (module docstring) for one that does."""
    params = shape_for(catalog, model).params(max_tokens, temperature)
    return ChatRequest(model=model, messages=messages, params=params)


def _named_param(message: str, sent: dict[str, Any]) -> str | None:
    """The parameter of ``sent`` that a provider's error ``message`` refuses, if it names one."""
    if not _REFUSAL_RE.search(message):
        return None
    # First by position: OpenAI's "'max_tokens' is not supported ... Use 'max_completion_tokens'"
    # names the refused one first (and only max_tokens was sent anyway).
    named = [(m.start(), p) for p in ("max_tokens", "max_completion_tokens", "temperature", "reasoning_effort",
                                      *(h.switch[0] for h in HYBRIDS))
             if p in sent and (m := re.search(rf"(?<![\w]){p}(?![\w])", message))]
    return min(named)[1] if named else None


def refused_param(sent: dict[str, Any], message: str, status: int | None) -> str | None:
    """The parameter of ``sent`` a provider's 400/422 ``message`` refuses (``status`` None:
    unknown, the message alone decides), or None."""
    if status is not None and status not in (400, 422):
        return None
    return _named_param(message, sent)


def learn_from_error(catalog: Catalog, model: str, sent: dict[str, Any], message: str,
                     status: int | None) -> bool:
    """Whether ``model``'s shape changed because its provider refused a parameter of ``sent``
    (a 400/422 ``message``; ``status`` None: unknown, the message alone decides): then the call
    is worth sending again."""
    param = refused_param(sent, message, status)
    if param is None:
        return False
    info = catalog.get(model)
    if info is None:
        return False
    old = shape_for(catalog, model)
    if old.switch is not None and param == old.switch[0]:
        new = replace(old, switch=None)  # a hybrid's switch refused: the plain way without it
    elif param in ("max_tokens", "temperature") and not old.reasoning:
        # OpenAI's refusals: its way (max_completion_tokens, a low effort unless configured).
        effort = GENERIC.effort if info.reasoning_effort == "auto" else info.reasoning_effort
        new = Shape(True, GENERIC.limit_field, effort, info.reasoning_budget)
    elif param == "max_tokens":
        new = replace(old, limit_field="max_completion_tokens")
    elif param == "max_completion_tokens":
        new = replace(old, limit_field="max_tokens")
    elif param == "reasoning_effort":
        new = replace(old, effort=None)
    else:  # temperature refused although none is sent the reasoning way: nothing to change
        return False
    return _remember(catalog, model, old, new)


def reasoned_out(response: dict[str, Any]) -> bool:
    """An answer with no text, cut off at the limit, after reasoning: the budget went on thinking."""
    if not cut_at_limit(response):
        return False
    message = response["choices"][0].get("message")
    if not isinstance(message, dict):
        return False  # a provider's nonsense is no evidence (and must not raise out of the judge)
    content = message.get("content")
    # Content may be a list of parts (Mistral's thinking and text chunks): any is an answer of sorts.
    if (content.strip() if isinstance(content, str) else content) or message.get("tool_calls"):
        return False
    thought = any(isinstance(message.get(k), str) and message[k] for k in ("reasoning_content", "reasoning"))
    try:
        reasoned = Usage.from_openai(response.get("usage")).reasoning_tokens > 0
    except Exception:  # a malformed usage is no evidence either way
        reasoned = False
    return thought or reasoned


def learn_from_reply(catalog: Catalog, model: str, response: dict[str, Any]) -> bool:
    """Whether ``model`` turned out to reason (``reasoned_out``) while it was sent the plain way:
    it accepted ``max_tokens``, so that field stays, with room; temperature and effort are left
    out (a provider that ignores one may refuse the other)."""
    old = shape_for(catalog, model)
    if old.reasoning or not reasoned_out(response):
        return False
    info = catalog.get(model)
    if info is None:
        return False
    return _remember(catalog, model, old, Shape(True, "max_tokens", None, info.reasoning_budget))


def resend_after_error(catalog: Catalog, model: str, sent: Shape, message: str, status: int | None,
                       params: dict[str, Any]) -> bool:
    """Whether an internal call to ``model`` sent with shape ``sent`` (``params``) and refused
    (``message``, ``status`` None: unknown) is worth sending again: the refusal taught a new
    shape, or a concurrent call learned one meanwhile that this refusal also calls for (judged
    against the shape learned, this call would see nothing to learn)."""
    return learn_from_error(catalog, model, params, message, status) or (
        shape_for(catalog, model) != sent and refused_param(params, message, status) is not None)


def resend_after_reply(catalog: Catalog, model: str, sent: Shape, reply: dict[str, Any]) -> bool:
    """Whether an internal call to ``model`` sent with shape ``sent`` and answered ``reply`` is
    worth sending again (``learn_from_reply``, or a concurrent call's lesson, as above)."""
    return learn_from_reply(catalog, model, reply) or (shape_for(catalog, model) != sent and reasoned_out(reply))


def _shaper(catalog: Catalog, shaped: dict[str, Shape], messages: list[dict[str, Any]], max_tokens: int | None,
            temperature: float | None) -> Callable[[ModelInfo], ChatRequest]:
    """The request builder of one internal call for each model the caller tries (the model asked,
    then its fallbacks), recording in ``shaped`` the shape each was sent, the last tried last."""

    def request_for(info: ModelInfo) -> ChatRequest:
        shape = shape_for(catalog, info.name)
        shaped.pop(info.name, None)
        shaped[info.name] = shape
        return ChatRequest(model=info.name, messages=messages, params=shape.params(max_tokens, temperature))

    return request_for


async def complete_internal(caller: ModelCaller, ctx: RequestContext, model: str, messages: list[dict[str, Any]],
                            *, max_tokens: int | None, purpose: str,
                            temperature: float | None = 0.0) -> tuple[dict[str, Any], Attempt]:
    """One internal call through the pipeline's caller (priced, in the ledger with ``purpose``),
    shaped for ``model``, sent again when its answer teaches a better shape (module docstring).

    Each model of the fallback chain is sent its own shape, and a lesson is learned for the model
    that refused or answered, never for ``model`` when a fallback did. The call is also sent
    again when the shape changed since it was sent: concurrent first calls to a model not yet
    learned all fail the same way, and the first one back learns for all (the others, judged
    against the shape learned meanwhile, would see nothing to learn and fail)."""
    catalog = caller.catalog
    for lesson in range(MAX_LESSONS + 1):
        shaped: dict[str, Shape] = {}  # the shape each model tried was sent (the last one last)
        last = lesson == MAX_LESSONS
        try:
            reply, attempt = await caller.complete(ctx, model, _shaper(catalog, shaped, messages, max_tokens,
                                                                       temperature), purpose=purpose)
        except UpstreamError as exc:
            if not last and shaped:
                tried, sent = next(reversed(shaped.items()))  # the chain stops at the model that refused
                if resend_after_error(catalog, tried, sent, exc.message, exc.status,
                                      sent.params(max_tokens, temperature)):
                    continue
            raise
        answered = shaped.get(attempt.model)
        if not last and answered is not None and resend_after_reply(catalog, attempt.model, answered, reply):
            continue
        return reply, attempt
    raise AssertionError("unreachable: the last lesson returns or raises")
