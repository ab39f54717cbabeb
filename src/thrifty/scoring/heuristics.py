"""Cheap, local checks of an answer: is it there, is it a refusal, does it have the expected form.

The expected form is read from the request when ``expect="auto"``: ``response_format`` asking
for JSON (or a JSON schema) means JSON; a multiple-choice question means one option letter; a
request to write a function means code that parses. Each check lowers the score and says why.

Multiple choice is read from the prompt's format (``routing.formats.detect_family``: options
each starting a line) and, here only, from options written inline ("Which? A) x B) y C) z"):
``detect_family`` is left alone because fitted policies are keyed by its families.

An answer that is a tool call (``tool_calls``, usually without text) is scored by the call: a
function the request offered, called with a JSON object matching its parameters, is a
well-formed answer (scoring/tools.py).
"""

from __future__ import annotations

import re
from typing import Any

from thrifty.routing.formats import (
    detect_family,
    extract_option,
    last_block,
    parse_python,
    python_blocks,
)
from thrifty.scoring.base import Score
from thrifty.scoring.structured import asks_for_json, json_problem, request_schema
from thrifty.scoring.tools import call_name, tool_call_problems, tool_calls, tool_choice_problems
from thrifty.types import ChatRequest, cut_or_blocked, finish_reason, response_text

_REFUSAL_RE = re.compile(
    r"\b(i(?:'m| am) (?:sorry|unable|not able)|i can(?:no|')t (?:help|assist|answer|provide|do that)|"
    r"as an ai(?: language model)?|i do not have (?:enough|access)|i don't know|cannot be determined|"
    r"not enough information)\b",
    re.I,
)
CUT_PENALTY = 0.6


def cut_penalty(value: float, reason: str, finish: str | None) -> tuple[float, str]:
    """``value`` and ``reason`` after the penalty for an answer cut or blocked (``finish``)."""
    if not cut_or_blocked(finish):  # types.WHOLE_FINISH_REASONS: the one list of whole answers
        return value, reason
    return value * CUT_PENALTY, f"{reason}; cut off (finish_reason={finish})"


# An option label inside a line: "A)" or "(A)" after a space (a line-start label is
# detect_family's). Only ")" counts: "A." / "A:" inline are too often ordinary prose.
_INLINE_OPT_RE = re.compile(r"(?:^|(?<=\s))\(?([A-Ha-h])\)\s+\S")


def inline_options(text: str) -> int:
    """How many consecutive options ``A) ... B) ... C) ...`` (or lower case) the last block
    of ``text`` lists inline; 0 when fewer than two, in order from A, are there."""
    labels = [m.group(1) for m in _INLINE_OPT_RE.finditer(last_block(text))]
    best = 0
    for first in ("A", "a"):
        n = 0
        for label in labels:
            if label == chr(ord(first) + n):
                n += 1
        best = max(best, n)
    return best if best >= 2 else 0


def expected_form(request: ChatRequest) -> str:
    """``json`` | ``option`` | ``code`` | ``text`` for this request."""
    if asks_for_json(request):
        return "json"
    text = request.last_user_text()
    family = detect_family(text)
    if family == "open" and inline_options(text):
        return "option"
    return {"mc_multi": "option", "mc_binary": "option", "code": "code"}.get(family, "text")


class HeuristicScorer:
    """Scores 0.0 (empty / refusal / wrong form) to 0.9 (well-formed answer); never 1.0, because
    form says nothing certain about correctness."""

    def __init__(self, expect: str = "auto", json_schema: dict[str, Any] | None = None, min_chars: int = 1,
                 labels: list[str] | None = None) -> None:
        self.expect = expect
        self.json_schema = json_schema
        self.min_chars = min_chars
        self.labels = {_label_key(label): label for label in labels or ()}

    async def score(self, request: ChatRequest, response: dict[str, Any]) -> Score:
        calls = tool_calls(response)
        if calls:
            return self.score_tool_calls(request, calls, finish_reason(response))
        problems = tool_choice_problems(request, [])
        if problems:  # text where tool_choice forces a call: the client was promised a call
            return Score(0.05, "unusable answer: " + problems[0])
        return self.score_text(request, response_text(response), finish_reason(response))

    @staticmethod
    def score_tool_calls(request: ChatRequest, calls: list[dict[str, Any]], finish_reason: str | None = None) -> Score:
        """A tool call answers the request when it is well-formed (an offered function, JSON
        arguments matching its parameters); its text, usually empty, is not read."""
        problems = tool_call_problems(request, calls)
        if problems:
            return Score(0.05, "unusable tool call: " + problems[0])
        names = ", ".join(str(call_name(c)) for c in calls)
        value, reason = cut_penalty(0.85, f"tool call {names} with valid arguments", finish_reason)
        return Score(round(value, 4), reason)

    def score_text(self, request: ChatRequest, text: str, finish_reason: str | None = None) -> Score:
        t = text.strip()
        if not t:
            return Score(0.0, "empty answer")
        if len(t) < self.min_chars:
            return Score(0.1, f"short answer ({len(t)} < {self.min_chars} chars)")
        form = expected_form(request) if self.expect == "auto" else self.expect
        if self.labels and form == "text":
            form = "label"  # a classification: a one-word answer is the expected form, not "very short"
        value, reason = self._form(request, form, t)
        if _REFUSAL_RE.search(t[:400]) and value > 0.2:
            value, reason = 0.15, "refusal or failure phrase"
        value, reason = cut_penalty(value, reason, finish_reason)
        return Score(round(value, 4), reason)

    def _form(self, request: ChatRequest, form: str, t: str) -> tuple[float, str]:
        if form == "label":
            label = self.labels.get(_label_key(t))
            if label is None:
                return 0.05, f"not one of the labels ({', '.join(self.labels.values())})"
            return 0.9, f"label {label}"
        if form == "option":
            letter = extract_option(t)
            if letter is None:
                return 0.2, "no option letter found"
            return (0.9, f"option {letter}") if len(t) < 200 else (0.7, f"option {letter} in a long answer")
        if form == "json":
            # With a JSON response_format only bare JSON passes (scoring/structured.py says why).
            schema = self.json_schema or request_schema(request)
            problem = json_problem(request, t, schema)
            if problem is not None:
                return (0.05 if problem[0] == "invalid" else 0.2), problem[1]
            return (0.9, "valid JSON matching the schema") if schema is not None else (0.9, "valid JSON")
        if form == "code":
            for block in python_blocks(t):
                tree = parse_python(block)
                if tree is not None and tree.body:
                    return 0.85, "code parses"
            return 0.2, "no parseable Python code"
        return (0.7, "non-empty answer") if len(t) >= 20 else (0.5, "very short answer")


def _label_key(text: str) -> str:
    """A label as compared: case, surrounding spaces, quotes and end punctuation ignored
    ("Billing." is the label billing)."""
    return text.strip().strip("\"'`*").rstrip(".!").strip().lower()
