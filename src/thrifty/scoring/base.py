"""The scorer interface used by cascades."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from thrifty.types import ChatRequest


@dataclass(frozen=True)
class Score:
    value: float  # in [0, 1]; higher means more likely good enough
    reason: str


class Scorer(Protocol):
    async def score(self, request: ChatRequest, response: dict[str, Any]) -> Score:
        """How good ``response`` looks as an answer to ``request``. In a cascade,
        ``response["model"]`` is the catalog name of the model that answered."""
        ...


async def score_answer(scorer: Any, ctx: Any, caller: Any, response: dict[str, Any]) -> Score:
    """Run any scorer: those that call a model (``needs_caller``) get the context and caller."""
    if getattr(scorer, "needs_caller", False):
        result: Score = await scorer.score_with(ctx, caller, response)
        return result
    return await scorer.score(ctx.request, response)  # type: ignore[no-any-return]


async def score_choices(scorer: Any, ctx: Any, caller: Any, response: dict[str, Any]) -> Score:
    """``score_answer`` over every choice of an ``n > 1`` answer, the worst one counting: the
    client gets all of them, so a cascade must not accept a bad second choice because the first
    was good. Scorers read choice 0, so each choice is scored as a response of its own."""
    choices = response.get("choices")
    if not isinstance(choices, list) or len(choices) < 2:
        return await score_answer(scorer, ctx, caller, response)
    worst: Score | None = None
    for i, choice in enumerate(choices):
        s = await score_answer(scorer, ctx, caller, {**response, "choices": [choice]})
        if worst is None or s.value < worst.value:
            worst = Score(s.value, f"choice {i}: {s.reason}")
        if s.value == 0.0:
            break  # nothing can raise a minimum of zero; skip the other choices' paid judges
    assert worst is not None
    return worst


class CombinedScorer:
    """The minimum of several scorers: an answer must pass every check (e.g. form, then judge)."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts
        self.needs_caller = any(getattr(p, "needs_caller", False) for p in parts)
        self.wants_logprobs = any(getattr(p, "wants_logprobs", False) for p in parts)

    async def score(self, request: ChatRequest, response: dict[str, Any]) -> Score:
        scores = [await p.score(request, response) for p in self.parts]
        return min(scores, key=lambda s: s.value)

    async def score_with(self, ctx: Any, caller: Any, response: dict[str, Any]) -> Score:
        worst: Score | None = None
        for p in self.parts:
            s = await score_answer(p, ctx, caller, response)
            if worst is None or s.value < worst.value:
                worst = s
            if s.value == 0.0:
                break  # no later check can raise a minimum of zero; skip paid judges
        return worst or Score(0.0, "no scorers")
