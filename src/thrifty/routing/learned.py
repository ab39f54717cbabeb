"""A learned router over any number of models: per prompt, each model's probability of success
and expected cost; pick the cheapest model whose predicted success meets the route's target, or
the one maximising ``P(success) - lam * cost``.

Features: a hashed lexical embedding of the prompt's final question (few-shot prompts share
their examples, which would swamp a whole-prompt embedding) plus its format family. One
logistic regression per model (scikit-learn at training time; prediction is a numpy dot
product, well under 5 ms). Expected cost is the model's mean cost on training prompts of the
same family. The file is JSON so it can be inspected and diffed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thrifty.artifacts import read_artifact, write_artifact
from thrifty.embeddings import build_embedder
from thrifty.errors import ConfigError, DataError
from thrifty.evaluation.dataset import OutcomeSet
from thrifty.routing.formats import FAMILIES, detect_family, last_block

FORMAT = "thrifty-learned-router/1"


@dataclass
class Choice:
    model: str
    p_success: float
    cost: float
    reason: str


class LearnedRouter:
    def __init__(self, models: list[str], coef: np.ndarray, intercept: np.ndarray, costs: dict[str, dict[str, float]],
                 embedder: str | dict[str, Any], meta: dict[str, Any] | None = None) -> None:
        self.models = models
        self.coef = np.asarray(coef, dtype=np.float32)  # (models, features)
        self.intercept = np.asarray(intercept, dtype=np.float32)
        self.costs = costs
        self.embedder_spec = embedder
        self.embedder = build_embedder(embedder)
        self.meta = meta or {}

    def features(self, texts: list[str]) -> np.ndarray:
        emb = self.embedder.embed([last_block(t) for t in texts])
        fam = np.zeros((len(texts), len(FAMILIES)), dtype=np.float32)
        for i, t in enumerate(texts):
            fam[i, FAMILIES.index(detect_family(t))] = 1.0
        return np.hstack([emb, fam])

    def predict(self, text: str) -> dict[str, tuple[float, float]]:
        """model -> (P(success), expected cost in USD)."""
        x = self.features([text])[0]
        logits = self.coef @ x + self.intercept
        family = detect_family(text)
        out = {}
        for m, z in zip(self.models, logits, strict=True):
            p = 1.0 / (1.0 + math.exp(-float(z)))
            out[m] = (p, self.costs[m].get(family, self.costs[m].get("*", 0.0)))
        return out

    def choose(self, text: str, *, target: float | None = None, lam: float | None = None,
               allowed: list[str] | None = None) -> Choice:
        preds = {m: v for m, v in self.predict(text).items() if not allowed or m in allowed}
        if not preds:
            raise ConfigError("learned router: none of the allowed models is in the trained file")
        if target is not None:
            ok = [m for m, (p, _) in preds.items() if p >= target]
            if ok:
                m = min(ok, key=lambda k: preds[k][1])
                return Choice(m, *preds[m], f"cheapest model with P(success) >= {target:g}: {m} "
                                            f"(P={preds[m][0]:.2f})")
            m = max(preds, key=lambda k: preds[k][0])
            return Choice(m, *preds[m], f"no model reaches {target:g}: most likely {m} (P={preds[m][0]:.2f})")
        lam = float(self.meta.get("lam", 0.0)) if lam is None else lam
        m = max(preds, key=lambda k: preds[k][0] - lam * preds[k][1])
        return Choice(m, *preds[m], f"max P(success) - {lam:g} x cost: {m} (P={preds[m][0]:.2f}, "
                                    f"${preds[m][1]:.5f})")

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "models": self.models, "embedder": self.embedder_spec,
                "coef": self.coef.round(6).tolist(), "intercept": self.intercept.round(6).tolist(),
                "costs": self.costs, "meta": self.meta}

    def save(self, path: str | Path) -> None:
        write_artifact(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> LearnedRouter:
        obj = read_artifact(path, FORMAT, "learned router")
        return cls(obj["models"], np.asarray(obj["coef"]), np.asarray(obj["intercept"]), obj["costs"],
                   obj["embedder"], obj.get("meta"))


def train_router(data: OutcomeSet, *, models: list[str] | None = None, embedder: str | dict[str, Any] | None = None,
                 c: float = 0.5, lam: float = 0.0) -> LearnedRouter:
    """Fit P(success) per model from outcome data (scores are read here, at training time only)."""
    from sklearn.linear_model import LogisticRegression

    models = models or list(data.models)
    # A model the data never answered for would be "always wrong, free" (scores and costs
    # default to 0), and the router would happily pick it.
    unknown = [m for m in models if m not in data.models]
    if unknown:
        raise DataError(f"model(s) not in the data: {', '.join(map(repr, unknown))} "
                        f"(available: {', '.join(data.models)})")
    if len(data) < 10:
        raise DataError("need at least 10 prompts to train a router")
    spec = embedder or {"kind": "lexical", "dim": 512}
    shell = LearnedRouter(models, np.zeros((len(models), 1)), np.zeros(len(models)), {}, spec)
    texts = [i.prompt for i in data]
    X = shell.features(texts)
    fams = [detect_family(t) for t in texts]
    coef, intercept, costs = [], [], {}
    for m in models:
        y = np.array([1 if i.scores.get(m, 0.0) >= 0.5 else 0 for i in data])
        if y.min() == y.max():  # always right (or wrong): a constant model
            p = min(max(float(y.mean()), 1e-3), 1 - 1e-3)
            coef.append(np.zeros(X.shape[1]))
            intercept.append(math.log(p / (1 - p)))
        else:
            clf = LogisticRegression(C=c, max_iter=2000).fit(X, y)
            coef.append(clf.coef_[0])
            intercept.append(float(clf.intercept_[0]))
        per: dict[str, list[float]] = {}
        for item, f in zip(data, fams, strict=True):
            per.setdefault(f, []).append(item.cost(m))
        costs[m] = {f: float(np.mean(v)) for f, v in per.items()}
        costs[m]["*"] = float(np.mean([item.cost(m) for item in data]))
    return LearnedRouter(models, np.vstack(coef), np.asarray(intercept), costs, spec,
                         {"prompts": len(data), "lam": lam})
