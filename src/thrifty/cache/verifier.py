"""Hit verifiers: decide whether a cached question's answer may be served for a new question.

- ``RuleVerifier``: the similarity, 0 for a pair where each question lost a content word the other
  gained (``substituted``). Needs no training; the default when no calibrated verifier is
  configured.
- ``LearnedVerifier``: a calibrated scorer with a threshold for a target false-hit rate
  (calibrate.py). The scorer is a gradient-boosted model (LightGBM; logistic regression without
  the ``gbm`` extra) over the pair features of features.py, the token-alignment features of
  alignment.py (sentence embedders only), the neighbourhood features of density.py (``+density``),
  the difference-word model's score (wordmodel.py) and the embedding similarity, or the
  similarity alone (``cosine``) when that measured better on the calibration pairs, as it can with
  a sentence embedder.

No verifier applies the hard vetoes of vetoes.py (numbers, operators, non-ASCII words, quoted
text, code, negation, opposite words, names...): the semantic lookup does, once, before any
verifier sees a candidate (``SemanticCache.scored``), so a vetoed candidate is never served
whatever the verifier; calibration applies them too and sets thresholds on the vetoed scores.

A verifier file is JSON (model text, IDF table, threshold, provenance): loading it runs no code,
unlike a pickle.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from thrifty.artifacts import read_artifact, write_artifact
from thrifty.cache.alignment import ALIGN_NAMES, Tokens, alignment_features
from thrifty.cache.density import DENSITY_NAMES
from thrifty.cache.features import FEATURE_NAMES, build_idf, pair_features
from thrifty.cache.vetoes import content_stems
from thrifty.cache.wordmodel import WordModel
from thrifty.errors import ConfigError

FORMAT = "thrifty-cache-verifier/1"

# A verifier's neighbourhood features: one row of DENSITY_NAMES per candidate, or a function that
# returns the rows of the candidates a boolean mask selects (computed only when asked for).
Density = np.ndarray | Callable[[np.ndarray], np.ndarray]


class HitVerifier(Protocol):
    threshold: float

    @property
    def name(self) -> str: ...

    @property
    def uses_density(self) -> bool:
        """Whether ``score`` wants the candidates' neighbourhood features (density.py)."""
        ...

    @property
    def uses_tokens(self) -> bool:
        """Whether ``score`` wants the texts' token vectors (alignment.py)."""
        ...

    def wants(self, sims: np.ndarray) -> np.ndarray:
        """Which candidates ``score`` will score (the others score -inf unseen): the lookup fetches
        token vectors for these only."""
        ...

    def score(self, query: str, candidates: list[str], sims: np.ndarray,
              density: Density | None = None, tokens: Tokens | None = None) -> np.ndarray:
        """One score per candidate, higher = more likely the same question. ``density``: the
        candidates' neighbourhood features (see ``Density``), for verifiers that use them;
        ``tokens``: the token vectors of given texts, for verifiers with alignment features."""
        ...


def substituted(a: str, b: str) -> bool:
    """Each question has a content word the other lacks: a detail was changed, not reworded
    ("...switch within a year..." / "...within a month..."). In a long question one changed word
    barely moves the cosine (0.97 with the lexical embedder for a 45-word question), so the
    similarity alone served the other's answer. Words added on one side only ("the capital city
    of France") and stop words do not count. Words are counted: "several years ... within a year"
    / "... within a month" lost a "year" even though the word is still there."""
    wa, wb = Counter(content_stems(a)), Counter(content_stems(b))
    return bool(wa - wb) and bool(wb - wa)


@dataclass
class RuleVerifier:
    """Cosine similarity, for a semantic cache with no calibrated verifier file; a changed word
    (``substituted``) rules a candidate out, as no learned score weighs it. The hard vetoes are
    the lookup's (semantic.py): candidates they rule out never reach ``score``."""

    threshold: float = 0.95

    @classmethod
    def for_embedder(cls, embedder_name: str) -> RuleVerifier:
        """A threshold that keeps false hits rare with this embedder's similarity scale. Measured
        with `thrifty cache eval --pairs pairs_dev.jsonl` (QQP dev pairs): the lexical similarity
        serves 2.3% false hits at 0.90 and 0.39% at 0.94; a sentence model's cosine needs ~0.98."""
        return cls(0.95 if embedder_name.startswith("lexical") else 0.98)

    @property
    def name(self) -> str:
        return "rules"

    @property
    def uses_density(self) -> bool:
        return False

    @property
    def uses_tokens(self) -> bool:
        return False

    def wants(self, sims: np.ndarray) -> np.ndarray:
        return np.ones(len(sims), dtype=bool)

    def score(self, query: str, candidates: list[str], sims: np.ndarray,
              density: Density | None = None, tokens: Tokens | None = None) -> np.ndarray:
        out = np.asarray(sims, dtype=np.float64).copy()
        for i, cand in enumerate(candidates):
            if substituted(query, cand):
                out[i] = 0.0
        return out


class _Model(Protocol):
    def predict(self, x: np.ndarray) -> np.ndarray: ...

    def dump(self) -> dict[str, Any]: ...


class _Lgbm:
    def __init__(self, booster: Any) -> None:
        self.booster = booster

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(x, num_threads=1), dtype=np.float64)

    def dump(self) -> dict[str, Any]:
        return {"kind": "lgbm", "model": self.booster.model_to_string()}


class _Logistic:
    def __init__(self, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: float) -> None:
        self.mean, self.scale, self.coef, self.intercept = mean, scale, coef, intercept

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale) @ self.coef + self.intercept
        return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)

    def dump(self) -> dict[str, Any]:
        return {"kind": "logreg", "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "coef": self.coef.tolist(), "intercept": self.intercept}


class _Cosine:
    """The embedding similarity (the last feature) as the score: nothing to fit."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x[:, -1], dtype=np.float64)

    def dump(self) -> dict[str, Any]:
        return {"kind": "cosine"}


def _load_model(data: dict[str, Any]) -> _Model:
    kind = data.get("kind")
    if kind == "cosine":
        return _Cosine()
    if kind == "lgbm":
        try:
            import lightgbm
        except ImportError:
            raise ConfigError("this verifier needs LightGBM: pip install 'thrifty[gbm]'") from None
        return _Lgbm(lightgbm.Booster(model_str=data["model"]))
    if kind == "logreg":
        return _Logistic(np.asarray(data["mean"]), np.asarray(data["scale"]), np.asarray(data["coef"]),
                         float(data["intercept"]))
    raise ConfigError(f"unknown verifier model kind {kind!r}")


@dataclass
class LearnedVerifier:
    model: _Model
    idf: dict[str, float]
    threshold: float
    embedder: str  # the embedder whose similarity the model was fitted on
    info: dict[str, Any] = field(default_factory=dict)
    # Candidates below this similarity are rejected unscored (calibrate.py sets it below every
    # candidate the verifier accepted in calibration), so most lookups skip feature extraction.
    min_similarity: float = -1.0
    # The difference-word model whose score is a feature (None: a verifier without that column).
    words: WordModel | None = None
    # Whether the neighbourhood features of density.py are columns of the model.
    density: bool = False
    # A neighbourhood verifier is gated by the plain verifier fitted on the same pairs: a candidate
    # whose plain score is below ``gate_threshold`` scores 0 (see ``apply_gate``).
    gate: _Model | None = None
    gate_threshold: float = 0.0
    # Word-piece IDF of the token-alignment features (alignment.py); None: no such columns.
    align_idf: dict[str, float] | None = None

    @property
    def name(self) -> str:
        return f"learned:{self.info.get('model', 'lgbm')}"

    @property
    def feature_names(self) -> list[str]:
        return feature_names(self.words is not None, self.density, self.align_idf is not None)

    @property
    def uses_density(self) -> bool:
        return self.density

    @property
    def uses_tokens(self) -> bool:
        return self.align_idf is not None

    def wants(self, sims: np.ndarray) -> np.ndarray:
        """Which candidates ``score`` will score (the others are rejected unscored)."""
        return np.asarray(sims) >= self.min_similarity

    def _idf(self, w: str) -> float:
        return self.idf.get(w, self.idf["<unk>"])

    def _plain_rows(self, query: str, candidates: list[str], sims: np.ndarray,
                    tokens: Tokens | None) -> np.ndarray:
        """Rows of every column but the neighbourhood ones: pair features, alignment features,
        word score, similarity."""
        words, idf = self.words, self.align_idf
        align: list[list[float]] = [[] for _ in candidates]
        if idf is not None:
            if tokens is None:
                raise ValueError("this verifier needs the texts' token vectors")
            tv = tokens([query, *candidates])
            align = [alignment_features(t, tv[0], idf) for t in tv[1:]]
        rows = [[*pair_features(c, query, self._idf), *al, *([words.score(c, query)] if words else []), float(s)]
                for c, s, al in zip(candidates, sims, align, strict=True)]
        width = len(feature_names(words is not None, False, idf is not None))
        return np.asarray(rows, dtype=np.float64).reshape(len(candidates), width)

    def score(self, query: str, candidates: list[str], sims: np.ndarray,
              density: Density | None = None, tokens: Tokens | None = None) -> np.ndarray:
        """Scores per candidate (-inf: below ``min_similarity``, unscored). A gated neighbourhood
        verifier asks ``density`` only for the candidates its gate lets through, so most lookups
        never compute a neighbourhood (each costs a product with the whole density sample)."""
        out = np.full(len(candidates), -np.inf)
        keep = np.flatnonzero(self.wants(sims))
        if not len(keep):
            return out
        plain = self._plain_rows(query, [candidates[i] for i in keep], np.asarray(sims)[keep], tokens)
        if not self.density:
            out[keep] = self.model.predict(plain)
            return out
        if density is None:
            raise ValueError("this verifier needs the candidates' density features")
        if self.gate is not None:
            passed = self.gate.predict(plain) >= self.gate_threshold
            out[keep[~passed]] = 0.0  # what apply_gate gives them
            keep, plain = keep[passed], plain[passed]
            if not len(keep):
                return out
        if callable(density):
            mask = np.zeros(len(candidates), dtype=bool)
            mask[keep] = True
            dens = np.asarray(density(mask))
        else:
            dens = np.asarray(density)[keep]
        nf = len(FEATURE_NAMES) + (len(ALIGN_NAMES) if self.align_idf is not None else 0)
        out[keep] = self.model.predict(np.concatenate([plain[:, :nf], dens, plain[:, nf:]], axis=1))
        return out

    def save(self, path: str | Path) -> None:
        doc = {"format": FORMAT, "threshold": self.threshold, "min_similarity": self.min_similarity,
               "embedder": self.embedder,
               "features": self.feature_names, "info": self.info, "idf": self.idf,
               "model": self.model.dump()}
        if self.words is not None:
            doc["words"] = self.words.dump()
        if self.density:
            doc["density"] = True
        if self.gate is not None:
            doc["gate"] = {"model": self.gate.dump(), "threshold": self.gate_threshold}
        if self.align_idf is not None:
            doc["alignment"] = {"idf": self.align_idf}
        write_artifact(path, doc)

    @classmethod
    def load(cls, path: str | Path) -> LearnedVerifier:
        doc = read_artifact(path, FORMAT, "cache verifier")
        has_words = isinstance(doc.get("words"), dict)
        has_density = bool(doc.get("density", False))
        align = doc.get("alignment")
        if align is not None and not (isinstance(align, dict) and isinstance(align.get("idf"), dict)):
            raise ConfigError(f"{path}: malformed alignment table; re-run `thrifty cache calibrate`")
        if doc.get("features") != feature_names(has_words, has_density, align is not None):
            raise ConfigError(f"{path} was fitted on other features; re-run `thrifty cache calibrate`")
        gate = doc.get("gate")
        if gate is not None and not (isinstance(gate, dict) and isinstance(gate.get("model"), dict)):
            raise ConfigError(f"{path}: malformed gate; re-run `thrifty cache calibrate`")
        return cls(_load_model(doc["model"]), {str(k): float(v) for k, v in doc["idf"].items()},
                   float(doc["threshold"]), str(doc.get("embedder", "")), dict(doc.get("info") or {}),
                   float(doc.get("min_similarity", -1.0)), WordModel.from_dump(doc["words"]) if has_words else None,
                   has_density, _load_model(gate["model"]) if gate else None,
                   float(gate["threshold"]) if gate else 0.0,
                   {str(k): float(v) for k, v in align["idf"].items()} if align else None)


def apply_gate(scores: np.ndarray, gate_scores: np.ndarray, gate_threshold: float) -> np.ndarray:
    """``scores`` where the gate's score reaches ``gate_threshold``, else 0 (never served).

    Why a gate: the neighbourhood verifier alone served more cached answers of *other* questions
    than the plain one, some of them wrong (templated questions differing only in a county or
    town); it now only re-ranks candidates the plain verifier finds plausible (its score at a
    1% false-acceptance rate), which on QQP also served more duplicates (docs/caching.md)."""
    return np.where(np.asarray(gate_scores) >= gate_threshold, np.asarray(scores, dtype=np.float64), 0.0)


def feature_names(with_words: bool, with_density: bool = False, with_align: bool = False) -> list[str]:
    """The verifier's columns: pair features, the token-alignment, neighbourhood and difference-word
    columns if any, the similarity last."""
    return [*FEATURE_NAMES, *(ALIGN_NAMES if with_align else []), *(DENSITY_NAMES if with_density else []),
            *(["word_model"] if with_words else []), "cosine"]


def fit_model(x: np.ndarray, y: np.ndarray, kind: str = "lgbm", seed: int = 0) -> _Model:
    """A fitted scorer for feature rows ``x`` and labels ``y`` (1 = same question)."""
    if kind == "lgbm":
        try:
            import lightgbm
        except ImportError:
            kind = "logreg"
        else:
            # Settings measured on the QQP dev pairs. One thread: OpenMP threads spinning against
            # each other on a busy 2-core machine made a fit 20x slower.
            clf = lightgbm.LGBMClassifier(
                n_estimators=250, learning_rate=0.05, num_leaves=31, min_child_samples=20, subsample=0.8,
                subsample_freq=1, colsample_bytree=0.5, reg_lambda=1.0, verbose=-1, n_jobs=1, random_state=seed,
            )
            clf.fit(x, y)
            return _Lgbm(clf.booster_)
    if kind == "cosine":
        return _Cosine()
    if kind == "logreg":
        from sklearn.linear_model import LogisticRegression

        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale == 0] = 1.0
        lr = LogisticRegression(C=1.0, max_iter=2000).fit((x - mean) / scale, y)
        return _Logistic(mean, scale, lr.coef_[0].astype(np.float64), float(lr.intercept_[0]))
    raise ConfigError(f"unknown verifier model {kind!r} (expected auto, lgbm, logreg or cosine)")


def threshold_at(neg_scores: np.ndarray, max_rate: float, confidence: float | None = None) -> float:
    """The smallest threshold such that at most ``max_rate`` of ``neg_scores`` reach it; with
    ``confidence``, such that the rate is at most ``max_rate`` with that confidence (see
    ``allowed_false_hits``), which leaves room for the noise of estimating it on a sample.

    Serving rule: score >= threshold. Ties at the threshold count as served, so the returned
    value sits just above the (k+1)-th highest negative score.
    """
    s = np.sort(np.asarray(neg_scores, dtype=np.float64))[::-1]
    if len(s) == 0:
        return 0.0
    k = math.floor(max_rate * len(s)) if confidence is None else allowed_false_hits(len(s), max_rate, confidence)
    # Vetoed non-duplicates score -inf (calibrate.py): a hard veto turns them away, not the
    # threshold, so they say nothing about where it must sit. Placed among them, the threshold
    # came out as the most negative float and served every candidate no veto caught (a team's near
    # misses all differing in an order number, a product or a negation: "Is X waterproof?" got the
    # answer cached for "How do I return X?"). So it stays above a scored non-duplicate, and with
    # none scored no score is known to be safe: +inf, nothing passes (calibrate() refuses that).
    finite = int(np.isfinite(s).sum())
    if finite == 0:
        return math.inf
    if k < 0:  # not even one acceptance is allowed: above every negative
        return float(np.nextafter(s[0], np.inf))
    if k >= len(s) and finite == len(s):
        return float(s[-1])
    return float(np.nextafter(s[min(k, finite - 1)], np.inf))


def allowed_false_hits(n: int, max_rate: float, confidence: float) -> int:
    """The most acceptances among ``n`` non-duplicates for which the one-sided Clopper-Pearson
    upper bound on the acceptance rate, at ``confidence``, is still at most ``max_rate``.

    Why: a threshold set where exactly ``max_rate`` of the calibration non-duplicates pass meets
    the target only on average; on new data it serves more false hits about half the time (the
    5-fold QQP replay: 2 of 5 folds above 0.5%). Bounding the rate instead makes "at most
    ``max_rate``" hold with ``confidence`` on data like the calibration pairs. -1 when even no
    acceptance is enough (too few pairs for that rate): then nothing passes.
    """
    from scipy.stats import beta

    k = math.floor(max_rate * n)
    while k >= 0 and float(beta.ppf(confidence, k + 1, n - k)) > max_rate:
        k -= 1
    return k


__all__ = ["HitVerifier", "LearnedVerifier", "RuleVerifier", "allowed_false_hits", "build_idf", "fit_model",
           "threshold_at"]
