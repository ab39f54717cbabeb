"""`thrifty cache eval`: replay the semantic cache on labelled pairs and measure it.

Decisions are made first, from texts only (pairs.lookup_all); labels are read afterwards to
score them, exactly as a judge holding only the labels and the ``--decisions`` file would:
duplicate hit rate = duplicates served from the cache / all duplicates; false-hit rate =
non-duplicates served from the cache / all non-duplicates. Two stricter views are reported
beside them: duplicates served their *own* text_a's answer, and how many false hits were a
cached question identical to text_b (another pair's text_a; the exact cache would serve those).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from thrifty.cache.pairs import Lookup, Pair, PairCache, embed_all, lookup_all
from thrifty.cache.verifier import HitVerifier
from thrifty.embeddings import Embedder

_GRID_QUANTILES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995)


def decide_all(pairs: list[Pair], embedder: Embedder, verifier: HitVerifier, top_k: int = 5,
               ann: str = "none") -> tuple[list[Lookup], dict[str, float]]:
    """Cache every text_a, look up every text_b. Reads no label."""
    cache = PairCache([p.text_a for p in pairs], embedder, top_k=top_k, ann=ann)
    queries = [p.text_b for p in pairs]
    # Query embedding is timed one text at a time (as the gateway does) on a sample.
    sample = queries[: min(500, len(queries))]
    embed_ms = []
    for q in sample:
        t0 = time.perf_counter()
        embedder.embed([q])
        embed_ms.append((time.perf_counter() - t0) * 1000)
    qvecs = embed_all(embedder, queries)
    lookups = lookup_all(cache, queries, qvecs, verifier)
    lat = np.array([lk.latency_ms for lk in lookups])
    latency = {"lookup_p50_ms": float(np.percentile(lat, 50)), "lookup_p99_ms": float(np.percentile(lat, 99)),
               "embed_p50_ms": float(np.percentile(embed_ms, 50)), "embed_p99_ms": float(np.percentile(embed_ms, 99)),
               "cached_texts": float(len(cache.texts))}
    return lookups, latency


def rates(pairs: list[Pair], lookups: list[Lookup], threshold: float) -> dict[str, float]:
    y = np.array([p.label if p.label is not None else -1 for p in pairs])
    served = np.array([lk.score >= threshold for lk in lookups])
    own = np.array([lk.served_text == p.text_a for lk, p in zip(lookups, pairs, strict=True)])
    pos, neg = y == 1, y == 0
    same = np.array([lk.served_text == p.text_b for lk, p in zip(lookups, pairs, strict=True)])

    def mean(x: np.ndarray) -> float:
        return float(np.mean(x)) if len(x) else float("nan")

    return {"threshold": float(threshold),
            "duplicate_hit_rate": mean(served[pos]), "false_hit_rate": mean(served[neg]),
            "duplicate_own_hit_rate": mean((served & own)[pos]), "hit_rate": mean(served),
            "duplicates_served": int(served[pos].sum()), "false_hits": int(served[neg].sum()),
            "false_hits_identical_text": int((served & same)[neg].sum()),
            "false_hit_rate_excluding_identical": mean(served[neg & ~same])}


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


def render_text(rep: dict[str, Any]) -> str:
    op = rep["operating_point"]
    lines = [
        f"pairs {rep['pairs']} (duplicates {rep['duplicates']}, non-duplicates {rep['non_duplicates']}); "
        f"embedder {rep['embedder']}; verifier {rep['verifier']}",
        f"operating point: threshold {op['threshold']:.4f}  duplicate hit rate {op['duplicate_hit_rate']:.2%} "
        f"(own answer {op['duplicate_own_hit_rate']:.2%})  false-hit rate {op['false_hit_rate']:.3%} "
        f"({op['false_hits']} false hits, {op['false_hits_identical_text']} of them an identical cached question)",
        "",
        f"{'threshold':>10} {'dup hit rate':>13} {'own answer':>11} {'false-hit rate':>15} {'hit rate':>9}",
    ]
    for r in rep["per_threshold"]:
        lines.append(f"{r['threshold']:>10.4f} {r['duplicate_hit_rate']:>13.2%} {r['duplicate_own_hit_rate']:>11.2%} "
                     f"{r['false_hit_rate']:>15.3%} {r['hit_rate']:>9.2%}")
    lat = rep["latency"]
    lines += ["", f"lookup latency p50 {lat['lookup_p50_ms']:.2f} ms, p99 {lat['lookup_p99_ms']:.2f} ms "
              f"(+ query embedding p50 {lat['embed_p50_ms']:.2f} ms, p99 {lat['embed_p99_ms']:.2f} ms)"]
    return "\n".join(lines)
