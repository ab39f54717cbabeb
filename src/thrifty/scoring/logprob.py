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
from typing import Any

from thrifty.catalog import Catalog
from thrifty.providers.refusals import learn, learned, refuses_param
from thrifty.scoring.base import Score
from thrifty.types import ChatRequest

# The catalog lesson (providers/refusals.py) of the models (catalog names) whose provider refused
# ``logprobs``: DeepSeek's reasoner, OpenAI's o-series and gpt-5 answer a 400.
LESSON = "refuses:logprobs"
_NAMES = ("logprobs", "top_logprobs")


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
    return learned(catalog, LESSON, model)


def learn_logprobs_refusal(catalog: Catalog, model: str, status: int, param: str | None, message: str) -> bool:
    """Whether an error answered to a request with ``logprobs`` refuses them (a 400/422 naming
    them); then it is remembered for ``model``."""
    if not refuses_param(status, param, message, _NAMES):
        return False
    learn(catalog, LESSON, model)
    return True
