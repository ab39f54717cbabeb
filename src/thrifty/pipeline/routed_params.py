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
- a hybrid (thinks by default, ``internal_calls.HYBRIDS``): the limit with the same room, under
  its field; the rest as asked;
- a plain model (no reasoning, not a hybrid): ``reasoning_effort`` and ``verbosity`` dropped;
- any chosen model: the parameters a 400 taught it refuses (``learn_refusal``) dropped, or for the
  limit, sent under the other name; a refused value (gpt-5.1 and ``reasoning_effort: minimal``)
  dropped only when that value is asked. A refusal of ``max_tokens`` or ``temperature`` by a model
  sent the plain way teaches its shape instead (``internal_calls.learn_from_error``): a reasoning
  model by a name no family knows.

A model the client named itself gets the request as sent: that is its contract with the model.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from thrifty.catalog import Catalog, ModelInfo
from thrifty.errors import UpstreamError
from thrifty.internal_calls import GENERIC, Family, learn_from_error, shape_for
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


# Distinct refused values learned per parameter at most, and their length: they come from
# requests, so a stream of made-up ones must not grow the process without end (past either a
# refused value is the client's 400).
MAX_VALUES = 64
_MAX_VALUE_CHARS = 40
# OpenAI's words for a value refused rather than the parameter ("Unsupported value: 'temperature'
# does not support 0.2", "Invalid value for 'reasoning_effort': 'extreme' is not supported").
_VALUE_RE = re.compile(r"unsupported value|invalid value", re.I)


def _lesson(param: str, value: Any = None) -> str:
    """The catalog lesson of a refusal of ``param`` (logprob.py's "refuses:logprobs"), or of its
    ``value`` alone (packing.py's "refuses:response_format=json_schema")."""
    return f"refuses:{param}" if value is None else f"refuses:{param}={_text(value)}"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _value_refused(message: str, value: Any) -> bool:
    """Whether ``message`` refuses the ``value`` sent (it says so, or quotes it), not the parameter;
    only a scalar's can be (a refused ``logit_bias`` is the parameter's)."""
    if isinstance(value, dict | list) or value is None:
        return False
    if _VALUE_RE.search(message):
        return True
    quoted = re.escape(_text(value))
    return re.search(rf"(?<![\w.-]){quoted}(?![\w.-])" if not isinstance(value, str) else rf"['\"]{quoted}['\"]",
                     message) is not None


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


def _with_room(out: dict[str, Any], limit: int | None, limit_field: str, budget: int) -> None:
    """The client's output ``limit`` in ``out`` under ``limit_field`` with ``budget`` tokens of
    room: a model that thinks counts its thinking in the limit (a reasoning model, a hybrid). A
    limit sent that is no positive integer (``output_limit`` None: from_body takes 0) goes under
    the field as sent, for the provider to answer the client's mistake (no room makes it one)."""
    sent = [out.pop(name) for name in _LIMITS if name in out]
    if limit is not None:
        out[limit_field] = limit + budget
    elif sent:
        out[limit_field] = sent[0]


def _reasoning(out: dict[str, Any], fam: Family, effort: str | None) -> None:
    """``out`` for a reasoning model of family ``fam`` (changed in place), its limit aside."""
    for name in fam.refuses & out.keys():
        del out[name]
    if "reasoning_effort" in out:
        if effort is None:  # the family (or the model's config, or a lesson) takes none
            del out["reasoning_effort"]
        elif fam.efforts is not None:
            out["reasoning_effort"] = nearest_effort(out["reasoning_effort"], fam.efforts)
    if "verbosity" in out and not fam.verbosity:
        del out["verbosity"]


def _refused_before(catalog: Catalog, model: str, name: str, value: Any) -> bool:
    return learned(catalog, _lesson(name), model) or (
        name in DROPPABLE and not isinstance(value, dict | list) and value is not None
        and learned(catalog, _lesson(name, value), model))


def _apply_lessons(catalog: Catalog, model: str, out: dict[str, Any]) -> None:
    """What ``model``'s provider refused before, left out of ``out`` (the limit: renamed)."""
    if not catalog.lessons:  # nothing learned yet: the common case, no lookups
        return
    for name in [k for k, v in out.items() if (k in DROPPABLE or k in _LIMITS)
                 and _refused_before(catalog, model, k, v)]:
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
    if shape.reasoning or shape.switch is not None:  # it thinks: room in the limit
        _with_room(out, request.output_limit(), shape.limit_field, shape.budget)
    if shape.reasoning:
        _reasoning(out, shape.family or GENERIC, shape.effort)
    elif shape.switch is None:  # a plain model (a hybrid's may take an effort: sent as asked)
        out.pop("reasoning_effort", None)
        out.pop("verbosity", None)
    _apply_lessons(catalog, info.name, out)
    if out == request.params:
        return request
    if log.isEnabledFor(logging.DEBUG):
        changed = sorted(k for k in out.keys() | request.params.keys() if out.get(k) != request.params.get(k))
        log.debug("request to %s (chosen for %r): parameters adapted: %s", info.name, request.model,
                  ", ".join(changed))
    return request.copy_with(params=out)


def learn_refusal(catalog: Catalog, model: str, sent: ChatRequest, exc: UpstreamError) -> str | None:
    """The parameter of ``sent`` (the request a chosen ``model`` was sent) that ``exc`` refuses, when
    it is one the call can do without (``DROPPABLE``, or the limit's name): learned for ``model``
    (as its shape, else as that parameter or only the value sent), so the call is worth sending
    again; None otherwise."""
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
    value = sent.params[param]
    by_value = param in DROPPABLE and _value_refused(exc.message, value)
    # The shape first (internal_calls, one store for both): a model sent the plain way refusing
    # max_tokens or temperature reasons, and wants the limit's field, room and no sampling, all at
    # once (OpenAI names one refused parameter per 400). A value of reasoning_effort refused is
    # not the model taking none, and temperature's is still how a reasoning model refuses it.
    if (not by_value or param == "temperature") and learn_from_error(catalog, model, {param: value}, exc.message,
                                                                       exc.status):
        log.info("model %s refused %r: its shape learned, sent again that way, and so from now on in this process",
                 model, param)
        return param
    if by_value:
        if len(_text(value)) > _MAX_VALUE_CHARS or sum(
                k.startswith(f"refuses:{param}=") for k in catalog.lessons) >= MAX_VALUES:
            return None
        learn(catalog, _lesson(param, value), model)
    else:
        learn(catalog, _lesson(param), model)
    log.info("model %s refused %r%s: sent again without it, and so from now on in this process", model, param,
             " at the value sent" if by_value else "")
    return param
