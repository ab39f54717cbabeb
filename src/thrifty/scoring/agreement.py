"""Agreement between answers: two models giving the same normalised answer is the strongest
cheap signal that it is right (measured on RouterBench; see docs/routing.md)."""

from __future__ import annotations

from collections import Counter

from thrifty.routing.formats import extract_answer
from thrifty.scoring.base import Score


def agreement_score(family: str, texts: list[str]) -> Score:
    """Share of answers agreeing with the most common normalised answer (None answers disagree)."""
    answers = [extract_answer(family, t) for t in texts]
    usable = [a for a in answers if a is not None]
    if not texts:
        return Score(0.0, "no answers")
    if not usable:
        return Score(0.0, "no usable answer to compare")
    top, count = Counter(usable).most_common(1)[0]
    return Score(round(count / len(texts), 4), f"{count}/{len(texts)} answers agree on {top!r}")
