"""A provider refusing one request parameter, and what the gateway learned of it.

Some providers answer a 400 (FastAPI servers a 422) to a parameter they do not take: DeepSeek to
``response_format: json_schema`` ("This response_format type is unavailable now"), reasoning
models to ``logprobs``. Callers that can do without the parameter send the call again without it
and remember the refusal in ``Catalog.lessons`` (per catalog, in memory), so later calls skip it.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from thrifty.catalog import Catalog

# Names a lesson holds at most: they come from requests (model and route names), so a stream of
# made-up ones must not grow the process without end. Past it nothing more is learned (a refusal
# is then met again, as before the lesson: slower, never wrong).
MAX_NAMES = 10_000


# A refusal names the parameter next to its reason: "Unknown parameter: 'stream_options'",
# "Unrecognized request argument supplied: logprobs", "This response_format type is unavailable
# now", FastAPI's "body.stream_options: Extra inputs are not permitted". A bare mention is not
# one: vLLM's validation 400s quote the whole request body (``'logprobs': True``, the
# response_format...) whatever they are about, and such a lesson lasts the process.
_REASON = (r"(?:unknown|unrecogni[sz]ed|unsupported|not supported|does not support|unexpected|extra inputs"
           r"|not permitted|not allowed|unavailable|not available)")


@lru_cache(maxsize=64)
def _refusal(names: tuple[str, ...]) -> re.Pattern[str]:
    """Any of ``names`` as a whole word (``logprobs`` is not found in ``top_logprobs_x``) within
    40 characters of a refusal word (``_REASON``), before or after it, in the same sentence."""
    name = "(?:" + "|".join(rf"(?<![\w]){re.escape(n)}(?![\w])" for n in names) + ")"
    return re.compile(rf"\b{_REASON}\b[^.\n]{{0,40}}?{name}|{name}[^.\n]{{0,40}}?\b{_REASON}\b", re.I)


def refuses_param(status: int | None, param: str | None, message: str, names: Collection[str]) -> bool:
    """Whether an error refuses one of ``names``: a 400/422 whose ``param`` is one of them or whose
    ``message`` names one beside a refusal word (``_refusal``). ``status`` None: an earlier
    attempt's message, whose status was not kept (a cascade tier's failure, read back off
    ``ctx.attempts``): the message alone decides."""
    if status is not None and status not in (400, 422):
        return False
    return param in names or _refusal(tuple(sorted(names))).search(message) is not None


def learned(catalog: Catalog, lesson: str, name: str) -> bool:
    """Whether ``lesson`` was learned for ``name`` (a model or route) in this process."""
    return name in catalog.lessons.get(lesson, ())


def learn(catalog: Catalog, lesson: str, name: str) -> None:
    """Remember ``lesson`` for ``name`` (bounded: ``MAX_NAMES`` per lesson)."""
    held = catalog.lessons.setdefault(lesson, set())
    if len(held) < MAX_NAMES:
        held.add(name)
