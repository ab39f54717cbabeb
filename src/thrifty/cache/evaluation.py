"""`thrifty cache eval`: replay the semantic cache on labelled pairs and measure it.

Decisions are made first, from texts only (pairs.lookup_all); labels are read afterwards to
score them, exactly as a judge holding only the labels and the ``--decisions`` file would.

A pair's label says whether text_a's answer is right for text_b, and nothing about any other
cached question. So a pair's ``hit`` is what the label can judge: the cache would answer text_b
with text_a's cached answer, i.e. text_a is among text_b's retrieved neighbours and the verifier
accepts it (duplicate hit rate = such hits among duplicates, false-hit rate = among
non-duplicates). When several cached questions pass, each was judged the same question as text_b
and the best-scoring one is the answer served. Lookups that served an answer although text_a was
not verified (another pair's entry) are reported apart ("served another entry"), with how many of
them were a cached question identical to text_b (QQP repeats questions across pairs).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from thrifty.cache.config import DEFAULT_TOP_K
from thrifty.cache.folds import question_key
from thrifty.cache.pairs import Lookup, Pair, PairCache, embed_with_tokens, lookup_all
from thrifty.cache.verifier import HitVerifier
from thrifty.embeddings import Embedder
from thrifty.evaluation.overlap import drop_overlap

_GRID_QUANTILES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995)


def decide_all(pairs: list[Pair], embedder: Embedder, verifier: HitVerifier, top_k: int = DEFAULT_TOP_K,
               ann: str = "none") -> tuple[list[Lookup], dict[str, float]]:
    """Cache every text_a, look up every text_b. Reads no label."""
    cache = PairCache([p.text_a for p in pairs], embedder, top_k=top_k, ann=ann, tokens=verifier.uses_tokens)
    queries = [p.text_b for p in pairs]
    # Query embedding is timed one text at a time (as the gateway does) on a sample.
    sample = queries[: min(500, len(queries))]
    embed_ms = []
    for q in sample:
        t0 = time.perf_counter()
        embedder.embed([q])
        embed_ms.append((time.perf_counter() - t0) * 1000)
    qvecs, qtokens = embed_with_tokens(embedder, queries, verifier.uses_tokens)
    lookups = lookup_all(cache, queries, qvecs, verifier, qtokens)
    lat = np.array([lk.latency_ms for lk in lookups])
    latency = {"lookup_p50_ms": float(np.percentile(lat, 50)), "lookup_p99_ms": float(np.percentile(lat, 99)),
               "embed_p50_ms": float(np.percentile(embed_ms, 50)), "embed_p99_ms": float(np.percentile(embed_ms, 99)),
               "cached_texts": float(len(cache.texts))}
    return lookups, latency


def decisions(pairs: list[Pair], lookups: list[Lookup], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: ``hit`` (the cache would answer text_b with text_a's answer) and ``served`` (some
    cached answer was served, possibly another pair's entry). Reads texts and scores, never labels."""
    hit = np.array([lk.score_of(p.text_a) >= threshold for lk, p in zip(lookups, pairs, strict=True)], dtype=bool)
    served = np.array([lk.score >= threshold for lk in lookups], dtype=bool)
    return hit, served


def rates(pairs: list[Pair], lookups: list[Lookup], threshold: float) -> dict[str, float]:
    y = np.array([p.label if p.label is not None else -1 for p in pairs])
    hit, served = decisions(pairs, lookups, threshold)
    same = np.array([lk.served_text == p.text_b for lk, p in zip(lookups, pairs, strict=True)])
    other = served & ~hit
    pos, neg = y == 1, y == 0

    def mean(x: np.ndarray) -> float:
        return float(np.mean(x)) if len(x) else float("nan")

    return {"threshold": float(threshold),
            "duplicate_hit_rate": mean(hit[pos]), "false_hit_rate": mean(hit[neg]), "hit_rate": mean(hit),
            "duplicates_served": int(hit[pos].sum()), "false_hits": int(hit[neg].sum()),
            "served_rate": mean(served), "served_other_entry": int(other.sum()),
            "served_other_entry_identical_text": int((other & same).sum()),
            "duplicate_served_any_rate": mean(served[pos]), "non_duplicate_served_any_rate": mean(served[neg]),
            "non_duplicate_served_any_rate_excluding_identical": mean(served[neg & ~same])}


def decision_rows(pairs: list[Pair], lookups: list[Lookup], threshold: float,
                  positions: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """One ``--decisions`` line per pair (see ``decisions``). ``index`` is the pair's 0-based
    position in the --pairs file (``positions``, when pairs were left out of ``pairs``), so a
    judge holding the file's labels scores each line against its own pair."""
    hit, served = decisions(pairs, lookups, threshold)
    where = range(len(pairs)) if positions is None else positions
    return [{"index": i, "hit": bool(h), "served": bool(s)} for i, h, s in zip(where, hit, served, strict=True)]


def report(pairs: list[Pair], lookups: list[Lookup], latency: dict[str, float], verifier: HitVerifier,
           threshold: float, embedder: Embedder) -> dict[str, Any]:
    scores = np.array([lk.score for lk in lookups if np.isfinite(lk.score)])
    grid = sorted({float(np.quantile(scores, q)) for q in _GRID_QUANTILES}) if len(scores) else []
    labelled = [p for p in pairs if p.label is not None]
    return {
        "pairs": len(pairs), "duplicates": sum(p.label == 1 for p in labelled),
        "non_duplicates": sum(p.label == 0 for p in labelled),
        "embedder": embedder.name, "verifier": verifier.name,
        "operating_point": rates(pairs, lookups, threshold),
        "per_threshold": [rates(pairs, lookups, t) for t in grid],
        "latency": latency,
    }


def _fmt(value: float, spec: str) -> str:
    """``value`` formatted, or "n/a" when it is NaN: a rate over no pairs (a file without
    non-duplicates has no false-hit rate) is undefined, not a number to print as "nan%"."""
    return format(value, spec) if np.isfinite(value) else "n/a"


def render_text(rep: dict[str, Any]) -> str:
    op = rep["operating_point"]
    lines = [
        f"pairs {rep['pairs']} (duplicates {rep['duplicates']}, non-duplicates {rep['non_duplicates']}); "
        f"embedder {rep['embedder']}; verifier {rep['verifier']}",
        f"operating point: threshold {op['threshold']:.4f}  duplicate hit rate {_fmt(op['duplicate_hit_rate'], '.2%')}  "
        f"false-hit rate {_fmt(op['false_hit_rate'], '.3%')} ({op['duplicates_served']} duplicates and "
        f"{op['false_hits']} non-duplicates answered with their text_a's answer)",
        f"served another pair's entry: {op['served_other_entry']} lookups ({op['served_other_entry_identical_text']} "
        "of them an identical cached question); any entry served: duplicates "
        f"{_fmt(op['duplicate_served_any_rate'], '.2%')}, non-duplicates "
        f"{_fmt(op['non_duplicate_served_any_rate'], '.3%')}",
        "",
        f"{'threshold':>10} {'dup hit rate':>13} {'false-hit rate':>15} {'hit rate':>9} {'served any':>11}",
    ]
    for r in rep["per_threshold"]:
        lines.append(f"{r['threshold']:>10.4f} {_fmt(r['duplicate_hit_rate'], '.2%'):>13} "
                     f"{_fmt(r['false_hit_rate'], '.3%'):>15} {_fmt(r['hit_rate'], '.2%'):>9} "
                     f"{_fmt(r['served_rate'], '.2%'):>11}")
    lat = rep["latency"]
    lines += ["", f"lookup latency p50 {lat['lookup_p50_ms']:.2f} ms, p99 {lat['lookup_p99_ms']:.2f} ms "
              f"(+ query embedding p50 {lat['embed_p50_ms']:.2f} ms, p99 {lat['embed_p99_ms']:.2f} ms)"]
    return "\n".join(lines)


def keep_out_of_sample(judged: list[Pair], calibration: list[Pair]) -> tuple[list[Pair], list[int], str | None]:
    """``judged`` without the pairs that share a question (either text, compared by
    folds.question_key) with a ``calibration`` pair, their 0-based positions in ``judged`` (the
    ``--decisions`` file indexes the --pairs file, not the shorter judged list), and a warning
    saying how many were left out: the verifier's difference-word model, IDF and threshold were
    fitted on those questions, so such a pair would be judged in-sample (QQP repeats questions
    across pairs). ``DataError`` when every judged pair shares one."""
    kept, warning = drop_overlap(
        list(enumerate(judged)), calibration, judged_keys=lambda item: _questions(item[1]), fitted_keys=_questions,
        warning="{dropped} of the {total} --pairs share a question with the --calibrate-on pairs and were left "
                "out: judged on the other {kept}",
        refusal="every one of the {total} --pairs shares a question with the --calibrate-on pairs: the verifier "
                "would be judged on the questions it was fitted on; judge on other pairs (`thrifty cache "
                "calibrate` reports cross-validated figures)")
    return [pair for _, pair in kept], [i for i, _ in kept], warning


def _questions(pair: Pair) -> tuple[str, str]:
    return question_key(pair.text_a), question_key(pair.text_b)
