"""Which task a request is: client labels, rules, an embedding classifier, the prompt's format.

Each step returns a ``TaskGuess`` (task, confidence, source, per-task scores) or nothing; the
router takes the first confident guess whose task has a route, else the default route. The
optional LLM classifier is asynchronous (it calls a model), so it runs inside the cascade stage
as a policy (routing/llm_classifier.py), not here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from thrifty.embeddings import Embedder, build_embedder
from thrifty.errors import ConfigError
from thrifty.jsonl import text_lines
from thrifty.routing.config import ClassifyConfig, Rule
from thrifty.routing.formats import detect_family
from thrifty.types import ChatRequest

TASK_HEADER = "x-thrifty-task"


@dataclass
class TaskGuess:
    task: str
    confidence: float  # in [0, 1]
    source: str  # label | rule | embedding | format | llm | default
    detail: str = ""
    scores: dict[str, float] = field(default_factory=dict)


def client_label(request: ChatRequest, headers: dict[str, str]) -> tuple[str, str] | None:
    """A task named by the client: ``x-thrifty-task`` header, body ``thrifty.task``, ``metadata.task``."""
    for value, where in ((headers.get(TASK_HEADER), "x-thrifty-task header"),
                         (request.options.get("task"), "thrifty.task"),
                         (request.metadata.get("task"), "metadata.task")):
        if isinstance(value, str) and value.strip():
            return value.strip(), where
    return None


class RuleClassifier:
    def __init__(self, rules: list[Rule]) -> None:
        self.rules = []
        for i, r in enumerate(rules):
            try:
                patterns = [re.compile(p, re.I | re.M) for p in r.regex]
            except re.error as exc:
                raise ConfigError(f"routing.classify.rules.{i}.regex: invalid regular expression ({exc})") from None
            self.rules.append((r, [k.lower() for k in r.keywords], patterns))

    def guess(self, request: ChatRequest) -> TaskGuess | None:
        for rule, keywords, patterns in self.rules:
            text = _text(request, rule.where)
            low = text.lower()
            for k in keywords:
                if k in low:
                    return TaskGuess(rule.task, 1.0, "rule", f"keyword {k!r}")
            for p in patterns:
                if p.search(text):
                    return TaskGuess(rule.task, 1.0, "rule", f"regex {p.pattern!r}")
        return None


def _text(request: ChatRequest, where: str) -> str:
    if where == "system":
        return request.system_text()
    if where == "all":
        return "\n".join(str(m.get("content") or "") for m in request.messages)
    return request.last_user_text()


def load_examples(inline: dict[str, list[str]], path: str | None) -> dict[str, list[str]]:
    """Labelled prompts from the config plus a JSONL file of ``{"task": ..., "prompt": ...}``."""
    out = {t: list(v) for t, v in inline.items()}
    if path:
        try:
            lines = text_lines(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"routing.classify.examples_file: cannot read {path}: {exc.strerror or exc}") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                task, prompt = obj["task"], obj["prompt"]
            except (ValueError, KeyError, TypeError):
                raise ConfigError(f"{path}:{n}: expected {{\"task\": ..., \"prompt\": ...}}") from None
            out.setdefault(str(task), []).append(str(prompt))
    return out


class EmbeddingClassifier:
    """k-nearest-examples: a task's score is the mean cosine similarity of its ``k`` closest
    labelled examples to the request (robust to one odd example, no training step); the guess's
    confidence is the best score clipped to [0, 1]."""

    def __init__(self, examples: dict[str, list[str]], embedder: Embedder | str | dict | None = None,  # type: ignore[type-arg]
                 k: int = 3) -> None:
        self.embedder = embedder if isinstance(embedder, Embedder) else build_embedder(embedder)
        self.k = k
        self.tasks = sorted(t for t, v in examples.items() if v)
        self._labels: list[int] = []
        texts: list[str] = []
        for ti, t in enumerate(self.tasks):
            texts.extend(examples[t])
            self._labels.extend([ti] * len(examples[t]))
        self._texts = texts
        self._matrix: np.ndarray | None = None  # embedded lazily (a sentence model loads slowly)

    def _vectors(self) -> np.ndarray:
        if self._matrix is None:
            self._matrix = self.embedder.embed(self._texts)
        return self._matrix

    def scores(self, text: str) -> dict[str, float]:
        if not self.tasks:
            return {}
        sims = self._vectors() @ self.embedder.embed([text])[0]
        labels = np.asarray(self._labels)
        out = {}
        for ti, t in enumerate(self.tasks):
            s = np.sort(sims[labels == ti])[::-1][: self.k]
            out[t] = round(float(s.mean()), 4)
        return out

    def guess(self, request: ChatRequest) -> TaskGuess | None:
        scores = self.scores(request.last_user_text())
        if not scores:
            return None
        task = max(scores, key=lambda t: scores[t])
        # A mean cosine can be negative: the confidence is it clipped to [0, 1] (scores keep
        # the raw similarities).
        confidence = min(1.0, max(0.0, scores[task]))
        return TaskGuess(task, confidence, "embedding", f"nearest examples of {task!r}", scores)


class TaskClassifier:
    def __init__(self, cfg: ClassifyConfig, embedder: str | dict | None, base_dir: str | None) -> None:  # type: ignore[type-arg]
        self.cfg = cfg
        self.rules = RuleClassifier(cfg.rules)
        path = cfg.examples_file
        if path and base_dir and not Path(path).is_absolute():
            path = str(Path(base_dir) / path)
        examples = load_examples(cfg.examples, path)
        self.embedding = EmbeddingClassifier(examples, embedder) if examples else None

    def guesses(self, request: ChatRequest, headers: dict[str, str]) -> list[TaskGuess]:
        """Every guess in priority order (the router takes the first usable one)."""
        out: list[TaskGuess] = []
        if self.cfg.client_labels:
            label = client_label(request, headers)
            if label:
                out.append(TaskGuess(label[0], 1.0, "label", label[1]))
        rule = self.rules.guess(request)
        if rule:
            out.append(rule)
        if self.embedding is not None:
            emb = self.embedding.guess(request)
            if emb:
                if emb.confidence < self.cfg.min_confidence:
                    emb.detail += f" (confidence {emb.confidence:.2f} < {self.cfg.min_confidence:g})"
                out.append(emb)
        if self.cfg.formats:
            out.append(TaskGuess(detect_family(request.last_user_text()), 0.9, "format", "prompt format"))
        return out
