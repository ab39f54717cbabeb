"""Confidence from the provider's token logprobs: exp(mean logprob) of the answer's tokens.

Only meaningful when the upstream returns ``choices[].logprobs`` (ask for them with
``logprobs: true``; cascades built by the router do so for the tiers scored this way, never the
last tier, and remove them from the served answer unless the client asked for them). Without
logprobs the score is a neutral 0.5, so the tier's threshold decides as if nothing were known.
A model whose provider refuses ``logprobs`` (a 400) is remembered here and asked again without
them by the cascade (routing/policies.py), which then scores it that neutral way.
"""

from __future__ import annotations

import math
import re
import weakref
from typing import Any

from thrifty.catalog import Catalog
from thrifty.scoring.base import Score
from thrifty.types import ChatRequest

# Models (catalog names) whose provider refused ``logprobs`` (DeepSeek's reasoner, OpenAI's
# o-series and gpt-5 answer a 400), per catalog and in memory only: weak, so a closed gateway's
# lessons go with it and two gateways in one process (tests) never share them.
_REFUSING: weakref.WeakKeyDictionary[Catalog, set[str]] = weakref.WeakKeyDictionary()
_LOGPROBS_RE = re.compile(r"(?<![\w])(top_)?logprobs(?![\w])", re.I)


def mean_logprob(response: dict[str, Any]) -> float | None:
    choices = response.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return None
    content = (choices[0].get("logprobs") or {}).get("content") or []
    values = [float(t["logprob"]) for t in content if isinstance(t, dict) and isinstance(t.get("logprob"), int | float)]
    return sum(values) / len(values) if values else None


class LogprobScorer:
    wants_logprobs = True

    async def score(self, request: ChatRequest, response: dict[str, Any]) -> Score:
        mean = mean_logprob(response)
        if mean is None:
            return Score(0.5, "no logprobs from the provider")
        value = math.exp(min(mean, 0.0))
        return Score(round(value, 4), f"mean token probability {value:.3f}")


def strip_logprobs(response: dict[str, Any]) -> None:
    """Drop ``choices[].logprobs`` (as a provider answers when they were not asked for)."""
    for choice in response.get("choices") or []:
        if isinstance(choice, dict) and choice.get("logprobs") is not None:
            choice["logprobs"] = None


def refuses_logprobs(catalog: Catalog, model: str) -> bool:
    """Whether ``model``'s provider refused ``logprobs`` earlier in this process."""
    return model in _REFUSING.get(catalog, ())


def learn_logprobs_refusal(catalog: Catalog, model: str, message: str, status: int | None,
                           param: str | None = None) -> bool:
    """Whether a 400/422 (``status`` None: unknown) answered to a request with ``logprobs`` refuses
    them (``param`` or ``message`` names them); then it is remembered for ``model``."""
    if status is not None and status not in (400, 422):
        return False
    if param not in ("logprobs", "top_logprobs") and not _LOGPROBS_RE.search(message):
        return False
    _REFUSING.setdefault(catalog, set()).add(model)
    return True
