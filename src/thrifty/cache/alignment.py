"""Token-alignment features of a question pair, from a sentence model's contextual token vectors.

Each word piece of one question is matched to its most similar piece of the other (cosine of the
model's token vectors, as BERTScore does). A rephrasing aligns every content piece well; a near
miss leaves one piece unmatched ("Python" against "Java", "enable" against "disable") even when
the pooled sentence vectors are close. Features: recall, precision and F1 of the mean alignment,
their IDF-weighted versions, the worst alignments, how many content pieces align below 0.6, 0.75
and 0.85, and the IDF mass of pieces aligned below 0.7.

Measured on the QQP dev pairs (MiniLM, 5-fold CV of the calibrate replay, 0.5% false hits): the
plain verifier served 12.7% of duplicates without these columns and 14.2% with them; the gated
neighbourhood verifier 14.8% and 16.4% (docs/caching.md).

Only embedders that expose ``embed_tokens`` (the sentence embedder) give token vectors; the
lexical embedder has none, and a verifier fitted on it has no alignment columns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

import numpy as np

from thrifty.cache.features import STOP
from thrifty.embeddings.base import TokenVectors

ALIGN_NAMES = [
    "al_recall", "al_precision", "al_f1", "al_recall_idf", "al_precision_idf",
    "al_min_either", "al_worst", "al_second_worst",
    "al_below_060", "al_below_075", "al_below_085", "al_idf_unaligned",
    "al_mean_content", "al_min_max",
]

# Word pieces that carry no content: punctuation-only pieces and stop words.
_PUNCT = re.compile(r"^[^a-z0-9#]+$")
# Below this alignment a piece counts as unmatched in the IDF mass feature.
_UNALIGNED = 0.7
UNKNOWN = "<unk>"

# The token vectors of a list of texts, in order (the semantic cache hands one to the verifier).
Tokens = Callable[[list[str]], list[TokenVectors]]


def piece_idf(token_lists: Iterable[tuple[str, ...]]) -> dict[str, float]:
    """Smoothed IDF of each word piece over the given texts' pieces; ``<unk>`` for unseen pieces."""
    df: dict[str, int] = {}
    n = 0
    for toks in token_lists:
        n += 1
        for w in set(toks):
            df[w] = df.get(w, 0) + 1
    out = {w: math.log((n + 1) / (c + 1)) + 1.0 for w, c in sorted(df.items())}
    out[UNKNOWN] = math.log(n + 1) + 1.0
    return out


def _prepared(tv: TokenVectors, idf: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    unk = idf[UNKNOWN]
    content = np.array([not _PUNCT.match(w) and w not in STOP for w in tv.tokens], dtype=bool)
    weights = np.array([idf.get(w, unk) for w in tv.tokens], dtype=np.float64)
    return np.asarray(tv.vecs, dtype=np.float32), content, weights


def alignment_features(a: TokenVectors, b: TokenVectors, idf: dict[str, float]) -> list[float]:
    """The ALIGN_NAMES values of questions ``a`` and ``b`` (all 0 when either has no pieces)."""
    if not a.tokens or not b.tokens:
        return [0.0] * len(ALIGN_NAMES)
    ea, ca, wa = _prepared(a, idf)
    eb, cb, wb = _prepared(b, idf)
    sim = (ea @ eb.T).astype(np.float64)
    r = sim.max(axis=1)  # each piece of a: its best match in b
    p = sim.max(axis=0)
    rec, prec = float(r.mean()), float(p.mean())
    f1 = 2 * rec * prec / (rec + prec + 1e-9)
    rec_w = float((r * wa).sum() / wa.sum())
    prec_w = float((p * wb).sum() / wb.sum())
    both = np.concatenate([r[ca] if ca.any() else r, p[cb] if cb.any() else p])
    worst = np.sort(both)
    unaligned = float((wa[ca] * (r[ca] < _UNALIGNED)).sum() + (wb[cb] * (p[cb] < _UNALIGNED)).sum())
    return [rec, prec, f1, rec_w, prec_w, float(min(r.min(), p.min())), float(worst[0]),
            float(worst[1] if len(worst) > 1 else worst[0]),
            float((both < 0.6).sum()), float((both < 0.75).sum()), float((both < 0.85).sum()), unaligned,
            float(both.mean()), float(max(r.min(), p.min()))]


__all__ = ["ALIGN_NAMES", "Tokens", "alignment_features", "piece_idf"]
