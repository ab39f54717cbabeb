"""Deterministic compaction: no model, same input gives the same bytes every time.

1. whitespace: trailing spaces cut, runs of spaces/tabs folded, at most one blank line;
2. markup: HTML comments and HTML tags dropped, Markdown emphasis (``**x**``, ``__x__``) and
   heading/rule decorations reduced to their text. Only HTML's own element names count as tags:
   prompts use ``<answer>``, ``<name>`` or ``<document>`` as delimiters and placeholders the
   model must see, and ``a<b and c>d`` is arithmetic, not markup;
3. duplicate paragraphs (same text after 1-2, at least ``DEDUPE_MIN_CHARS`` long) removed, first
   occurrence kept. Short repeats are structure, not waste: the second ``Output: positive`` of a
   few-shot prompt belongs to its example;
4. a user dictionary of long repeated phrases: each phrase used at least twice is replaced by
   its short form, and one legend line ``[short = long phrase]`` is put first so the model can
   read it back.

Fenced code blocks (```...```) and inline code spans (`...`) are left exactly as they are (by
every step, the dictionary included): whitespace, underscores (``__init__``) and the exact
words matter there.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"(```.*?```)", re.S)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
# Elements that format text in pasted web pages and e-mails; anything else in angle brackets is
# kept. Attributes must look like attributes (name="value"), so ``<b and c>`` is not a tag.
_HTML_ELEMENTS = (
    "a|abbr|b|big|blockquote|body|br|center|div|em|font|h[1-6]|head|hr|html|i|img|li|meta|ol|p|small|span"
    "|strong|sub|sup|table|tbody|td|tfoot|th|thead|tr|u|ul"
)
_ATTR = r"""\s+[A-Za-z_:][-\w:.]*\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'<>=`]+)"""
_TAG = re.compile(rf"</?(?:{_HTML_ELEMENTS})(?:{_ATTR})*\s*/?>", re.I)
DEDUPE_MIN_CHARS = 100
# The compaction runs on client text (system prompts) on the event loop, so no pattern may be
# quadratic: an emphasis span stops at the next marker (an unclosed ``**`` no longer scans to the
# end of the line from every opener), and a rule is one line of spaces and tabs (``\s`` also
# matched newlines: each line start scanned every blank line after it).
_EMPH = re.compile(r"(\*\*|__)(\S(?:(?:(?!\1).)*?\S)?)\1")
_HRULE = re.compile(r"^[ \t]*([-*_=])([ \t]*\1){2,}[ \t]*$", re.M)
_HEADING = re.compile(r"^#{1,6}\s+", re.M)
_SPACES = re.compile(r"[ \t]+")
_BLANKS = re.compile(r"\n{3,}")


def _compact_prose(text: str) -> str:
    # Inline code is swapped for placeholders (no spaces, markup or underscores) and put back.
    spans: list[str] = []

    def hide(m: re.Match[str]) -> str:
        spans.append(m.group())
        return f"\x00{len(spans) - 1}\x00"

    text = _INLINE_CODE.sub(hide, text)
    text = _drop_comments(text)
    text = _TAG.sub("", text)
    text = _EMPH.sub(r"\2", text)
    text = _HRULE.sub("", text)
    text = _HEADING.sub("", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    text = _BLANKS.sub("\n\n", "\n".join(lines))
    return re.sub(r"\x00(\d+)\x00", lambda m: spans[int(m.group(1))], text)


def _drop_comments(text: str) -> str:
    """``<!--...-->`` removed, as ``re.sub(r"<!--.*?-->", "", text, flags=re.S)`` would, in linear
    time: that regex scanned to the end of the text from every unclosed ``<!--`` (seconds of CPU
    for 40 kB of them)."""
    out, pos = [], 0
    while (start := text.find("<!--", pos)) >= 0:
        end = text.find("-->", start + 4)
        if end < 0:
            break  # no closer after this opener: none after any later one either
        out.append(text[pos:start])
        pos = end + 3
    out.append(text[pos:])
    return "".join(out)


def _dedupe(text: str, seen: set[str]) -> str:
    kept = []
    for para in text.split("\n\n"):
        key = " ".join(para.lower().split())
        if len(key) >= DEDUPE_MIN_CHARS:
            if key in seen:
                continue
            seen.add(key)
        kept.append(para)
    return "\n\n".join(kept)


def normalise(text: str, dedupe: bool = True) -> str:
    """Steps 1-3 (3 when ``dedupe``): prose only, code fences untouched."""
    parts = _FENCE.split(text)
    seen: set[str] = set()
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(part)
            continue
        prose = _compact_prose(part)
        out.append(_dedupe(prose, seen) if dedupe else prose)
    return "".join(out).strip()


# Code hidden from the dictionary: \x00, one character of a private-use plane (its index), \x00.
# No dictionary phrase holds these, and no digit is in them for a numeric phrase to match.
_PUA = 0xF0000
_HIDDEN = re.compile("\x00(.)\x00", re.S)


def apply_dictionary(text: str, dictionary: dict[str, str]) -> str:
    """Step 4, in prose only. Code is what the model must copy or output exactly (a JSON example
    naming the brand, a URL, a `signature`): a phrase swapped for its short form there changes
    the answer, and the legend does not undo it. Fenced blocks and inline spans are hidden behind
    placeholders (as ``_compact_prose`` hides inline code), so each phrase is one C-level count
    and replace over the whole text. Longer phrases first so overlapping entries do not fight."""
    code: list[str] = []

    def hide(piece: str) -> str:
        code.append(piece)
        return f"\x00{chr(_PUA + len(code) - 1)}\x00"

    parts = _FENCE.split(text)  # odd items: the fenced blocks
    hidden = "".join(hide(part) if i % 2 else _INLINE_CODE.sub(lambda m: hide(m.group()), part)
                     for i, part in enumerate(parts))
    legend = []
    for long in sorted(dictionary, key=len, reverse=True):
        short = dictionary[long]
        if hidden.count(long) >= 2:
            hidden = hidden.replace(long, short)
            legend.append(f"{short} = {long}")
    text = _HIDDEN.sub(lambda m: code[ord(m.group(1)) - _PUA], hidden)
    if legend:
        text = "[" + "; ".join(legend) + "]\n" + text
    return text


def compact(text: str, dictionary: dict[str, str] | None = None) -> str:
    """All steps; returns ``text`` unchanged when compaction would not make it shorter, or when it
    holds a NUL: both hiding steps mark code with NULs, so one in the text would be read as a
    placeholder (an IndexError, a 500, or another span put back). The saving is optional."""
    if "\x00" in text:
        return text
    out = normalise(text)
    if dictionary:
        out = apply_dictionary(out, dictionary)
    return out if len(out) < len(text) else text
