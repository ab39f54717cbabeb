"""Deterministic answer text: a list of strategies, then quality post-processing.

``STRATEGIES`` is the one ordered list of ways to answer; the first that returns text wins and
``default_answer`` is the fallback. Each strategy is a plain function of the request and the
model's behaviour, so a new kind of answer (e.g. packed batch prompts) is one more module whose
function is inserted into this list, with no change elsewhere.

After a strategy answers, ``apply_quality`` may swap the option letter for a wrong one
(``wrong_rate``), which is how a "weak" model is simulated for cascade and routing tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from thrifty.mock import digest
from thrifty.mock.behaviour import ModelBehaviour
from thrifty.mock.packed import label_for, packed_answer
from thrifty.tokens import content_text


@dataclass(frozen=True, slots=True)
class AnswerRequest:
    """What strategies see: the request plus its deterministic key (already per choice)."""

    model: str
    body: dict[str, Any]
    last_user: str
    key: bytes


Strategy = Callable[[AnswerRequest, ModelBehaviour], "str | None"]

# Filler words that are each one cl100k token (with their leading space), so the default
# answer's length in tokens tracks the configured ``output_tokens`` range closely.
_FILLER = (  # noqa: SIM905 - a sentence reads better than a list of 42 strings
    "the model considered this question carefully and the short answer depends on context "
    "but in most cases it is fine to start simple then measure what matters most for cost "
    "quality and speed before you change anything else in your system today"
).split()


def fixed_answer(req: AnswerRequest, behaviour: ModelBehaviour) -> str | None:
    """The model's fixed ``answer`` text, when configured."""
    return behaviour.answer


def mapped_answer(req: AnswerRequest, behaviour: ModelBehaviour) -> str | None:
    """The first ``answers`` rule whose pattern is found in the last user message."""
    for rule in behaviour.answers:
        match = _compiled(rule.pattern, rule.ignore_case).search(req.last_user)
        if match is not None:
            return match.expand(rule.answer)
    return None


# The one-item request of `thrifty batch run --labels` (batching/packing.single_messages): its
# system text lists the labels the answer must be.
_LABELS_RE = re.compile(r"The answer must be exactly one of: (.+?)\. Reply with the answer only\.")


def labelled_answer(req: AnswerRequest, behaviour: ModelBehaviour) -> str | None:
    """A label, when the system text asks for exactly one of a list: chosen by hash of the input
    as in a packed answer (mock/packed.py), so an item gets the same label alone or in a pack."""
    messages = req.body.get("messages") or []
    system = " ".join(content_text(m.get("content")) for m in messages
                      if isinstance(m, dict) and m.get("role") in ("system", "developer"))
    match = _LABELS_RE.search(system)
    if match is None:
        return None
    labels = [label.strip() for label in match.group(1).split(", ") if label.strip()]
    return label_for(req.last_user, labels) if labels else None


def default_answer(req: AnswerRequest, behaviour: ModelBehaviour) -> str:
    """``[model] answer to: <first words>...`` plus a hash-chosen number of filler words."""
    words = req.last_user.split()
    head = " ".join(words[:8]) + ("..." if len(words) > 8 else "")
    low, high = behaviour.output_tokens
    count = digest.pick(req.key, "len", low, high)
    picks = digest.stream(req.key, "words", count)
    filler = " ".join(_FILLER[b % len(_FILLER)] for b in picks)
    text = f"[{req.model}] answer to: {head}"
    return f"{text} | {filler}." if filler else text


# Packed requests first: a fixed answer must not replace a whole pack's JSON.
STRATEGIES: list[Strategy] = [packed_answer, fixed_answer, mapped_answer, labelled_answer]


def answer_text(req: AnswerRequest, behaviour: ModelBehaviour) -> str:
    """The answer to ``req``: first strategy that answers, else the default, then quality."""
    for strategy in STRATEGIES:
        text = strategy(req, behaviour)
        if text is not None:
            return apply_quality(text, req.key, behaviour)
    return apply_quality(default_answer(req, behaviour), req.key, behaviour)


def apply_quality(text: str, key: bytes, behaviour: ModelBehaviour) -> str:
    """With probability ``wrong_rate`` (by hash), replace the first option letter with another."""
    if behaviour.wrong_rate <= 0 or digest.unit(key, "wrong") >= behaviour.wrong_rate:
        return text
    match = _compiled(behaviour.option_pattern, False).search(text)
    if match is None or match.lastindex is None:
        return text
    right = match.group(1)
    others = [o for o in behaviour.options if o != right]
    if not others:
        return text
    wrong = others[digest.pick(key, "which", 0, len(others) - 1)]
    return text[: match.start(1)] + wrong + text[match.end(1) :]


@lru_cache(maxsize=512)
def _compiled(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE if ignore_case else 0)
