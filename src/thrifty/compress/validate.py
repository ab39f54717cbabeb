"""Is a compressed system prompt safe to use? The default check needs no model.

- every ``must_keep`` item (product names, rules, numbers) appears in the compressed text;
- every sentence of the original marked as an instruction (it contains one of the
  ``instruction_markers``, e.g. IMPORTANT / MUST / NEVER) appears in it too;
- with ``keep_facts`` (the default), every fact the original states in a form a model could
  not restore is still there: numbers (30, 4.99, 2024-05-01, 15%), URLs, e-mail addresses,
  names (a capitalised word inside a sentence: Zentrix, Maria Lopez), `code spans`, "quoted
  text", fenced code blocks (a JSON schema, an output example) and template placeholders
  (``{{user_name}}``, ``{% if %}``, ``{agent}``, ``${id}``: the app fills them in later). Without
  this, a prompt with no ``must_keep`` list and no marked sentences accepted any shorter text
  ("Sure! I can help with that."), and one that dropped its placeholders or JSON schema too;
- the compressed text keeps at least ``min_vocabulary`` of the original's distinct content
  words (4+ letters, a plural's "s" ignored): a compression may drop repetition and filler, not
  most of what the prompt talks about. Distinct words, so a prompt that repeats itself can still
  shrink a lot.
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


_URL = re.compile(r"https?://[^\s<>\"')\]]{1,2000}")
# Every repetition is bounded: these run over a client's prompt (up to the body limit), and an
# unbounded run tried from each of many start positions ("a.a.a...", "1-1-1...") is quadratic.
_EMAIL = re.compile(r"\b[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}\b")
_NUMBER = re.compile(r"(?<![\w.])\d{1,20}(?:[.,:/-]\d{1,20}){0,6}")
_CODE = re.compile(r"`([^`\n]{1,80})`")
_QUOTED = re.compile(r"\"([^\"\n]{1,80})\"|\u201c([^\u201d\n]{1,80})\u201d")
# Template placeholders the application fills in after thrifty has sent the prompt on: Jinja or
# Mustache ``{{user_name}}`` / ``{% if vip %}``, Python ``{agent}``, shell/JS ``${order_id}``. A
# compression that drops one leaves the app's value with nowhere to go, and no model restores it.
_PLACEHOLDER = re.compile(r"\{\{[^{}\n]{1,80}\}\}|\{%[^{}\n]{1,80}%\}|\$?\{[A-Za-z_][\w.]{0,60}\}")
# A fenced code block's body (a JSON schema, an example output, code the model must reproduce):
# compaction leaves it byte for byte, so the compression must keep it too (spacing folded).
# Linear: ``*?`` stops at the next fence, and only the last fence of a text can be unclosed.
_FENCED = re.compile(r"```[^`\n]{0,40}\n(.*?)```", re.S)
# Names: a capitalised word that does not open its clause (Zentrix, Maria Lopez, HelpBot). The
# first word of a sentence, line or "Label:" is capitalised by grammar, not because it names
# something, so it is skipped; all-caps words (IMPORTANT, JSON) are markers or acronyms.
_CLAUSE = re.compile(r"(?<=[.!?:;])\s+|\n+")
_BULLET = re.compile(r"^[\s\-*\u2022>#\d.)]{1,20}")  # "- ", "1. ", "> ": the word after opens the line
_CAPITALISED = re.compile(r"(?<![\w'\u2019\"\u201c-])[A-Z][a-z][A-Za-z]{0,40}")


def _names(text: str) -> list[str]:
    found = []
    for clause in _CLAUSE.split(_FENCED.sub("\n", text)):
        words = _BULLET.sub("", clause).split(None, 1)
        if len(words) == 2:  # the clause's first word is skipped
            found += _CAPITALISED.findall(words[1])
    return found


def facts(text: str) -> list[str]:
    """Numbers, URLs, e-mail addresses, fenced code, placeholders, code spans and quoted text of
    ``text``, in order, once each."""
    urls = [u.rstrip(".,;:!?") for u in _URL.findall(text)]
    emails = _EMAIL.findall(text)
    rest = _EMAIL.sub(" ", _URL.sub(" ", text))  # numbers inside a URL or address are part of it
    found = urls + emails + [n.rstrip(".,:/-") for n in _NUMBER.findall(rest)]
    found += [block.strip() for block in _FENCED.findall(text)] + _PLACEHOLDER.findall(_FENCED.sub(" ", text))
    found += _CODE.findall(text) + [a or b for a, b in _QUOTED.findall(text)]
    return list(dict.fromkeys(f for f in found if f.strip()))


_RANGE = re.compile(r"(?<![\d.])(\d{1,20})\s{0,3}(?:-|\u2013|to|through)\s{0,3}(\d{1,20})(?!\d|\.\d)")


def _ranges(folded: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in _RANGE.findall(folded) if int(a) < int(b)]


def _has_fact(folded: str, fact: str, numbers: set[str], ranges: list[tuple[int, int]]) -> bool:
    f = _fold(fact)
    if f[:1].isdigit():  # a number is kept as a whole: 30 is not kept by 300 or 1.30
        if f in numbers:
            return True
        # An enumeration summed up as a range ("products 0-119") keeps each whole number in it.
        return f.isdigit() and any(a <= int(f) <= b for a, b in ranges)
    return f in folded


def _numbers(folded: str) -> set[str]:
    """Every number of ``folded`` as ``facts`` reads it, and each part of one written with
    separators (2024-05-01 also keeps 2024, 05 and 01)."""
    found = {n.rstrip(".,:/-") for n in _NUMBER.findall(folded)}
    return found | {p for n in found for p in re.split(r"[.,:/-]", n) if p}


def check(original: str, compressed: str, must_keep: list[str], markers: list[str], *,
          keep_facts: bool = True, min_vocabulary: float = 0.0) -> Verdict:
    """Every must-keep item, instruction sentence and (``keep_facts``) stated fact survives, the
    text got shorter, and it still uses ``min_vocabulary`` of the original's distinct words."""
    folded = _fold(compressed)
    missing = [item for item in must_keep if _fold(item) in _fold(original) and _fold(item) not in folded]
    for sentence in instruction_sentences(original, markers):
        core = _fold(sentence).rstrip(".!?;:")
        if core not in folded:
            missing.append(sentence)
    if keep_facts:
        numbers, ranges = _numbers(folded), _ranges(folded)
        missing += [f for f in facts(original) if not _has_fact(folded, f, numbers, ranges) and f not in missing]
    if missing:
        shown = "; ".join(" ".join(m.split())[:60] for m in missing[:3])  # a code block on one line
        return Verdict(False, missing, f"lost {len(missing)} must-keep item(s): {shown}")
    if not compressed.strip():
        return Verdict(False, [], "empty compression")
    if len(compressed) >= len(original):
        return Verdict(False, [], "compression is not shorter than the original")
    # After the facts, as the vocabulary: a name is a word a model cannot guess back (the company
    # the bot speaks for, the person to escalate to), and no other check noticed it gone.
    lost = [n for n in dict.fromkeys(_names(original)) if _fold(n) not in folded] if keep_facts else []
    if lost:
        return Verdict(False, lost, f"lost {len(lost)} name(s): {', '.join(lost[:5])}")
    kept = vocabulary_kept(original, compressed)
    if kept < min_vocabulary:
        return Verdict(False, [], f"compression kept {kept:.0%} of the original's distinct words "
                                  f"(under {min_vocabulary:.0%}): content was lost")
    return Verdict(True)


_WORD = re.compile(r"[^\W\d_]{4,}")


def _words(text: str) -> set[str]:
    return {w[:-1] if w.endswith("s") and len(w) > 4 else w for w in _WORD.findall(text.lower())}


def vocabulary_kept(original: str, compressed: str) -> float:
    """The share of the original's distinct content words (4+ letters) the compression still uses."""
    words = _words(original)
    return len(words & _words(compressed)) / len(words) if words else 1.0
