"""Hard vetoes: differences between two questions that no similarity or learned score overrides.

The embedders and the verifiers' pair features read lower-cased ``[a-z0-9]`` words, so to them
"What is 6/3?" and "What is 6*3?", "learn C++" and "learn C#", "'hello'" and "'HELLO'", "我爱你"
and "我恨你" are the same text (similarity 1.0). These checks read the raw text instead. The
semantic cache applies them to every candidate whatever the verifier (rule, calibrated, gated
neighbourhood): a vetoed candidate is never served (``SemanticCache.scored``); calibration
applies them too, so a verifier's threshold is set on the scores the cache actually serves.

Two questions may share an answer only if they have:

- ``quantities``: the same numbers, signs included, in the same order; number words count as
  their digits ("two-way" = "2-way") and "1st" as "first";
- ``symbols``: the same operator and symbol characters (``+ - * / = < > ! ^ % & | ~ # @ $ \\ _
  [ ] { }``). Not symbols: sentence punctuation ``? . , ; : ' " ( )``, a sentence-ending ``!``,
  a hyphen between letters or after a digit ("two-factor", "3-day"), a slash between words
  ("tips/tricks"; "a/b" and "6/3" count) and an ``&`` between words ("Signals & Systems");
- ``non_ascii``: the same non-ASCII words, case-sensitively (CJK, Cyrillic, Greek, accented
  letters, emoji, ``× ÷ ² ≥ π €``...); typographic quotes, dashes and spaces are punctuation;
- ``quoted``: every quoted or backticked span of one found verbatim (case-sensitively) in the
  other, so "Convert 'hello'" / "Convert 'HELLO'" differ while "Is ""Hitman"" real?" / "Is
  Hitman real?" do not;
- ``payload``: for an instruction with data after a colon ("Translate to French: I'm happy",
  "Repeat exactly: HeLLo"; a lead-in of at most 5 words, not a title-cased topic such as
  "Harvard College Courses:"), the same data character for character, when both have one;
- ``template``: not one prompt template filled with other data. A template is an instruction
  the two share word for word, with the data it applies to after it: on one line after a colon
  (an instruction of any length: "Classify the sentiment of this review, one word only: ..."),
  or on lines of their own (a prompt of several lines that shares a line with the other: the
  instruction, a heading). The data must then be the same, character for character: a long
  instruction makes the two texts nearly identical to any similarity ("...the packaging was
  nice" / "...the packaging was damaged": 0.98 with the lexical embedder), while the answer
  depends on the data alone;
- ``code``: neither looks like code or data (an indented line, braces, a call such as ``f(x)``,
  ``def``, ``#include``, a line ending in ``;``, a fenced block): such prompts are never
  answered semantically, only by the exact cache;
- ``negation``: the same negation parity ("is allergic" / "is not allergic"; a separate "non",
  as in "non-profit", counts);
- ``opposite``: no opposite words swapped (enable / disable, buy / sell, first / last, he / she, too
  little / too much, but / because...);
- ``negated``: no word that is the other's word with a negating prefix (safe / unsafe, legal /
  illegal, like / dislike, profitable / nonprofitable);
- ``ordinals`` and ``number_words``: the same ordinal words (a lone "first" or "last" aside:
  "how was it first used") and the same half / dozen / twice... words;
- ``entities``: not a capitalised name of one replaced by another name ("...of France?" /
  "...of Germany?": each name absent from the other question);
- ``order``: the same order of their shared words around a relation word ("python better than
  java" / "java better than python", "USD to EUR" / "EUR to USD"; relation words: than, vs,
  versus, against, to, from, into, over, before, after, between, beat, not: "a crook and not a
  law-abiding citizen" / "law-abiding and not a crook");
- ``referent``: not the same sentence pointing at another of the things it names: word for word
  the same but for content words each replaced by a word the sentence uses elsewhere ("...either
  the plain bathroom or the colorful bedroom, but the _ was already plain." / "...already
  colorful."). The two have the same words, so every other check (and a bag-of-words similarity)
  sees them as one question; a mere reordering of the same words is left to ``order``.

What they cannot see: a word swapped for another word of the same kind in lower case
("ibuprofen" / "paracetamol", "french" / "spanish") is left to the verifier, which is
calibrated to a false-hit rate, not to zero (docs/caching.md).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

from thrifty.cache.features import NEGATIONS, OPPOSITES, QWORDS, STOP

# Recorded in verifier files calibrated with these vetoes (their thresholds assume them).
VETOES_VERSION = 2
# Typographic quotes, apostrophes and minus signs read as their ASCII forms; a doubled quote
# (CSV escaping: ""word"") as one.
_TRANSLATE = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2212": "-"})
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _split(words: str) -> list[str]:
    return words.split()


# Number words read as their digits. "one" is left out: mostly a pronoun ("which one is better").
_NUM_WORDS = {w: str(i) for i, w in enumerate(_split(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty")) if w != "one"} | {
    "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80",
    "ninety": "90", "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000",
    "trillion": "1000000000000"}
_ORDINAL_WORDS = _split(
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth fourteenth "
    "fifteenth sixteenth seventeenth eighteenth nineteenth twentieth")
ORDINALS = frozenset([*_ORDINAL_WORDS, "thirtieth", "hundredth", "thousandth", "millionth", "penultimate", "last"])
# Alone on one side these are mostly not ordinals ("how was it first used", "last time").
_LOOSE_ORDINALS = frozenset({"first", "last"})
NUMBER_WORDS = frozenset(_split("half quarter dozen twice thrice double triple"))
# "1st", "2nd", "23rd": read as the ordinal word (so "1st law" = "first law").
_ORDINAL_DIGITS = re.compile(r"(?<![\w.])(\d+)(?:st|nd|rd|th)\b", re.IGNORECASE)
# A sign belongs to a number only where it cannot be a binary operator: not after a word, a
# digit or a closing bracket ("2-1" is two numbers and a minus, "-5" one negative number).
_QUANTITY = re.compile(r"(?:(?<![\w)\]])[-+])?\d+(?:[.,]\d+)*"
                       r"|\b(?:" + "|".join(sorted(_NUM_WORDS, key=len, reverse=True)) + r")\b")
_DQUOTED = re.compile(r'"([^"\n]+)"')
_SQUOTED = re.compile(r"(?<!\w)'([^'\n]+?)'(?!\w)")
_BACKTICKED = re.compile(r"`+([^`]+)`+")
_CODE = re.compile("|".join([
    r"```",
    r"\n[ \t]+\S",  # an indented line
    r"[{}]",
    r";[ \t]*(?:\n|$)",  # a statement ending a line
    r"\bdef\s+\w+\s*\(|\bclass\s+\w+\s*[(:]|#include\b|\bfunction\s*\w*\s*\(|=>|->",
    r"(?m:^\s*(?:import\s+\w|from\s+[\w.]+\s+import\b|return\b|var\s|let\s|const\s))",
    # A call without spaces, not a plural mark: f(x), print(1/2), len(s), os.path.join(a,b).
    r"(?<![\w.])[a-z_][\w.]*\((?!s\)|es\))[^()\s]*\)",
]))
NEGATING_PREFIXES = ("non", "dis", "un", "in", "im", "il", "ir")
_NEGATED = re.compile(r"(?:" + "|".join(NEGATING_PREFIXES) + r")(\w{3,})")
_SYMBOL_AT = re.compile(r"[-+*/=<>!^%&|~#@$\\_\[\]{}]")
# "not" too: "a crook and not a law-abiding citizen like Joseph" / "law-abiding and not a crook like
# Joseph" say opposite things of Adam with the same words.
RELATIONS = frozenset(_split("than vs versus against to from into over before after between beat beats not"))
# Opposites beyond the pair features' list (features.OPPOSITES, which calibrated verifiers were
# fitted on and so stays as it is): word forms and pairs whose swap changes the answer.
_MORE_OPPOSITES = [
    ("won", "lost"), ("wins", "loses"), ("winner", "loser"), ("ascending", "descending"), ("bigger", "smaller"),
    ("larger", "smaller"), ("biggest", "smallest"), ("largest", "smallest"), ("greater", "less"),
    ("greater", "smaller"), ("higher", "lower"), ("highest", "lowest"), ("maximum", "minimum"),
    ("adult", "child"), ("adults", "children"), ("always", "never"), ("celsius", "fahrenheit"),
    ("north", "south"), ("east", "west"), ("left", "right"), ("push", "pull"), ("send", "receive"),
    ("input", "output"), ("plus", "minus"), ("add", "subtract"), ("multiply", "divide"), ("odd", "even"),
    ("hot", "cold"), ("summer", "winter"), ("upper", "lower"), ("uppercase", "lowercase"), ("encode", "decode"),
    ("compress", "decompress"), ("accept", "reject"), ("allow", "deny"), ("include", "exclude"),
    ("longer", "shorter"), ("older", "younger"), ("oldest", "youngest"), ("fastest", "slowest"),
    ("strongest", "weakest"), ("heavier", "lighter"), ("better", "worse"), ("pro", "con"),
    ("import", "export"), ("inbound", "outbound"), ("min", "max"), ("true", "false"), ("yes", "no"),
    # Amounts: "the _ was too little" / "...too much" point at opposite things.
    ("little", "much"), ("few", "many"), ("fewer", "more"),
    # Who does what to whom: "when the boy loves her" / "when the girl loves him".
    ("he", "she"), ("him", "her"), ("his", "her"), ("himself", "herself"), ("boyfriend", "girlfriend"),
    ("brother", "sister"), ("father", "mother"), ("son", "daughter"),
]
# Contrast and cause: "used posters instead of flyers, but the cost for the _ was cheaper" /
# "..., because the cost for the _ was cheaper" (the flyers / the posters). Opposite only when
# they are the one word the two questions differ by: "a job interview tomorrow but I'm nervous" /
# "nervous because I have a job interview tomorrow" ask the same.
CONNECTIVES = frozenset({("but", "because"), ("although", "because"), ("though", "because")})
OPPOSITE_WORDS: dict[str, set[str]] = {w: set(v) for w, v in OPPOSITES.items()}
for _x, _y in _MORE_OPPOSITES:
    OPPOSITE_WORDS.setdefault(_x, set()).add(_y)
    OPPOSITE_WORDS.setdefault(_y, set()).add(_x)
# An instruction with its data ("Translate to French: I'm happy", "Repeat exactly: HeLLo"): a
# lead-in of at most 5 words ending in a colon. When both questions have one, the data must be
# identical. A title-cased lead-in is a topic ("Harvard College Courses: What is...?"), not an
# instruction, and is not compared, unless it opens with an instruction verb ("Translate to French").
_INSTRUCTIONS = frozenset(_split(
    """translate summarize summarise repeat rewrite paraphrase fix correct convert classify capitalize capitalise
    reverse count extract answer solve calculate compute evaluate explain define spell format sort list name
    describe simplify expand factor check detect identify complete continue"""))
_PAYLOAD = re.compile(r"^\s*([^:?\n]{1,60}):\s+(\S.*?)\s*$", re.S)
# A one-line template: an instruction of any length, a colon, the data (``template``).
_FILLED = re.compile(r"^\s*([^:?\n]+?):\s+(\S[^\n]*?)\s*$")
# Capitalised words that are not names: the pronoun I and sentence openers.
_NOT_NAMES = frozenset({"i", "i'm", "i've", "i'd", "i'll"}) | QWORDS | STOP


@dataclass(frozen=True)
class Surface:
    """What the vetoes compare, read once per text (memoised by ``surface``)."""

    text: str  # quotes and minus signs normalised
    quantities: tuple[str, ...]
    symbols: tuple[str, ...]
    non_ascii: tuple[str, ...]
    quoted: tuple[str, ...]
    code: bool
    words: tuple[str, ...]  # lower-cased words, in order
    negations: int
    ordinals: tuple[str, ...]
    number_words: tuple[str, ...]
    names: frozenset[str]  # capitalised words that are not sentence openers, lower-cased and stemmed
    stems: frozenset[str]  # every word, stemmed as names are
    payload: str | None  # the data after an instruction's colon, whitespace collapsed
    instruction: str | None  # a one-line template's instruction (before its colon), whitespace collapsed
    filled: str | None  # the data after that colon, whitespace collapsed
    lines: frozenset[str]  # the non-empty lines of a prompt of several lines, whitespace collapsed


def _neighbour_word(text: str, i: int, step: int) -> str:
    """The letters right before (step -1) or after (step 1) position ``i``."""
    j = i + step
    out = []
    while 0 <= j < len(text) and text[j].isalpha():
        out.append(text[j])
        j += step
    return "".join(out)


def _symbols(text: str) -> tuple[str, ...]:
    out = []
    n = len(text)
    for m in _SYMBOL_AT.finditer(text):
        i, c = m.start(), m.group()
        prev = text[i - 1] if i else " "
        nxt = text[i + 1] if i + 1 < n else " "
        if c == "-" and nxt.isalpha() and (prev.isalpha() or prev.isdigit()):
            continue  # a hyphen in a word: "two-factor", "3-day"
        if c == "!" and not (nxt == "=" or nxt.isalnum() or nxt in "(_"):
            continue  # an exclamation mark ends a sentence; "!=" and "!x" are operators
        if c == "/" and max(len(_neighbour_word(text, i, -1)), len(_neighbour_word(text, i, 1))) > 1 \
                and prev.isalpha() and nxt.isalpha():
            continue  # "tips/tricks", "and/or": a word choice, not a division ("a/b" still is)
        if c == "&" and text[:i].rstrip()[-1:].isalpha() and text[i + 1:].lstrip()[:1].isalpha():
            continue  # "Signals & Systems", "AT&T": an "and"
        out.append(c)
    return tuple(sorted(out))


def _significant(c: str) -> bool:
    """Part of a word for ``non_ascii``: letters, digits, marks and symbols; not punctuation,
    separators or control/format characters (typographic quotes, dashes, no-break spaces)."""
    if c.isascii():
        return c.isalnum()
    return unicodedata.category(c)[0] in "LNMS"


def _non_ascii(text: str) -> tuple[str, ...]:
    if text.isascii():
        return ()
    runs: list[str] = []
    cur: list[str] = []
    for c in [*text, " "]:
        if _significant(c):
            cur.append(c)
            continue
        if cur and not all(ch.isascii() for ch in cur):
            runs.append("".join(cur))
        cur = []
    return tuple(sorted(runs))


def _quantities(lowered: str) -> tuple[str, ...]:
    return tuple(tok if tok[-1].isdigit() else _NUM_WORDS[tok] for tok in _QUANTITY.findall(lowered))


def _stem(w: str) -> str:
    w = w.removesuffix("'s")
    return w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w


def _names(text: str) -> frozenset[str]:
    """Capitalised words that do not open a sentence: a cheap proxy for named entities."""
    out = set()
    opener = True
    for m in re.finditer(r"[A-Za-z][A-Za-z0-9']*|[.?!:;\n]", text):
        w = m.group()
        if w in ".?!:;\n":
            opener = True
            continue
        if not opener and (w[0].isupper() or (len(w) > 1 and w.isupper())) and w.lower() not in _NOT_NAMES:
            out.add(_stem(w.lower()))
        opener = False
    return frozenset(out)


@lru_cache(maxsize=4096)
def surface(text: str) -> Surface:
    t = text.translate(_TRANSLATE).replace('""', '"')
    lowered = t.lower()
    if _ORDINAL_DIGITS.search(lowered):
        lowered = _ORDINAL_DIGITS.sub(lambda m: _ordinal_word(m.group(1)), lowered)
    words = tuple(_WORD.findall(lowered))
    quoted = [*_DQUOTED.findall(t), *_SQUOTED.findall(t), *_BACKTICKED.findall(t)]
    instruction, filled = _filled(t)
    return Surface(
        text=t, quantities=_quantities(lowered), symbols=_symbols(t), non_ascii=_non_ascii(t),
        quoted=tuple(sorted({q for q in quoted if q.strip()})), code=looks_like_code(t), words=words,
        negations=sum(w in NEGATIONS or w == "non" or w.endswith("n't") for w in words),
        ordinals=tuple(sorted(w for w in words if w in ORDINALS)),
        number_words=tuple(sorted(w for w in words if w in NUMBER_WORDS)),
        names=_names(t), stems=frozenset(_stem(w) for w in words), payload=_payload(t),
        instruction=instruction, filled=filled, lines=_lines(t),
    )


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _filled(text: str) -> tuple[str | None, str | None]:
    """A one-line template's instruction and the data after its colon (``template``), or Nones."""
    m = _FILLED.match(text)
    if m is None or _topic(m.group(1).split()):
        return None, None
    return _collapse(m.group(1)), _collapse(m.group(2))


def _lines(text: str) -> frozenset[str]:
    """The non-empty lines of a prompt of several lines (``template``); empty for one line."""
    lines = {_collapse(line) for line in text.splitlines()} - {""}
    return frozenset(lines) if len(lines) > 1 else frozenset()


def _other_data(a: Surface, b: Surface) -> bool:
    """One template (the same instruction, or a shared line) filled with different data."""
    if a.instruction is not None and a.instruction == b.instruction and a.filled != b.filled:
        return True
    return bool(a.lines & b.lines) and a.lines != b.lines


def _payload(text: str) -> str | None:
    m = _PAYLOAD.match(text)
    if m is None:
        return None
    lead = m.group(1).split()
    if len(lead) > 5 or _topic(lead):
        return None
    return _collapse(m.group(2))


def _topic(lead: list[str]) -> bool:
    """A title-cased lead-in is a topic ("Harvard College Courses: What is...?"), not an instruction."""
    titled = len(lead) > 1 and all(w[0].isupper() for w in lead if len(w) > 3)
    return titled and lead[0].lower() not in _INSTRUCTIONS


def _ordinal_word(digits: str) -> str:
    n = int(digits)
    return _ORDINAL_WORDS[n - 1] if 1 <= n <= len(_ORDINAL_WORDS) else f"{n}th"


def looks_like_code(text: str) -> bool:
    """Whether ``text`` looks like source code or data (never answered semantically)."""
    return _CODE.search(text) is not None


def _ordinals_differ(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    if a == b:
        return False
    if not a or not b:  # one side alone has ordinals: a lone "first"/"last" is no ordinal
        return not set(a or b) <= _LOOSE_ORDINALS
    return True


def _negated(only_a: set[str], only_b: set[str]) -> bool:
    """A word of one question is a word of the other with a negating prefix (safe / unsafe)."""
    for x, y in ((only_a, only_b), (only_b, only_a)):
        for w in x:
            m = _NEGATED.fullmatch(w)
            if m is not None and m.group(1) in y:
                return True
    return False


def _positions(ws: tuple[str, ...]) -> dict[str, int]:
    """Content words that occur once, with their position."""
    seen: dict[str, int] = {}
    dup: set[str] = set()
    for i, w in enumerate(ws):
        if w in STOP or w in RELATIONS:
            continue
        if w in seen:
            dup.add(w)
        seen[w] = i
    return {w: i for w, i in seen.items() if w not in dup}


def _reordered(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Two shared content words on opposite sides of the same relation word in the two questions
    ("python better than java" / "java better than python"). Only words that occur once in each
    question are compared, and that relation word must lie between them in both."""
    if not RELATIONS.intersection(a) & RELATIONS.intersection(b):
        return False
    pa, pb = _positions(a), _positions(b)
    for x, y in combinations(sorted(pa.keys() & pb.keys()), 2):
        if (pa[x] < pa[y]) == (pb[x] < pb[y]):
            continue
        lo_a, hi_a = sorted((pa[x], pa[y]))
        lo_b, hi_b = sorted((pb[x], pb[y]))
        if RELATIONS.intersection(a[lo_a + 1:hi_a]) & RELATIONS.intersection(b[lo_b + 1:hi_b]):
            return True
    return False


def _word_diff(a: tuple[str, ...], b: tuple[str, ...]) -> list[tuple[str, str]] | None:
    """The positions where ``a`` and ``b`` differ, word for word (None when their lengths do)."""
    if len(a) != len(b):
        return None
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y]


def _swapped_connective(diff: list[tuple[str, str]] | None) -> bool:
    """The same sentence but for one word, a contrast swapped for a cause (``CONNECTIVES``); the
    same words rearranged around it ask the same question."""
    return diff is not None and len(diff) == 1 and (diff[0] in CONNECTIVES or diff[0][::-1] in CONNECTIVES)


def _repointed(a: tuple[str, ...], b: tuple[str, ...], diff: list[tuple[str, str]] | None) -> bool:
    """``b`` is ``a`` with content words each replaced by another word both use elsewhere (and so
    not a permutation of it): the sentence names two things and points at the other one."""
    if diff is None or sorted(a) == sorted(b):
        return False
    sa, sb = set(a), set(b)
    return all(x not in STOP and y not in STOP and x in sb and y in sa for x, y in diff)


def _unquoted(spans: tuple[str, ...], other: str) -> bool:
    return any(s not in other for s in spans)


def vetoes(a: str, b: str) -> list[str]:
    """Every hard reason ``a`` and ``b`` may not share an answer (empty: the verifier decides)."""
    if a == b:
        return []
    sa, sb = surface(a), surface(b)
    out = []
    if sa.code or sb.code:
        out.append("code")
    for name in ("quantities", "symbols", "non_ascii", "number_words"):
        if getattr(sa, name) != getattr(sb, name):
            out.append(name)
    if _unquoted(sa.quoted, sb.text) or _unquoted(sb.quoted, sa.text):
        out.append("quoted")
    if sa.payload is not None and sb.payload is not None and sa.payload != sb.payload:
        out.append("payload")
    if _other_data(sa, sb):
        out.append("template")
    if _ordinals_differ(sa.ordinals, sb.ordinals):
        out.append("ordinals")
    if sa.negations % 2 != sb.negations % 2:
        out.append("negation")
    wa, wb = set(sa.words), set(sb.words)
    only_a, only_b = wa - wb, wb - wa
    diff = _word_diff(sa.words, sb.words)
    if any(OPPOSITE_WORDS.get(w, set()) & only_b for w in only_a) or _swapped_connective(diff):
        out.append("opposite")
    if _negated(only_a, only_b):
        out.append("negated")
    if sa.names - sb.stems and sb.names - sa.stems:
        out.append("entities")
    if _reordered(sa.words, sb.words):
        out.append("order")
    if _repointed(sa.words, sb.words, diff):
        out.append("referent")
    return out


def content_stems(text: str) -> tuple[str, ...]:
    """The words of ``text`` that are not stop words, stemmed as ``names`` are, in order."""
    return tuple(_stem(w) for w in surface(text).words if w not in STOP)


def vetoed(a: str, b: str) -> bool:
    """Whether any hard veto separates ``a`` and ``b``."""
    return bool(vetoes(a, b))


__all__ = ["VETOES_VERSION", "Surface", "content_stems", "looks_like_code", "surface", "vetoed", "vetoes"]
