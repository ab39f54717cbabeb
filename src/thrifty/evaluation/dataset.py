"""Outcome data: per-prompt results of several models, for replay evaluation and training.

Two formats load into the same ``OutcomeSet``:

RouterBench CSV (as in ../shared/data/routerbench): columns ``prompt`` (a Python-list literal of
prompt parts), ``eval_name`` (the task), one score column per model, ``<model>|model_response``
(list literal) and ``<model>|total_cost`` (USD).

thrifty outcome JSONL (for users' own logged traffic), one object per line:

    {"prompt": "text"  |  "messages": [{"role": ..., "content": ...}, ...],
     "task": "faq",                                    # optional
     "outcomes": {"<model>": {"score": 1.0,            # in [0, 1]; missing = 0
                              "response": "text",
                              "cost": 0.0012,          # USD, >= 0, or give "usage" instead
                              "usage": {"prompt_tokens": 900, "completion_tokens": 40}}}}

An item is identified by its file name and its 0-based data row (the decisions file's ``row``,
as issue 3 specifies it). Errors name the 1-based line of the file where the item starts, as an
editor shows it (``file: line N``; a CSV's first data row is line 2, and a quoted cell may span
lines).

Scores are kept apart from prompts and responses (``Item.scores``) so that code making
decisions can be handed items without scores (``Item.blind()``), and tests can prove it.
"""

from __future__ import annotations

import ast
import csv
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from thrifty.errors import DataError
from thrifty.jsonl import iter_jsonl

csv.field_size_limit(sys.maxsize)


@dataclass(frozen=True)
class Outcome:
    """What one model answered to one prompt and what that call cost."""

    response: str
    cost: float | None = None
    usage: dict[str, Any] | None = None


@dataclass
class Item:
    file: str
    row: int  # 0-based data row in ``file`` (the decisions file's "row")
    messages: list[dict[str, Any]]
    task: str | None
    outcomes: dict[str, Outcome]
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The user text of the item (all user messages joined)."""
        return "\n".join(str(m.get("content", "")) for m in self.messages if m.get("role") == "user")

    @property
    def key(self) -> tuple[str, int]:
        return (self.file, self.row)

    def blind(self) -> Item:
        """The same item without scores: what a decision-maker may see."""
        return replace(self, scores={})

    def cost(self, model: str) -> float:
        out = self.outcomes.get(model)
        return float(out.cost) if out is not None and out.cost is not None else 0.0


@dataclass
class OutcomeSet:
    items: list[Item]
    models: list[str]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def tasks(self) -> list[str]:
        return sorted({i.task or "(none)" for i in self.items})

    def subset(self, indices: list[int]) -> OutcomeSet:
        return OutcomeSet([self.items[i] for i in indices], self.models)

    def merged(self, other: OutcomeSet) -> OutcomeSet:
        models = self.models + [m for m in other.models if m not in self.models]
        return OutcomeSet(self.items + other.items, models)


def _literal_text(raw: str) -> str:
    """RouterBench stores text as a Python list literal of parts; join them."""
    raw = raw or ""
    if raw.startswith("["):
        try:
            parts = ast.literal_eval(raw)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return raw
        if isinstance(parts, list):
            return "\n".join(str(p) for p in parts)
    return raw


def _check_number(value: Any, where: str, field_name: str, high: float | None) -> float:
    """``value`` as a float when it is a finite number in [0, high], else ``DataError`` naming
    ``where`` (file and line/row) and the field. Why strict: a score read as 0 (``"high"``) or
    above 1 (``5`` = 500% accuracy), or a negative / non-numeric cost, silently corrupts every
    accuracy and savings figure computed from the file."""
    # bool is an int subclass; ``true`` is not a score or a price.
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and math.isfinite(value) and value >= 0 and (high is None or value <= high):
        return float(value)
    span = "a number in [0, 1]" if high is not None else "a finite number >= 0 (USD)"
    shown = repr(value)  # repr keeps the message on one line; a long cell is cut short
    raise DataError(f"{where}: {field_name} must be {span}, got {shown[:40] + '...' if len(shown) > 40 else shown}")


def _csv_number(raw: str | None, where: str, field_name: str, high: float | None) -> float | None:
    """A RouterBench cell: None when empty or "nan" (missing), else a checked number (see ``_check_number``)."""
    # pandas writes a missing value as an empty cell, other tools as "nan"/"NaN": both are missing.
    if raw is None or raw.strip() == "" or raw.strip().lower() == "nan":
        return None
    try:
        value: Any = float(raw)
    except ValueError:
        value = raw
    return _check_number(value, where, field_name, high)


def load_routerbench_csv(path: Path) -> OutcomeSet:
    rows: list[tuple[int, dict[str | None, Any]]] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # an Excel export starts with a BOM
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            end = reader.line_num  # lines read so far: a record starts on the next one
            for record in reader:
                rows.append((end + 1, record))
                end = reader.line_num
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if "prompt" not in header:
        raise DataError(f"{path}: not a RouterBench CSV (no 'prompt' column)")
    models = [h.split("|")[0] for h in header if h.endswith("|total_cost")]
    if not models:
        raise DataError(f"{path}: no '<model>|total_cost' columns")
    unscored = [m for m in models if m not in header]
    if unscored:
        # An empty score cell is a missing score (read as wrong); a missing score column would make
        # every answer of that model read as wrong, and the policy serving them look worse.
        raise DataError(f"{path}: no score column for {', '.join(repr(m) for m in unscored)} (it has a "
                        f"'|total_cost' column): add the column, or remove that model's columns")
    items = []
    for index, (line, r) in enumerate(rows):
        outcomes = {}
        scores = {}
        where = f"{path}: line {line}"
        # DictReader pads a short row with None and files a long row's extras under None: a row
        # cut short (a truncated download) would otherwise load as a prompt every model got wrong.
        if None in r or any(v is None for v in r.values()):
            have = len(r) - (1 if None in r else 0) - sum(v is None for v in r.values())
            raise DataError(f"{where}: {have + len(r.get(None) or [])} cells where the header has "
                            f"{len(header)} (is the file cut short?)")
        if all(not str(v).strip() for v in r.values()):
            # A row of empty cells (",,,,": what a spreadsheet saves for a blank line) is no prompt;
            # judged, it would read as one every model got wrong and dilute every accuracy. It
            # keeps its row number, as pandas counts it, so later rows keep theirs.
            continue
        for m in models:
            cost = _csv_number(r.get(f"{m}|total_cost"), where, f"{m}|total_cost", None)
            outcomes[m] = Outcome(_literal_text(r.get(f"{m}|model_response", "")), cost)
            # An empty score cell is missing = wrong (data README); anything else must be a score.
            scores[m] = _csv_number(r.get(m), where, m, 1.0) or 0.0
        items.append(
            Item(path.name, index, [{"role": "user", "content": _literal_text(r["prompt"])}], r.get("eval_name") or None,
                 outcomes, scores)
        )
    if not items:
        raise DataError(f"{path}: no prompts (only a header)")
    return OutcomeSet(items, models)


def load_jsonl(path: Path) -> OutcomeSet:
    items: list[Item] = []
    models: list[str] = []
    for index, (lineno, obj) in enumerate(iter_jsonl(path, "outcomes file")):
        at = f"{path}: line {lineno}"  # as iter_jsonl and the CSV loader say it
        if not isinstance(obj, dict):
            raise DataError(f"{at}: each line must be a JSON object")
        if isinstance(obj.get("messages"), list):
            messages = obj["messages"]
        elif isinstance(obj.get("prompt"), str):
            messages = [{"role": "user", "content": obj["prompt"]}]
        else:
            raise DataError(f"{at}: needs 'prompt' (string) or 'messages' (array)")
        raw_out = obj.get("outcomes")
        if not isinstance(raw_out, dict) or not raw_out:
            raise DataError(f"{at}: needs 'outcomes': {{model: {{score, response, cost}}}}")
        outcomes, scores = {}, {}
        for m, o in raw_out.items():
            if not isinstance(o, dict):
                raise DataError(f"{at}: outcomes.{m} must be an object")
            if m not in models:
                models.append(m)
            # A missing (or null) cost means "use usage"; a missing score means wrong (0).
            cost = o.get("cost")
            checked_cost = None if cost is None else _check_number(cost, at, f"outcomes.{m}.cost", None)
            outcomes[m] = Outcome(str(o.get("response", "")), checked_cost,
                                  o.get("usage") if isinstance(o.get("usage"), dict) else None)
            score = o.get("score")
            scores[m] = 0.0 if score is None else _check_number(score, at, f"outcomes.{m}.score", 1.0)
        task = obj.get("task")
        items.append(Item(path.name, index, messages, task if isinstance(task, str) else None, outcomes, scores))
    return OutcomeSet(items, models)


def load_outcomes(path: str | Path) -> OutcomeSet:
    """One outcome file (.csv or .jsonl), or every such file in a folder (sorted by name)."""
    p = Path(path)
    if p.is_dir():
        # The extension in any case (a Windows export writes ARC_TEST.CSV); hidden files are no
        # data (macOS leaves a binary "._name.csv" beside each file it copies or zips).
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in (".csv", ".jsonl")
                       and not f.name.startswith("."))
        if not files:
            raise DataError(f"{p}: no .csv or .jsonl outcome files in this folder")
        result: OutcomeSet | None = None
        for f in files:
            part = load_outcomes(f)
            result = part if result is None else result.merged(part)
        assert result is not None
        return result
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if p.suffix.lower() == ".csv":
        return load_routerbench_csv(p)
    if p.suffix.lower() == ".jsonl":
        return load_jsonl(p)
    raise DataError(f"{p}: expected a .csv (RouterBench) or .jsonl (thrifty outcomes) file")
