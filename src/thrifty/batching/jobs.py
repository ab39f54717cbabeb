"""Persistence of provider Batch API jobs in the ledger database (migration 003_batch_jobs).

A job is created with all its items before anything is sent, and every step (file uploaded,
batch created, item answered) is written as soon as it happens, so a process that restarts
reads where it was and resumes polling instead of submitting again.

Job status: ``created`` (items waiting for a batch of round ``round``), ``submitted`` (a
provider batch is running: ``batch_id``), ``finished``, ``cancelled``. Item status:
``pending`` (waiting or in flight), ``ok``, ``failed`` (after every resubmission).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from thrifty.batching.items import Item
from thrifty.errors import NotFoundError
from thrifty.ledger.store import SQLStore

_JOB_COLS = ("job_id", "created", "updated", "status", "model", "provider", "task", "labels", "round",
             "input_file_id", "batch_id", "provider_status", "n_items", "error")
_ITEM_COLS = ("seq", "item_id", "input", "status", "round", "tries", "output", "error", "prompt_tokens",
              "completion_tokens", "cost_usd")


@dataclass
class Job:
    job_id: str
    created: float
    updated: float
    status: str
    model: str
    provider: str
    task: str
    labels: list[str] | None
    round: int
    input_file_id: str | None
    batch_id: str | None
    provider_status: str | None
    n_items: int
    error: str | None

    @property
    def done(self) -> bool:
        return self.status in ("finished", "cancelled")


@dataclass
class JobItem:
    seq: int
    item_id: str
    input: str
    status: str
    round: int
    tries: int
    output: str | None
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None


class JobStore:
    def __init__(self, store: SQLStore) -> None:
        self.store = store

    def create(self, job_id: str, model: str, provider: str, task: str, labels: list[str] | None,
               items: list[Item]) -> Job:
        now = time.time()
        # Items first: a job row only exists once all its items do.
        for seq, it in enumerate(items):
            self.store.execute(
                "INSERT INTO batch_job_items (job_id, seq, item_id, input, status, round, tries, output, error,"
                " prompt_tokens, completion_tokens, cost_usd) VALUES (?, ?, ?, ?, 'pending', 1, 0, NULL, NULL,"
                " 0, 0, NULL) ON CONFLICT (job_id, seq) DO NOTHING",
                (job_id, seq, it.id, it.input),
            )
        self.store.execute(
            "INSERT INTO batch_jobs (job_id, created, updated, status, model, provider, task, labels, round,"
            " input_file_id, batch_id, provider_status, n_items, error) VALUES (?, ?, ?, 'created', ?, ?, ?, ?,"
            " 1, NULL, NULL, NULL, ?, NULL) ON CONFLICT (job_id) DO NOTHING",
            (job_id, now, now, model, provider, task, json.dumps(labels) if labels else None, len(items)),
        )
        return self.get(job_id)

    def find(self, job_id: str) -> Job | None:
        rows = self.store.query(f"SELECT {', '.join(_JOB_COLS)} FROM batch_jobs WHERE job_id = ?", (job_id,))
        if not rows:
            return None
        values = dict(zip(_JOB_COLS, rows[0], strict=True))
        values["labels"] = json.loads(values["labels"]) if values["labels"] else None
        return Job(**values)

    def get(self, job_id: str) -> Job:
        job = self.find(job_id)
        if job is None:
            matches = self.store.query("SELECT job_id FROM batch_jobs WHERE job_id LIKE ?", (job_id + "%",))
            if len(matches) == 1:
                return self.get(str(matches[0][0]))
            raise NotFoundError(f"no batch job {job_id!r} (see `thrifty batch status`)", code="not_found")
        return job

    def all_jobs(self) -> list[Job]:
        rows = self.store.query("SELECT job_id FROM batch_jobs ORDER BY created")
        return [self.get(str(r[0])) for r in rows]

    def update(self, job_id: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.store.execute(f"UPDATE batch_jobs SET {sets} WHERE job_id = ?", (*fields.values(), job_id))

    def stale(self, task: str, cutoff: float) -> list[tuple[str, str, float]]:
        """``(job_id, status, updated)`` of the unfinished jobs of ``task`` untouched since ``cutoff``."""
        rows = self.store.query("SELECT job_id, status, updated FROM batch_jobs WHERE task = ? AND status IN "
                                "('created', 'submitted') AND updated < ?", (task, cutoff))
        return [(str(j), str(st), float(u)) for j, st, u in rows]

    def claim(self, job_id: str, updated: float, now: float) -> bool:
        """Touch the job only if nobody has since ``updated``: True for exactly one of several claimants."""
        return bool(self.store.execute("UPDATE batch_jobs SET updated = ? WHERE job_id = ? AND updated = ?",
                                       (now, job_id, updated)) == 1)

    def items(self, job_id: str, status: str | None = None) -> list[JobItem]:
        sql = f"SELECT {', '.join(_ITEM_COLS)} FROM batch_job_items WHERE job_id = ?"
        params: tuple[Any, ...] = (job_id,)
        if status is not None:
            sql += " AND status = ?"
            params = (job_id, status)
        rows = self.store.query(sql + " ORDER BY seq", params)
        return [JobItem(*r) for r in rows]

    def update_item(self, job_id: str, seq: int, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.store.execute(f"UPDATE batch_job_items SET {sets} WHERE job_id = ? AND seq = ?",
                           (*fields.values(), job_id, seq))

    def counts(self, job_id: str) -> dict[str, int]:
        rows = self.store.query("SELECT status, COUNT(*) FROM batch_job_items WHERE job_id = ? GROUP BY status",
                                (job_id,))
        return {str(s): int(n) for s, n in rows}
