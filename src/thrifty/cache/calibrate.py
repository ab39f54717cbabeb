"""Fitting a hit verifier and its threshold on labelled pairs, judged the way the cache is used.

A labelled pair says whether one cached question (text_a) may answer another (text_b). So the
threshold is set where the verifier accepts at most ``margin * max_false_hit_rate`` of the
non-duplicate pairs, scored out-of-fold (the scoring model never saw that pair): the verifier's
own false-acceptance rate, which holds for any candidate it is shown, not only a pair's own.
With ``confidence`` (default 0.9) that rate is bounded rather than matched: the threshold is where
its one-sided Clopper-Pearson upper bound meets the target (verifier.allowed_false_hits).

The cross-validation figures then replay the cache on the held-out fold: every text_a cached,
every text_b looked up among its top-k neighbours. A pair's hit is text_a retrieved and verified
for text_b, which its label judges (see evaluation.py); lookups that served another pair's entry
are counted apart.

Pairs and candidates that a hard veto separates (vetoes.py) score -inf here as they do in the
cache, so thresholds and figures are those of the scores the cache serves; they still count in
the false-hit rate's denominator. The scorers are fitted on every pair.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from thrifty.cache.alignment import ALIGN_NAMES, alignment_features, piece_idf
from thrifty.cache.config import DEFAULT_CONFIDENCE, DEFAULT_MAX_FALSE_HIT_RATE, DEFAULT_TOP_K
from thrifty.cache.density import DENSITY_NAMES
from thrifty.cache.features import FEATURE_NAMES, build_idf, pair_features
from thrifty.cache.folds import group_split, question_groups
from thrifty.cache.pairs import Pair, PairCache, embed_with_tokens
from thrifty.cache.verifier import LearnedVerifier, allowed_false_hits, apply_gate, fit_model, threshold_at
from thrifty.cache.vetoes import VETOES_VERSION, vetoed
from thrifty.cache.wordmodel import WordModel, diff_tokens, fit_word_model, oof_word_scores
from thrifty.embeddings import Embedder
from thrifty.embeddings.base import TokenEmbedder
from thrifty.errors import DataError

# What `--model` accepts. "auto" cross-validates AUTO_MODELS and keeps the one that accepts the most
# duplicates at the target. "+density" adds the neighbourhood features of density.py, gated by the
# plain scorer: ungated, it served more cached entries of *other* questions than the plain one, and
# those included wrong answers on templated questions ("rehab center in Union County IA" answered
# with the one for Marshall County AL); gated, it served about as many as the plain one and none
# of those (docs/caching.md).
MODELS = ("auto", "lgbm+density", "lgbm", "logreg+density", "logreg", "cosine")
AUTO_MODELS = ("lgbm+density", "lgbm", "cosine")
# A "+density" verifier only scores candidates whose plain-verifier score reaches the plain
# verifier's threshold for this false-acceptance rate (verifier.apply_gate).
GATE_RATE = 0.01


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
    own: np.ndarray  # (n, d) features of each pair's own (text_a, text_b), similarity last
    cand: np.ndarray  # (n, k, d) features of each query's retrieved candidates
    cand_ok: np.ndarray  # (n, k) candidate slot is filled
    is_own: np.ndarray  # (n, k) candidate is the pair's own text_a
    identical: np.ndarray  # (n,) some cached question is character-for-character the query
    own_veto: np.ndarray  # (n,) a hard veto separates the pair (vetoes.py): never served
    cand_veto: np.ndarray  # (n, k) ... each query from that retrieved candidate
    own_tokens: list[list[str]]  # difference-word model input of each own pair
    cand_tokens: list[list[list[str]]]  # ... and of each candidate (empty list for empty slots)
    # Difference-word models by training rows: the learned scorers with and without the
    # neighbourhood features share them instead of fitting each twice.
    words: dict[bytes, tuple[WordModel, np.ndarray]] = field(default_factory=dict)
    # Fitted scorers by (kind, training rows): a plain scorer fitted in its own cross-validation
    # is reused as the gate of the "+density" scorer on the same rows.
    fits: dict[tuple[str, bytes], _Fitted] = field(default_factory=dict)
    # Word-piece IDF of the alignment columns (None: the embedder has no token vectors, no columns).
    align_idf: dict[str, float] | None = None
    # Per pair, its connected component of shared questions (folds.question_groups): every fold
    # here, outer and inner, keeps a group whole.
    groups: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def plain(self) -> int:
        """How many columns precede the neighbourhood ones: pair features and alignment features."""
        return len(FEATURE_NAMES) + (len(ALIGN_NAMES) if self.align_idf is not None else 0)


def _replay(pairs: list[Pair], embedder: Embedder, idf: dict[str, float], top_k: int, density: bool) -> _Replay:
    """Every pair's features as the cache would see them; the neighbourhood columns stay 0 unless a
    scorer being fitted reads them (they cost a product with the density sample per pair). With an
    embedder that gives token vectors, the alignment columns follow the pair features."""
    def idf_fn(w: str) -> float:
        return idf.get(w, idf["<unk>"])

    align = isinstance(embedder, TokenEmbedder)
    cache = PairCache([p.text_a for p in pairs], embedder, top_k=top_k, tokens=align)
    qvecs, qtokens = embed_with_tokens(embedder, [p.text_b for p in pairs], align)
    tokens = {**cache.tokens, **qtokens}
    align_idf = piece_idf(cache.tokens[t].tokens for t in cache.texts) if align else None

    def aligned(a: str, b: str) -> list[float]:
        return alignment_features(tokens[a], tokens[b], align_idf) if align_idf is not None else []

    slot = {t: i for i, t in enumerate(cache.texts)}
    avecs = cache.index.vectors(np.array([slot[p.text_a] for p in pairs]))
    sample = cache.index.density() if density else None
    d = len(FEATURE_NAMES) + (len(ALIGN_NAMES) if align else 0) + len(DENSITY_NAMES) + 1
    n = len(pairs)
    own = np.zeros((n, d))
    cand = np.zeros((n, top_k, d))
    ok = np.zeros((n, top_k), dtype=bool)
    is_own = np.zeros((n, top_k), dtype=bool)
    own_veto = np.array([vetoed(p.text_a, p.text_b) for p in pairs], dtype=bool)
    cand_veto = np.zeros((n, top_k), dtype=bool)
    cached = set(cache.texts)
    identical = np.array([p.text_b in cached for p in pairs], dtype=bool)
    own_tokens = [diff_tokens(p.text_a, p.text_b) for p in pairs]
    cand_tokens: list[list[list[str]]] = []
    for i, p in enumerate(pairs):
        pos, sims = cache.index.search(qvecs[i], top_k)
        texts = [cache.texts[int(q)] for q in pos]
        own_sim = float(avecs[i] @ qvecs[i])
        # Neighbourhoods of the own text_a and of every retrieved candidate, as a lookup sees them.
        dens = np.zeros((len(texts) + 1, len(DENSITY_NAMES))) if sample is None else sample.features(
            qvecs[i], [p.text_a, *texts], np.vstack([avecs[i][None, :], cache.index.vectors(pos)]),
            np.array([own_sim, *sims]))
        own_row = [*pair_features(p.text_a, p.text_b, idf_fn), *aligned(p.text_a, p.text_b), *dens[0], own_sim]
        own[i] = own_row
        toks: list[list[str]] = [[] for _ in range(top_k)]
        for j, (t, s) in enumerate(zip(texts, sims, strict=True)):
            ok[i, j] = True
            is_own[i, j] = t == p.text_a
            cand_veto[i, j] = own_veto[i] if is_own[i, j] else vetoed(t, p.text_b)
            cand[i, j] = own_row if is_own[i, j] else [*pair_features(t, p.text_b, idf_fn), *aligned(t, p.text_b),
                                                       *dens[j + 1], float(s)]
            toks[j] = own_tokens[i] if is_own[i, j] else diff_tokens(t, p.text_b)
        cand_tokens.append(toks)
    return _Replay(own, cand, ok, is_own, identical, own_veto, cand_veto, own_tokens, cand_tokens,
                   align_idf=align_idf)


def _with_word_scores(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Insert the difference-word score as the second-to-last column (the similarity stays last)."""
    return np.concatenate([x[..., :-1], w[..., None], x[..., -1:]], axis=-1)


def _columns(r: _Replay, density: bool) -> np.ndarray:
    """The replay columns a scorer reads: all of them, or all but the neighbourhood features."""
    nf, nd = r.plain, len(DENSITY_NAMES)
    return np.arange(nf + nd + 1) if density else np.r_[np.arange(nf), nf + nd]


@dataclass
class _Fitted:
    model: Any
    words: WordModel | None
    density: bool = False
    gate: _Fitted | None = None
    gate_threshold: float = 0.0

    def predict_own(self, r: _Replay, idx: np.ndarray) -> np.ndarray:
        """Scores of each pair's own (text_a, text_b); -inf where a hard veto separates them, as
        the cache serves them (semantic.py)."""
        s = np.asarray(self.model.predict(self.own_rows(r, idx)), dtype=np.float64)
        if self.gate is not None:
            s = apply_gate(s, self.gate.predict_own(r, idx), self.gate_threshold)
        return np.where(r.own_veto[idx], -np.inf, s)

    def predict_cand(self, r: _Replay, idx: np.ndarray) -> np.ndarray:
        """Scores of each query's retrieved candidates, (len(idx), k); empty and vetoed slots -inf."""
        cand = self.cand_rows(r, idx)
        k, d = cand.shape[1], cand.shape[2]
        s = np.asarray(self.model.predict(cand.reshape(-1, d)), dtype=np.float64).reshape(len(idx), k)
        if self.gate is not None:
            s = apply_gate(s, self.gate.predict_cand(r, idx), self.gate_threshold)
        return np.where(r.cand_ok[idx] & ~r.cand_veto[idx], s, -np.inf)

    def own_rows(self, r: _Replay, idx: np.ndarray) -> np.ndarray:
        x = r.own[idx][:, _columns(r, self.density)]
        if self.words is None:
            return x
        return _with_word_scores(x, self.words.scores([r.own_tokens[i] for i in idx]))

    def cand_rows(self, r: _Replay, idx: np.ndarray) -> np.ndarray:
        x = r.cand[idx][:, :, _columns(r, self.density)]
        if self.words is None:
            return x
        k = r.cand.shape[1]
        w = self.words.scores([r.cand_tokens[i][j] for i in idx for j in range(k)]).reshape(len(idx), k)
        return _with_word_scores(x, w)


def _fit(kind: str, r: _Replay, y: np.ndarray, idx: np.ndarray, seed: int,
         gate_threshold: float | None = None) -> _Fitted:
    """The scorer fitted on pairs ``idx``. A learned scorer also gets the difference-word model,
    trained on the same pairs, whose column it learns from out-of-fold scores; ``+density`` adds
    the neighbourhood features and is gated by the plain scorer fitted on the same pairs at
    ``gate_threshold``."""
    base, _, extra = kind.partition("+")
    memo = idx.tobytes() + seed.to_bytes(8, "little", signed=True)
    if (kind, memo) in r.fits and gate_threshold is None:
        return r.fits[(kind, memo)]
    if base == "cosine":
        fitted = _Fitted(fit_model(r.own[idx], y[idx], base, seed), None)
    else:
        density = extra == "density"
        if memo not in r.words:
            toks = [r.own_tokens[i] for i in idx]
            r.words[memo] = (fit_word_model(toks, y[idx]),
                               oof_word_scores(toks, y[idx], groups=r.groups[idx], seed=seed))
        words, oof = r.words[memo]
        x = _with_word_scores(r.own[idx][:, _columns(r, density)], oof)
        fitted = _Fitted(fit_model(x, y[idx], base, seed), words, density)
        if density:
            if gate_threshold is None:
                raise ValueError("a +density scorer needs its gate threshold")
            fitted.gate, fitted.gate_threshold = _fit(base, r, y, idx, seed), gate_threshold
            return fitted
    r.fits[(kind, memo)] = fitted
    return fitted


def _best(fitted: _Fitted, r: _Replay, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query: the best candidate's score, the own text_a's score (-inf if not retrieved), and
    the best candidate's similarity."""
    scores = fitted.predict_cand(r, idx)
    j = np.argmax(scores, axis=1)
    rows = np.arange(len(idx))
    own = np.where(r.is_own[idx], scores, -np.inf).max(axis=1)
    return scores[rows, j], own, r.cand[idx, j, -1]


def calibrate(pairs: list[Pair], embedder: Embedder, *, max_false_hit_rate: float = DEFAULT_MAX_FALSE_HIT_RATE, model: str = "auto",
              folds: int = 5, margin: float = 1.0, top_k: int = DEFAULT_TOP_K, seed: int = 0,
              confidence: float | None = DEFAULT_CONFIDENCE,
              progress: Callable[[str], None] | None = None) -> Calibration:
    """A verifier fitted on ``pairs`` with its threshold for ``max_false_hit_rate``, plus CV figures.

    ``model="auto"`` cross-validates the gradient-boosted verifier and the plain similarity and
    keeps the one that serves more duplicates at the target under cross-validation.
    """
    t0 = time.perf_counter()
    if any(p.label is None for p in pairs):
        raise DataError("calibration needs a label (0 or 1) on every pair")
    y = np.array([p.label for p in pairs], dtype=int)
    if y.sum() < folds or (1 - y).sum() < folds:
        raise DataError(f"calibration needs at least {folds} duplicates and {folds} non-duplicates")
    idf = build_idf(dict.fromkeys(p.text_a for p in pairs))
    say = progress or (lambda _msg: None)  # a sentence model takes minutes here: say what is running
    say(f"calibrate: caching {len(pairs):,} text_a and looking up each text_b (embedder {embedder.name})")
    if model not in MODELS:
        raise DataError(f"unknown verifier model {model!r} (expected one of {', '.join(MODELS)})")
    kinds = list(AUTO_MODELS) if model == "auto" else [model]
    r = _replay(pairs, embedder, idf, top_k, density=any(k.endswith("+density") for k in kinds))
    # Folds of whole question groups: Quora pairs repeat questions, and a verifier (its threshold,
    # its difference-word model) must not be judged on a question it was fitted on, or the chosen
    # threshold is optimistic and serves more false hits than the target in production.
    r.groups = question_groups(pairs)
    try:
        split = group_split(r.groups, y, folds, seed)
    except ValueError as exc:
        raise DataError(f"calibration needs {folds} folds of distinct questions: {exc}") from None
    if r.own_veto[y == 0].all():
        # Then no non-duplicate reaches the verifier and the threshold has nothing to sit above:
        # it came out as the most negative float, and the file served every candidate no veto
        # caught (verifier.threshold_at). Refused, saying what the pairs lack.
        raise DataError(f"every one of the {int((1 - y).sum()):,} non-duplicates differs from its text_a in "
                        "something a hard veto catches (a number, a name, a negation, a non-ASCII word...), so "
                        "they show nothing about the questions the verifier must turn away: add non-duplicates "
                        "the vetoes let through, such as different questions about the same order or product "
                        "(docs/caching.md, \"Calibrating thresholds\")")
    target = margin * max_false_hit_rate
    negatives = int((1 - y).sum())
    if confidence and allowed_false_hits(negatives, target, confidence) < 0:
        say(f"calibrate: note: {negatives:,} non-duplicates cannot show a false-hit rate of {target:.3%} with "
            f"confidence {confidence}: the threshold sits above every non-duplicate (more pairs, or "
            "--confidence 0, allow more hits)")
    # A "+density" scorer's gate is its plain scorer: cross-validate that first (its out-of-fold
    # scores set the gate thresholds), also when only the "+density" one was asked for.
    gates = [k.partition("+")[0] for k in kinds if k.endswith("+density")]
    tried: dict[str, tuple[list[dict[str, Any]], np.ndarray, np.ndarray, np.ndarray]] = {}
    for kind in dict.fromkeys([*gates, *kinds]):
        say(f"calibrate: {folds}-fold cross-validation of the {kind} verifier")
        gate_oof = tried[kind.partition("+")[0]][1] if kind.endswith("+density") else None
        tried[kind] = _cross_validate(kind, r, y, split, target, seed, gate_oof, confidence)
    # Chosen on the pooled out-of-fold scores (duplicates accepted at the threshold that meets the
    # target over all pairs): the per-fold figures add the noise of moving a threshold between
    # folds, which flipped the choice between two scorers of near-equal per-fold means.
    pooled = {k: _pooled_hit_rate(v[1], y, target, confidence) for k, v in tried.items()}
    best = max(kinds, key=lambda k: pooled[k])
    results, oof_pair, oof_best, oof_sim = tried[best]
    say(f"calibrate: fitting the {best} verifier on all {len(pairs):,} pairs")
    gate_threshold = None
    if best.endswith("+density"):
        gate_threshold = threshold_at(tried[best.partition("+")[0]][1][y == 0], GATE_RATE)
    final = _fit(best, r, y, np.arange(len(y)), seed, gate_threshold)
    threshold = threshold_at(oof_pair[y == 0], target, confidence)
    # Candidates far less similar than any the verifier accepted here are not worth scoring: a
    # label-free shortcut that keeps lookups cheap (it can only turn hits into misses).
    accepted = np.concatenate([oof_sim[oof_best >= threshold], r.own[oof_pair >= threshold, -1]])
    min_similarity = float(accepted.min()) - 0.05 if len(accepted) else -1.0
    info = {"model": best, "pairs": len(pairs), "max_false_hit_rate": max_false_hit_rate, "margin": margin,
            "confidence": confidence,
            "top_k": top_k, "folds": folds, "hard_vetoes": VETOES_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cv_duplicate_hit_rate": {k: float(np.mean([f["duplicate_hit_rate"] for f in v[0]]))
                                      for k, v in tried.items()},
            "cv_pooled_duplicate_hit_rate": pooled}
    if final.gate is not None:
        info["gate"] = {"model": best.partition("+")[0], "false_acceptance_rate": GATE_RATE}
    verifier = LearnedVerifier(final.model, idf, threshold, embedder.name, info, min_similarity, final.words,
                               final.density, final.gate.model if final.gate else None, final.gate_threshold,
                               r.align_idf if final.words is not None else None)
    return Calibration(verifier, results, time.perf_counter() - t0)


def _pooled_hit_rate(oof_pair: np.ndarray, y: np.ndarray, target: float, confidence: float | None) -> float:
    """Share of duplicates whose out-of-fold pair score clears the threshold set on all non-duplicates."""
    return float(np.mean(oof_pair[y == 1] >= threshold_at(oof_pair[y == 0], target, confidence)))


def _cross_validate(kind: str, r: _Replay, y: np.ndarray, split: list[tuple[np.ndarray, np.ndarray]],
                    target: float, seed: int, gate_oof: np.ndarray | None = None, confidence: float | None = None,
                    ) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray, np.ndarray]:
    """Per-fold figures at thresholds chosen on the other folds; out-of-fold pair and best-candidate
    scores. ``gate_oof``: the gate scorer's out-of-fold pair scores (for a "+density" kind)."""
    oof_pair = np.zeros(len(y))
    oof_best = np.zeros(len(y))
    oof_own = np.zeros(len(y))  # the own text_a's score in the replay (-inf: not retrieved)
    oof_sim = np.zeros(len(y))
    fold_of = np.zeros(len(y), dtype=int)
    for f, (_, te) in enumerate(split):
        fold_of[te] = f
    pos, neg = y == 1, y == 0
    for f, (tr, te) in enumerate(split):
        # The gate threshold from the gate's out-of-fold scores on the training folds only.
        gate_threshold = None if gate_oof is None else threshold_at(gate_oof[(fold_of != f) & neg], GATE_RATE)
        m = _fit(kind, r, y, tr, seed, gate_threshold)
        oof_pair[te] = m.predict_own(r, te)
        oof_best[te], oof_own[te], oof_sim[te] = _best(m, r, te)
    results: list[dict[str, Any]] = []
    for f in range(len(split)):
        te, rest = fold_of == f, fold_of != f
        thr = threshold_at(oof_pair[rest & neg], target, confidence)
        served = oof_best >= thr
        hit = oof_own >= thr
        results.append({"fold": f, "model": kind, "threshold": thr,
                        "duplicate_hit_rate": float(np.mean(hit[te & pos])),
                        "false_hit_rate": float(np.mean(hit[te & neg])),
                        "duplicate_served_any_rate": float(np.mean(served[te & pos])),
                        "non_duplicate_served_any_rate": float(np.mean(served[te & neg & ~r.identical])),
                        "pairwise_duplicate_hit_rate": float(np.mean(oof_pair[te & pos] >= thr)),
                        "pairwise_false_hit_rate": float(np.mean(oof_pair[te & neg] >= thr))})
    return results, oof_pair, oof_best, oof_sim
