"""Fitting a hit verifier and its threshold on labelled pairs, judged the way the cache is used.

The threshold is not read off pairwise scores: in the cache a new question meets the best of its
top-k neighbours, which for a non-duplicate is often a *closer* near-miss than its own pair.
So calibration replays the cache on the pairs: every text_a cached, every text_b looked up,
and the verifier's score of the best candidate recorded out-of-fold (the scoring model never saw
that query's pair). The threshold is where at most ``margin * max_false_hit_rate`` of the
non-duplicates would be served; the margin leaves room for the variance of a new data set.

Non-duplicates whose question is *identical* to a cached question (another pair's text_a:
popular questions recur) are left out of the threshold: the exact cache answers them before the
semantic cache is asked, and an identical question's answer is not a wrong answer. Counting them
would push the threshold above every reworded duplicate. The CV figures report the false-hit
rate both with and without them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from thrifty.cache.features import FEATURE_NAMES, build_idf, pair_features
from thrifty.cache.pairs import Pair, PairCache, embed_all
from thrifty.cache.verifier import LearnedVerifier, fit_model, threshold_at
from thrifty.embeddings import Embedder
from thrifty.errors import DataError


@dataclass
class Calibration:
    verifier: LearnedVerifier
    folds: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        dhr = [f["duplicate_hit_rate"] for f in self.folds]
        fhr = [f["false_hit_rate"] for f in self.folds]
        return {"threshold": self.verifier.threshold, "cv_folds": self.folds,
                "cv_duplicate_hit_rate": float(np.mean(dhr)) if dhr else None,
                "cv_false_hit_rate": float(np.mean(fhr)) if fhr else None,
                "cv_false_hit_rate_max": float(np.max(fhr)) if fhr else None, "seconds": round(self.seconds, 1)}


@dataclass
class _Replay:
    own: np.ndarray  # (n, d) features of each pair's own (text_a, text_b)
    cand: np.ndarray  # (n, k, d) features of each query's retrieved candidates
    cand_ok: np.ndarray  # (n, k) candidate slot is filled
    is_own: np.ndarray  # (n, k) candidate is the pair's own text_a
    identical: np.ndarray  # (n,) some cached question is character-for-character the query


def _replay(pairs: list[Pair], embedder: Embedder, idf: dict[str, float], top_k: int) -> _Replay:
    def idf_fn(w: str) -> float:
        return idf.get(w, idf["<unk>"])

    cache = PairCache([p.text_a for p in pairs], embedder, top_k=top_k)
    qvecs = embed_all(embedder, [p.text_b for p in pairs])
    slot = {t: i for i, t in enumerate(cache.texts)}
    avecs = cache.index._mat[[slot[p.text_a] for p in pairs]]
    d = len(FEATURE_NAMES) + 1
    n = len(pairs)
    own = np.zeros((n, d))
    cand = np.zeros((n, top_k, d))
    ok = np.zeros((n, top_k), dtype=bool)
    is_own = np.zeros((n, top_k), dtype=bool)
    cached = set(cache.texts)
    identical = np.array([p.text_b in cached for p in pairs], dtype=bool)
    for i, p in enumerate(pairs):
        own_row = [*pair_features(p.text_a, p.text_b, idf_fn), float(avecs[i] @ qvecs[i])]
        own[i] = own_row
        texts, sims = cache.candidates(p.text_b, qvecs[i])
        for j, (t, s) in enumerate(zip(texts, sims, strict=True)):
            ok[i, j] = True
            is_own[i, j] = t == p.text_a
            cand[i, j] = own_row if is_own[i, j] else [*pair_features(t, p.text_b, idf_fn), float(s)]
    return _Replay(own, cand, ok, is_own, identical)


def _best(model: Any, r: _Replay, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best candidate score per query, whether it is the query's own text_a, and its similarity."""
    k, d = r.cand.shape[1], r.cand.shape[2]
    scores = model.predict(r.cand[idx].reshape(-1, d)).reshape(len(idx), k)
    scores = np.where(r.cand_ok[idx], scores, -np.inf)
    j = np.argmax(scores, axis=1)
    rows = np.arange(len(idx))
    return scores[rows, j], r.is_own[idx, j], r.cand[idx, j, -1]


def calibrate(pairs: list[Pair], embedder: Embedder, *, max_false_hit_rate: float = 0.005, model: str = "auto",
              folds: int = 5, margin: float = 1.0, top_k: int = 5, seed: int = 0) -> Calibration:
    """A verifier fitted on ``pairs`` with its threshold for ``max_false_hit_rate``, plus CV figures.

    ``model="auto"`` cross-validates the gradient-boosted verifier and the plain similarity and
    keeps the one that serves more duplicates at the target (a sentence embedder's cosine can beat
    the learned model on the cache protocol; the lexical embedder's cannot).
    """
    from sklearn.model_selection import StratifiedKFold

    t0 = time.perf_counter()
    if any(p.label is None for p in pairs):
        raise DataError("calibration needs a label (0 or 1) on every pair")
    y = np.array([p.label for p in pairs], dtype=int)
    if y.sum() < folds or (1 - y).sum() < folds:
        raise DataError(f"calibration needs at least {folds} duplicates and {folds} non-duplicates")
    idf = build_idf(dict.fromkeys(p.text_a for p in pairs))
    r = _replay(pairs, embedder, idf, top_k)
    split = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(r.own, y))
    target = margin * max_false_hit_rate
    kinds = ["lgbm", "cosine"] if model == "auto" else [model]
    tried = {kind: _cross_validate(kind, r, y, split, target, seed) for kind in kinds}
    best = max(kinds, key=lambda k: float(np.mean([f["duplicate_hit_rate"] for f in tried[k][0]])))
    results, oof_best, oof_sim = tried[best]
    neg = (y == 0) & ~r.identical
    final = fit_model(r.own, y, best, seed)
    threshold = threshold_at(oof_best[neg], target)
    # Candidates far less similar than any the verifier accepted here are not worth scoring: a
    # label-free shortcut that keeps lookups cheap (it can only turn hits into misses).
    accepted = oof_sim[oof_best >= threshold]
    min_similarity = float(accepted.min()) - 0.05 if len(accepted) else -1.0
    info = {"model": best, "pairs": len(pairs), "max_false_hit_rate": max_false_hit_rate, "margin": margin,
            "top_k": top_k, "folds": folds, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cv_duplicate_hit_rate": {k: float(np.mean([f["duplicate_hit_rate"] for f in v[0]]))
                                      for k, v in tried.items()}}
    verifier = LearnedVerifier(final, idf, threshold, embedder.name, info, min_similarity)
    return Calibration(verifier, results, time.perf_counter() - t0)


def _cross_validate(kind: str, r: _Replay, y: np.ndarray, split: list[tuple[np.ndarray, np.ndarray]],
                    target: float, seed: int) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """Per-fold figures at thresholds chosen on the other folds, and the out-of-fold best scores."""
    oof_best = np.zeros(len(y))
    oof_own = np.zeros(len(y), dtype=bool)
    oof_sim = np.zeros(len(y))
    fold_of = np.zeros(len(y), dtype=int)
    for f, (tr, te) in enumerate(split):
        m = fit_model(r.own[tr], y[tr], kind, seed)
        oof_best[te], oof_own[te], oof_sim[te] = _best(m, r, te)
        fold_of[te] = f
    neg = (y == 0) & ~r.identical
    results: list[dict[str, Any]] = []
    for f in range(len(split)):
        te, rest = fold_of == f, fold_of != f
        thr = threshold_at(oof_best[rest & neg], target)
        served = oof_best >= thr
        results.append({"fold": f, "model": kind, "threshold": thr,
                        "duplicate_hit_rate": float(np.mean(served[te & (y == 1)])),
                        "duplicate_own_hit_rate": float(np.mean((served & oof_own)[te & (y == 1)])),
                        "false_hit_rate": float(np.mean(served[te & neg])),
                        "false_hit_rate_with_identical": float(np.mean(served[te & (y == 0)]))})
    return results, oof_best, oof_sim
