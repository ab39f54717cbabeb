"""Pair features for the hit verifier: what tells "the same question, reworded" from a near-miss.

Embedding similarity alone cannot see that "How do I enable X?" and "How do I disable X?", or
"...in 2015?" and "...in 2016?", ask different things: they share almost every word. These
features measure the overlap *and* look at the words that differ: numbers, negations, named
entities (capitalised words), opposite pairs (enable/disable, buy/sell...), question words, and
the rarity (IDF) of the differing words. All are symmetric in the two texts where possible.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from rapidfuzz.distance import Indel

_TOK = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_RAW_TOK = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+#'&-]*")
_NUM = re.compile(r"\d+(?:[.,]\d+)*")

STOP = frozenset(
    """a an the of to in on for and or is are was were be been being am do does did doing
    i me my mine we our you your he she it its they them their this that these those there
    with at by from as about into over than then so if but can could would should will shall
    may might must have has had having get got what which who whom whose why how when where
    s t just very much more most some any all also really one ones way ways""".split()  # noqa: SIM905
)
QWORDS = frozenset("what why how which who when where is can should do does are will would could did".split())  # noqa: SIM905
NEGATIONS = frozenset(
    ["not", "no", "never", "none", "nothing", "nobody", "without", "cannot", "can't", "don't", "doesn't", "isn't", "aren't", "won't", "wouldn't", "shouldn't", "didn't", "wasn't", "weren't", "haven't", "hasn't", "couldn't", "nor", "neither"]
)
# Words whose swap turns a question into a different one.
_OPPOSITES = [
    ("enable", "disable"), ("increase", "decrease"), ("best", "worst"), ("buy", "sell"), ("before", "after"),
    ("male", "female"), ("men", "women"), ("man", "woman"), ("good", "bad"), ("pros", "cons"),
    ("advantages", "disadvantages"), ("start", "stop"), ("open", "close"), ("win", "lose"), ("love", "hate"),
    ("rich", "poor"), ("high", "low"), ("up", "down"), ("in", "out"), ("on", "off"), ("first", "last"),
    ("old", "new"), ("young", "old"), ("gain", "lose"), ("more", "less"), ("max", "min"), ("add", "remove"),
    ("install", "uninstall"), ("encrypt", "decrypt"), ("import", "export"), ("upload", "download"),
    ("boy", "girl"), ("husband", "wife"), ("legal", "illegal"), ("possible", "impossible"), ("true", "false"),
    ("easy", "hard"), ("cheap", "expensive"), ("fast", "slow"), ("positive", "negative"), ("weight", "height"),
    ("android", "ios"), ("iphone", "android"), ("windows", "mac"), ("python", "java"),
    ("republican", "democrat"), ("trump", "clinton"), ("hillary", "trump"), ("india", "pakistan"),
    ("india", "china"), ("usa", "uk"), ("yes", "no"), ("inside", "outside"), ("above", "below"),
]
OPPOSITES: dict[str, set[str]] = {}
for _x, _y in _OPPOSITES:
    OPPOSITES.setdefault(_x, set()).add(_y)
    OPPOSITES.setdefault(_y, set()).add(_x)

Idf = Callable[[str], float]


def tokens(text: str) -> list[str]:
    return _TOK.findall(text.lower().replace("\u2019", "'"))


def entities(text: str) -> set[str]:
    """Capitalised or all-caps words after the first one: a cheap proxy for named entities."""
    return {t.lower() for i, t in enumerate(_RAW_TOK.findall(text)) if i and (t[0].isupper() or
                                                                            (len(t) > 1 and t.isupper()))}


def numbers(text: str) -> set[str]:
    return set(_NUM.findall(text))


def negation_count(toks: Sequence[str]) -> int:
    return sum(w in NEGATIONS or w.endswith("n't") for w in toks)


def opposite_count(only_a: AbstractSet[str], only_b: AbstractSet[str]) -> int:
    return sum(1 for w in only_a if OPPOSITES.get(w, set()) & only_b)


def _stem(w: str) -> str:
    # Light stemming: enough to match plural and verb-form differences.
    for suf in ("ing", "ed", "es", "s"):
        if len(w) > len(suf) + 2 and w.endswith(suf):
            return w[: -len(suf)]
    return w


def _ngrams(seq: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)}


def _chargrams(toks: Sequence[str], n: int) -> set[str]:
    s = " " + " ".join(toks) + " "
    return {s[i:i + n] for i in range(len(s) - n + 1)}


def _jac(x: AbstractSet[Any], y: AbstractSet[Any]) -> float:
    return 1.0 if not x and not y else len(x & y) / max(1, len(x | y))


def _ovl(x: AbstractSet[Any], y: AbstractSet[Any]) -> float:
    return 0.0 if not x or not y else len(x & y) / min(len(x), len(y))


def build_idf(texts: Iterable[str]) -> dict[str, float]:
    """Smoothed inverse document frequency of each word; ``<unk>`` for unseen words. Label-free."""
    df: dict[str, int] = {}
    n = 0
    for t in texts:
        n += 1
        for w in set(tokens(t)):
            df[w] = df.get(w, 0) + 1
    idf = {w: math.log((n + 1) / (c + 1)) + 1.0 for w, c in df.items()}
    idf["<unk>"] = math.log(n + 1) + 1.0
    return idf


@dataclass(frozen=True)
class TextInfo:
    """Everything pair_features needs from one text, computed once per text (see ``analyze``)."""

    chars: int
    toks: tuple[str, ...]
    joined: str
    words: frozenset[str]
    content: frozenset[str]
    stems: frozenset[str]
    bigrams: frozenset[tuple[str, ...]]
    trigrams: frozenset[tuple[str, ...]]
    char3: frozenset[str]
    char5: frozenset[str]
    qwords: frozenset[str]
    numbers: frozenset[str]
    negations: int
    entities: frozenset[str]
    comparison: bool


@lru_cache(maxsize=4096)
def analyze(text: str) -> TextInfo:
    """Per-text analysis, memoised: a lookup analyses its query once for all its candidates, and
    popular cached questions stay analysed. (~17 KB each, hence the small memo.)"""
    toks = tokens(text)
    words = frozenset(toks)
    content = words - STOP
    return TextInfo(
        chars=len(text), toks=tuple(toks), joined=" ".join(toks), words=words, content=content,
        stems=frozenset(_stem(w) for w in content), bigrams=frozenset(_ngrams(toks, 2)),
        trigrams=frozenset(_ngrams(toks, 3)), char3=frozenset(_chargrams(toks, 3)),
        char5=frozenset(_chargrams(toks, 5)), qwords=frozenset(w for w in toks[:3] if w in QWORDS),
        numbers=frozenset(numbers(text)), negations=negation_count(toks), entities=frozenset(entities(text)),
        comparison="vs" in words or "or" in words,
    )


def pair_features(a: str, b: str, idf: Idf) -> list[float]:
    """The lexical feature row for the pair (a, b); see FEATURE_NAMES."""
    A, B = analyze(a), analyze(b)
    ta, tb = A.toks, B.toks
    sa, sb = A.words, B.words
    ca, cb = A.content, B.content
    sta, stb = A.stems, B.stems
    da, db = sa - sb, sb - sa
    dca, dcb = ca - cb, cb - ca
    dsa, dsb = sta - stb, stb - sta
    la, lb = len(ta), len(tb)
    f: list[float] = [min(la, lb), max(la, lb), min(la, lb) / max(1, la, lb),
                      min(A.chars, B.chars) / max(1, A.chars, B.chars), abs(la - lb)]
    f += [_jac(sa, sb), _ovl(sa, sb), _jac(ca, cb), _ovl(ca, cb), _jac(sta, stb), _ovl(sta, stb),
          _jac(A.bigrams, B.bigrams), _jac(A.trigrams, B.trigrams), _jac(A.char3, B.char3), _jac(A.char5, B.char5)]
    f += [len(da) + len(db), min(len(da), len(db)), max(len(da), len(db)),
          len(dca) + len(dcb), min(len(dca), len(dcb)), max(len(dca), len(dcb)),
          len(dsa) + len(dsb), min(len(dsa), len(dsb))]
    # math.fsum: a set's iteration order follows the per-process string hash, and a plain float
    # sum in another order differs in the last bits, enough to move a tree split between runs.
    wa = math.fsum(idf(w) for w in ca) or 1e-6
    wb = math.fsum(idf(w) for w in cb) or 1e-6
    shared = math.fsum(idf(w) for w in ca & cb)
    d_idf = sorted(idf(w) for w in dca | dcb)
    ds_idf = [idf(w) for w in dsa | dsb]
    f += [shared / (wa + wb - shared + 1e-6), shared / min(wa, wb), math.fsum(d_idf),
          d_idf[-1] if d_idf else 0.0, d_idf[-2] if len(d_idf) > 1 else 0.0,
          math.fsum(ds_idf), max(ds_idf, default=0.0)]
    # Longest-common-subsequence ratios of the characters and of the words. rapidfuzz, not difflib:
    # difflib's matcher took ~0.2-0.5 ms per pair, most of a 10-candidate lookup (docs/benchmarks.md).
    f += [Indel.normalized_similarity(A.joined, B.joined), Indel.normalized_similarity(ta, tb),
          float(sa == sb), float(sta == stb)]
    qa, qb = A.qwords, B.qwords
    f += [float(bool(ta) and bool(tb) and ta[0] == tb[0]), float(qa == qb), float(bool(qa ^ qb)),
          float(bool(ta) and bool(tb) and ta[-1] == tb[-1])]
    na, nb = A.numbers, B.numbers
    f += [float(na != nb), len(na ^ nb), float(bool(na) and bool(nb) and na != nb)]
    ga, gb = A.negations, B.negations
    f += [abs(ga - gb), float((ga % 2) != (gb % 2))]
    ea, eb = A.entities, B.entities
    f += [len(ea ^ eb), _jac(ea, eb), float(bool(ea) and bool(eb) and not (ea & eb))]
    f += [float(opposite_count(da, db)), float(A.comparison != B.comparison)]
    return f


FEATURE_NAMES = [
    "len_min", "len_max", "len_ratio", "chars_ratio", "len_diff",
    "jac_words", "ovl_words", "jac_content", "ovl_content", "jac_stems", "ovl_stems",
    "jac_bigrams", "jac_trigrams", "jac_char3", "jac_char5",
    "diff_words", "diff_words_min", "diff_words_max", "diff_content", "diff_content_min", "diff_content_max",
    "diff_stems", "diff_stems_min",
    "idf_jac", "idf_ovl", "idf_diff_sum", "idf_diff_max", "idf_diff_second", "idf_diff_stems_sum",
    "idf_diff_stems_max",
    "lcs_chars", "lcs_words", "same_bag", "same_stems",
    "same_first", "same_qwords", "qword_mismatch", "same_last",
    "numbers_differ", "numbers_symdiff", "both_numbers_differ",
    "negation_diff", "negation_parity",
    "entities_symdiff", "entities_jac", "entities_disjoint",
    "opposites", "comparison_mismatch",
]
