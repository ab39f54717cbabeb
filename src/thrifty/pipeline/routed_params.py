"""A client's request made to fit the model thrifty chose for it.

A client writes its request for the model it has in mind (``max_tokens: 100``, ``temperature:
0.2`` for gpt-4o). When thrifty picks the model (``auto``, ``route:NAME``, a cascade tier, a
model's ``fallbacks``), that request is sent to a model the client never saw, and a reasoning one
refuses ``max_tokens`` or a temperature with a 400, a plain one ``reasoning_effort``. So the call is
adapted to the chosen model's family, the one table being ``internal_calls.FAMILIES`` (whose
shape, learned lessons included, thrifty's own calls use):

- a reasoning model: the output limit under the family's field, with the model's
  ``reasoning_budget`` of room added (its limit counts the reasoning too: the client's 100 tokens
  would all go on thinking and come back empty); the sampling parameters the family refuses
  dropped; ``reasoning_effort`` dropped where the family takes none, mapped to the nearest value
  it takes (``minimal`` -> ``low`` where only low/medium/high exist); ``verbosity`` dropped unless
  the family takes it;
- a plain model (no reasoning, not a hybrid): ``reasoning_effort`` and ``verbosity`` dropped;
- any chosen model: the parameters a 400 taught it refuses (``learn_refusal``) dropped, or for the
  limit, sent under the other name.

A model the client named itself gets the request as sent: that is its contract with the model.
"""

from __future__ import annotations

import logging
from typing import Any

from thrifty.catalog import Catalog, ModelInfo
from thrifty.errors import UpstreamError
from thrifty.internal_calls import GENERIC, Family, family_of, shape_for
from thrifty.providers.refusals import learn, learned, refuses_param
from thrifty.types import ChatRequest

log = logging.getLogger(__name__)

_LIMITS = ("max_tokens", "max_completion_tokens")
# What a chosen model may be sent without when its provider refuses it: the answer is the same
# request's, sampled a little differently. Never tools, response_format, messages, stop, n, or the
# logprobs a client reads (a refusal of those is the client's answer).
DROPPABLE = frozenset({"temperature", "top_p", "presence_penalty", "frequency_penalty", "logit_bias", "seed",
                       "top_k", "min_p", "repetition_penalty", "reasoning_effort", "verbosity"})
# reasoning_effort values from least to most reasoning (OpenAI's names; Gemini's and xAI's agree).
_EFFORT_ORDER = ("none", "minimal", "low", "medium", "high", "xhigh")


def _lesson(param: str) -> str:
    # The key logprob.py uses for logprobs ("refuses:logprobs"): one refusal, one name.
    return f"refuses:{param}"


def chosen(catalog: Catalog, request: ChatRequest, info: ModelInfo) -> bool:
    """Whether ``info`` is a model thrifty chose for ``request`` rather than the one it named."""
    asked = catalog.get(request.model)
    return asked is None or asked.name != info.name


def nearest_effort(value: Any, takes: tuple[str, ...]) -> Any:
    """``value`` if the family takes it (or it is no effort thrifty knows), else the most reasoning
    it takes that is no more than asked, else the least it takes."""
    if value in takes or value not in _EFFORT_ORDER or not takes:
        return value
    rank = _EFFORT_ORDER.index(value)
    below = [t for t in takes if t in _EFFORT_ORDER and _EFFORT_ORDER.index(t) <= rank]
    return below[-1] if below else takes[0]


def _limit(params: dict[str, Any]) -> int | None:
    """The client's output limit, the larger when both names were sent (as ``output_limit``)."""
    sent = [v for v in (params.get(k) for k in _LIMITS) if isinstance(v, int) and not isinstance(v, bool)]
    return max(sent) if sent else None


def _reasoning(out: dict[str, Any], fam: Family, limit_field: str, effort: str | None, budget: int) -> None:
    """``out`` for a reasoning model of family ``fam`` (changed in place)."""
    limit = _limit(out)
    if limit is not None:
        for name in _LIMITS:
            out.pop(name, None)
        out[limit_field] = limit + budget
    for name in fam.refuses & out.keys():
        del out[name]
    if "reasoning_effort" in out:
        if effort is None:  # the family (or the model's config, or a lesson) takes none
            del out["reasoning_effort"]
        elif fam.efforts is not None:
            out["reasoning_effort"] = nearest_effort(out["reasoning_effort"], fam.efforts)
    if "verbosity" in out and not fam.verbosity:
        del out["verbosity"]


def _apply_lessons(catalog: Catalog, model: str, out: dict[str, Any]) -> None:
    """What ``model``'s provider refused before, left out of ``out`` (the limit: renamed)."""
    for name in [k for k in out if (k in DROPPABLE or k in _LIMITS) and learned(catalog, _lesson(k), model)]:
        value = out.pop(name)
        if name in _LIMITS:
            other = _LIMITS[1 - _LIMITS.index(name)]
            if not learned(catalog, _lesson(other), model):
                out.setdefault(other, value)


def adapted(catalog: Catalog, request: ChatRequest, info: ModelInfo) -> ChatRequest:
    """``request`` as the chosen model ``info`` takes it (module docstring); ``request`` itself
    when nothing changes (or the client named ``info``)."""
    if not chosen(catalog, request, info):
        return request
    out = dict(request.params)
    shape = shape_for(catalog, info.name)
    if shape.reasoning:
        _reasoning(out, family_of(info.upstream_model) or GENERIC, shape.limit_field, shape.effort, shape.budget)
    elif shape.switch is None:  # a plain model (a hybrid's may take an effort: sent as asked)
        out.pop("reasoning_effort", None)
        out.pop("verbosity", None)
    _apply_lessons(catalog, info.name, out)
    if out == request.params:
        return request
    changed = sorted(k for k in out.keys() | request.params.keys() if out.get(k) != request.params.get(k))
    log.debug("request to %s (chosen for %r): parameters adapted: %s", info.name, request.model, ", ".join(changed))
    return request.copy_with(params=out)


def learn_refusal(catalog: Catalog, model: str, sent: ChatRequest, exc: UpstreamError) -> str | None:
    """The parameter of ``sent`` (the request a chosen ``model`` was sent) that ``exc`` refuses, when
    it is one the call can do without (``DROPPABLE``, or the limit's name): learned for ``model``,
    so the call is worth sending again; None otherwise."""
    candidates = [k for k in sent.params if k in DROPPABLE or k in _LIMITS]
    if not candidates:
        return None
    # Named beside a refusal word, not merely the error's ``param``: "Invalid 'temperature':
    # decimal above maximum value" is the client's mistake, not a parameter the model cannot take.
    named = [k for k in candidates if refuses_param(exc.status, None, exc.message, (k,))]
    if not named:
        return None
    # The error's own ``param``, else the first named: "'max_tokens' is not supported ... Use
    # 'max_completion_tokens' instead" refuses the first.
    param = exc.param if exc.param in named else min(named, key=lambda k: exc.message.find(k))
    learn(catalog, _lesson(param), model)
    log.info("model %s refused %r: sent again without it, and so from now on in this process", model, param)
    return param
