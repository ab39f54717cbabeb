"""Scoring finished decisions: accuracy, cost, cost share of the baseline, calls per prompt.

A ``Decision`` is what the pipeline did for one prompt (the models it called, in order, and the
one whose answer it served). Scores are joined only here, after every decision is final:
the score of a prompt is the score of its ``final`` model; its cost is what the pipeline's
accounting recorded (the sum of every call's provider-reported cost).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from thrifty.evaluation.dataset import Item, OutcomeSet

NO_TASK = "(none)"


@dataclass
class Decision:
    file: str
    row: int  # the item's 0-based data row in ``file`` (Item.row)
    calls: list[str]
    final: str | None
    cost: float = 0.0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The documented decisions-file line (cost and errors stay out: the data has the costs)."""
        return {"file": self.file, "row": self.row, "calls": self.calls, "final": self.final}


@dataclass
class ItemResult:
    task: str
    score: float
    cost: float
    calls: float  # expected calls for randomised references
    error: bool = False


@dataclass
class Stats:
    prompts: int
    accuracy: float
    cost: float
    cost_share: float | None  # cost / the baseline's cost on the same prompts
    calls_per_prompt: float
    errors: int = 0


@dataclass
class Row:
    name: str
    kind: str  # policy | sweep | model | reference
    overall: Stats
    tasks: dict[str, Stats] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "note": self.note, **asdict(self.overall),
                "tasks": {t: asdict(s) for t, s in self.tasks.items()}}


def _stats(results: list[ItemResult], baseline_cost: float) -> Stats:
    n = len(results)
    cost = sum(r.cost for r in results)
    return Stats(
        prompts=n,
        accuracy=sum(r.score for r in results) / n if n else 0.0,
        cost=cost,
        cost_share=cost / baseline_cost if baseline_cost > 0 else None,
        calls_per_prompt=sum(r.calls for r in results) / n if n else 0.0,
        errors=sum(1 for r in results if r.error),
    )


def aggregate(name: str, kind: str, results: list[ItemResult], baseline_costs: list[float], note: str = "") -> Row:
    """A row for ``results`` (aligned with ``baseline_costs``, the baseline's cost per item)."""
    tasks: dict[str, list[int]] = {}
    for i, r in enumerate(results):
        tasks.setdefault(r.task, []).append(i)
    per_task = {
        t: _stats([results[i] for i in idx], sum(baseline_costs[i] for i in idx)) for t, idx in sorted(tasks.items())
    }
    return Row(name, kind, _stats(results, sum(baseline_costs)), per_task, note)


def task_of(item: Item) -> str:
    return item.task or NO_TASK


def score_decisions(decisions: list[Decision], data: OutcomeSet) -> list[ItemResult]:
    """Join decisions with the scores (aligned with ``data.items``); an error scores 0."""
    by_key = {(d.file, d.row): d for d in decisions}
    out = []
    for item in data.items:
        d = by_key.get(item.key)
        if d is None or d.final is None:
            out.append(ItemResult(task_of(item), 0.0, d.cost if d else 0.0, len(d.calls) if d else 0, True))
            continue
        out.append(ItemResult(task_of(item), item.scores.get(d.final, 0.0), d.cost, len(d.calls), d.error is not None))
    return out
