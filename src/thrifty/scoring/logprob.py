"""Confidence from the provider's token logprobs: exp(mean logprob) of the answer's tokens.

Only meaningful when the upstream returns ``choices[].logprobs`` (ask for them with
``logprobs: true``; cascades built by the router do so for the tiers scored this way, never the
last tier, and remove them from the served answer unless the client asked for them). Without
logprobs the score is a neutral 0.5, so the tier's threshold decides as if nothing were known.
"""

from __future__ import annotations

import math
from typing import Any

from thrifty.scoring.base import Score
from thrifty.types import ChatRequest


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
