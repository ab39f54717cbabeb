"""Optional second opinion on a semantic hit: ask a cheap model whether two questions are the same.

It costs one small call per candidate hit (recorded as a ``judge`` attempt), so it is meant for
routes whose answers are expensive; any failure of the judge means "do not serve".
"""

from __future__ import annotations

from typing import Any

from thrifty.errors import ThriftyError
from thrifty.pipeline.context import RequestContext
from thrifty.types import ChatRequest, response_text

_SYSTEM = ("You compare two user questions. Reply with exactly one word: yes if one answer would fully and "
           "correctly answer both questions, otherwise no.")


class ConfirmModel:
    def __init__(self, caller: Any, model: str) -> None:
        self.caller = caller  # a thrifty.pipeline.caller.ModelCaller
        self.model = model

    async def same_question(self, ctx: RequestContext, query: str, cached: str) -> bool:
        request = ChatRequest(
            model=self.model,
            messages=[{"role": "system", "content": _SYSTEM},
                      {"role": "user", "content": f"Question 1: {cached}\nQuestion 2: {query}"}],
            params={"temperature": 0, "max_tokens": 3},
        )
        try:
            response, _ = await self.caller.complete(ctx, self.model, request, purpose="judge")
        except ThriftyError:
            return False
        return response_text(response).strip().lower().startswith("yes")
