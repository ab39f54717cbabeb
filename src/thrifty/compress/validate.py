"""Is a compressed system prompt safe to use? The default check needs no model.

- every ``must_keep`` item (product names, rules, numbers) appears in the compressed text;
- every sentence of the original marked as an instruction (it contains one of the
  ``instruction_markers``, e.g. IMPORTANT / MUST / NEVER) appears in it too.
Comparison folds case and whitespace and ignores a sentence's final punctuation, nothing more:
a rule paraphrased is a rule changed, so it fails.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def _fold(text: str) -> str:
    return " ".join(text.lower().split())


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def instruction_sentences(text: str, markers: list[str]) -> list[str]:
    """The sentences of ``text`` that carry a marker."""
    return [s for s in split_sentences(text) if any(m in s for m in markers)]


@dataclass
class Verdict:
    ok: bool
    missing: list[str] = field(default_factory=list)
    reason: str = ""


def check(original: str, compressed: str, must_keep: list[str], markers: list[str]) -> Verdict:
    """Every must-keep item and every instruction sentence survives, and the text got shorter."""
    folded = _fold(compressed)
    missing = [item for item in must_keep if _fold(item) in _fold(original) and _fold(item) not in folded]
    for sentence in instruction_sentences(original, markers):
        core = _fold(sentence).rstrip(".!?;:")
        if core not in folded:
            missing.append(sentence)
    if missing:
        shown = "; ".join(m[:60] for m in missing[:3])
        return Verdict(False, missing, f"lost {len(missing)} must-keep item(s): {shown}")
    if not compressed.strip():
        return Verdict(False, [], "empty compression")
    if len(compressed) >= len(original):
        return Verdict(False, [], "compression is not shorter than the original")
    return Verdict(True)
