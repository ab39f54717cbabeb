"""An LLM judge: a cheap model grades the answer against a rubric (0-10), scaled to [0, 1].

The judge call goes through the pipeline's caller, so it is priced and lands in the ledger as
an attempt with ``purpose="judge"``. It is shaped for the judge model by ``internal_calls``: a
reasoning model gets room to reason before its grade, no temperature, a low effort. A judge that
still answers nothing readable (cut off while reasoning) is "no grade": score 0, never a grade.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from thrifty.catalog import Catalog
from thrifty.errors import UpstreamError
from thrifty.internal_calls import complete_internal, internal_request
from thrifty.scoring.base import Score
from thrifty.scoring.tools import graded_answer
from thrifty.types import ChatRequest, response_text

if TYPE_CHECKING:
    from thrifty.pipeline.caller import ModelCaller
    from thrifty.pipeline.context import RequestContext

DEFAULT_RUBRIC = (
    "You grade answers. Given a user's request and an assistant's answer, rate how likely the answer "
    "is correct, complete and directly usable, from 0 (wrong or useless) to 10 (certainly right). "
    "Reply with the number only."
)
_NUM_RE = re.compile(r"\b(10|[0-9])(?:\.\d+)?\b")
GRADE_TOKENS = 4  # the answer's budget: "10", or "7.5"; a reasoning model gets room on top


def parse_grade(text: str) -> float | None:
    m = _NUM_RE.search(text or "")
    return min(float(m.group(0)), 10.0) / 10.0 if m else None


class JudgeScorer:
    needs_caller = True

    def __init__(self, model: str, rubric: str | None = None, max_chars: int = 6000) -> None:
        self.model = model
        self.rubric = rubric or DEFAULT_RUBRIC
        self.max_chars = max_chars

    def judge_messages(self, request: ChatRequest, answer: str) -> list[dict[str, Any]]:
        question = request.last_user_text()[-self.max_chars:]
        content = f"Request:\n{question}\n\nAnswer:\n{answer[: self.max_chars]}\n\nGrade (0-10):"
        return [{"role": "system", "content": self.rubric}, {"role": "user", "content": content}]

    def judge_request(self, request: ChatRequest, answer: str, catalog: Catalog) -> ChatRequest:
        """The judge call for ``answer`` to ``request``, shaped for the judge model in ``catalog``
        (``thrifty outcomes collect`` sends it through the gateway itself)."""
        return internal_request(catalog, self.model, self.judge_messages(request, answer), max_tokens=GRADE_TOKENS)

    async def score(self, request: ChatRequest, response: dict[str, Any]) -> Score:
        raise TypeError("JudgeScorer needs the caller: use score_with(ctx, caller, response)")

    async def score_with(self, ctx: RequestContext, caller: ModelCaller, response: dict[str, Any]) -> Score:
        answer, unusable = graded_answer(ctx.request, response, response_text(response))
        if unusable is not None:
            return Score(0.0, unusable)  # no judge call needed to reject it
        try:
            reply, attempt = await complete_internal(caller, ctx, self.model, self.judge_messages(ctx.request, answer),
                                                     max_tokens=GRADE_TOKENS, purpose="judge")
        except UpstreamError as exc:
            return Score(0.0, f"judge {self.model} failed: {exc.message[:80]}")
        grade = parse_grade(response_text(reply))
        if grade is None:
            attempt.score_reason = "unreadable grade"
            return Score(0.0, f"judge {self.model} gave no grade")
        attempt.score, attempt.score_reason = grade, "judge grade"
        return Score(grade, f"judge {self.model}: {grade * 10:g}/10")
