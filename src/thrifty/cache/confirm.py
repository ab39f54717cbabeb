"""Optional second opinion on a semantic hit: ask a cheap model whether two questions are the same.

It costs one small call per candidate hit (recorded as a ``judge`` attempt), so it is meant for
routes whose answers are expensive; any failure of the judge means "do not serve", and so does
an answer that is not "yes" (a reasoning model cut off before answering included). The call is
shaped for the confirm model by ``internal_calls`` (room to reason, no temperature, low effort).
"""

from __future__ import annotations

from typing import Any

from thrifty.errors import ThriftyError
from thrifty.internal_calls import complete_internal
from thrifty.pipeline.context import RequestContext
from thrifty.types import response_text

_SYSTEM = ("You compare two user questions. Reply with exactly one word: yes if one answer would fully and "
           "correctly answer both questions, otherwise no.")


class ConfirmModel:
    def __init__(self, caller: Any, model: str) -> None:
        self.caller = caller  # a thrifty.pipeline.caller.ModelCaller
        self.model = model

    async def same_question(self, ctx: RequestContext, query: str, cached: str) -> bool:
        messages = [{"role": "system", "content": _SYSTEM},
                    {"role": "user", "content": f"Question 1: {cached}\nQuestion 2: {query}"}]
        try:
            response, _ = await complete_internal(self.caller, ctx, self.model, messages, max_tokens=3,
                                                  purpose="judge")
        except ThriftyError:
            return False
        return response_text(response).strip().lower().startswith("yes")
