"""A learned scorer: P(answer is right) from prompt and answer features, trained on outcome data.

Features (no embedding, so it transfers across prompts): the prompt's format family, the
answering model, and the answer's form (length, an option letter found, code that parses, a
refusal phrase, empty). One logistic regression; the file is JSON.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from thrifty.artifacts import read_artifact, write_artifact
from thrifty.errors import DataError
from thrifty.evaluation.dataset import OutcomeSet
from thrifty.routing.formats import FAMILIES, code_signature, detect_family, extract_option
from thrifty.scoring.base import Score
from thrifty.scoring.tools import graded_answer
from thrifty.types import ChatRequest, response_text

FORMAT = "thrifty-learned-scorer/1"
_REFUSAL_RE = re.compile(r"\b(sorry|cannot|can't|unable|as an ai)\b", re.I)


def answer_features(prompt: str, answer: str, model: str, models: list[str]) -> list[float]:
    family = detect_family(prompt)
    t = answer.strip()
    feats = [1.0 if family == f else 0.0 for f in FAMILIES]
    feats += [1.0 if model == m else 0.0 for m in models]
    feats += [math.log1p(len(t)) / 8.0, 1.0 if not t else 0.0, 1.0 if _REFUSAL_RE.search(t[:300]) else 0.0,
              1.0 if extract_option(t) else 0.0, 1.0 if family == "code" and code_signature(t) else 0.0]
    return feats


class LearnedScorer:
    def __init__(self, models: list[str], coef: list[float], intercept: float) -> None:
        self.models, self.coef, self.intercept = models, np.asarray(coef, dtype=float), float(intercept)

    def probability(self, prompt: str, answer: str, model: str) -> float:
        z = float(self.coef @ np.asarray(answer_features(prompt, answer, model, self.models))) + self.intercept
        return 1.0 / (1.0 + math.exp(-z))

    async def score(self, request: ChatRequest, response: dict[str, Any]) -> Score:
        # The catalog name the model was trained under: cascades put it in "model" for scorers
        # (the upstream's own name for it, e.g. a dated version or an alias target, would not
        # match the training data's one-hot features).
        model = str(response.get("model") or "")
        answer, unusable = graded_answer(request, response, response_text(response))
        if unusable is not None:
            return Score(0.0, unusable)
        p = self.probability(request.last_user_text(), answer, model)
        return Score(round(p, 4), f"learned P(right) {p:.2f}")

    def save(self, path: str | Path) -> None:
        write_artifact(path, {"format": FORMAT, "models": self.models, "coef": self.coef.tolist(),
                              "intercept": self.intercept})

    @classmethod
    def load(cls, path: str | Path) -> LearnedScorer:
        obj = read_artifact(path, FORMAT, "learned scorer")
        return cls(obj["models"], obj["coef"], obj["intercept"])


def train_scorer(data: OutcomeSet, c: float = 1.0) -> LearnedScorer:
    """Fit on every (prompt, model answer) pair of the outcome data (scores read at training only)."""
    from sklearn.linear_model import LogisticRegression

    X, y = [], []
    for item in data:
        for m, out in item.outcomes.items():
            X.append(answer_features(item.prompt, out.response, m, data.models))
            y.append(1 if item.scores.get(m, 0.0) >= 0.5 else 0)
    if len(set(y)) < 2:
        raise DataError("the outcome data needs both right and wrong answers to train a scorer")
    clf = LogisticRegression(C=c, max_iter=2000).fit(np.asarray(X), np.asarray(y))
    return LearnedScorer(list(data.models), clf.coef_[0].tolist(), float(clf.intercept_[0]))
