"""Persistence of provider Batch API jobs in the ledger database (migration 003_batch_jobs).

A job is created with all its items before anything is sent, and every step (file uploaded,
batch created, item answered) is written as soon as it happens, so a process that restarts
reads where it was and resumes polling instead of submitting again.

Job status: ``created`` (items waiting for a batch of round ``round``), ``submitted`` (a
provider batch is running: ``batch_id``), ``cancelling`` (cancel asked, the provider has not
stopped the batch yet), ``finished``, ``cancelled``. While a ``created`` job's upload may be at the
provider with its id not stored yet, ``provider_status`` holds ``uploading <file name>``
(batching/uploads.py). Item status:
``pending`` (waiting or in flight), ``ok``, ``failed`` (after every resubmission).

An item's ``cost_usd`` is what its answers cost so far: $0 until one is recorded (a line that
failed, expired or went missing is not billed), NULL only once an answer was priced unknown.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from thrifty.batching.items import Item
from thrifty.errors import InvalidRequestError, NotFoundError
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


def encode_id(item: Item) -> str:
    """The ``item_id`` column: the id as JSON text (``7`` or ``"7"``), so ``batch results`` read
    later gives each id back with the JSON type the items file had."""
    return json.dumps(item.json_id, ensure_ascii=False)


def decode_id(text: str) -> str | int:
    """``encode_id`` reversed. Rows written before ids were stored as JSON hold the bare text:
    digits read as a number, anything else as the string it is."""
    if text.startswith('"'):
        try:
            value = json.loads(text)
        except ValueError:
            return text
        return value if isinstance(value, str) else text
    if text.lstrip("-").isdigit() and len(text) < 30 and str(int(text)) == text:  # "007" stays text
        return int(text)
    return text


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
    json_id: str | int = ""  # the id with its input JSON type (item_id is its text)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> JobItem:
        item = cls(*row)
        item.json_id = decode_id(str(item.item_id))
        item.item_id = str(item.json_id)
        if item.cost_usd is None and not (item.prompt_tokens or item.completion_tokens):
            # A row created before items started at $0 (NULL then meant "nothing recorded yet",
            # not "unknown"): no answer of it was ever recorded, so it has cost nothing.
            item.cost_usd = 0.0
        return item


class JobStore:
    def __init__(self, store: SQLStore) -> None:
        self.store = store

    def create(self, job_id: str, model: str, provider: str, task: str, labels: list[str] | None,
               items: list[Item]) -> Job:
        now = time.time()
        # Items first: a job row only exists once all its items do. Each starts at $0 (nothing
        # billed yet), not NULL: a NULL start stayed NULL for every item whose lines all failed
        # or expired (never priced), and read as "cost unknown" it made the job's spend unknown.
        for seq, it in enumerate(items):
            self.store.execute(
                "INSERT INTO batch_job_items (job_id, seq, item_id, input, status, round, tries, output, error,"
                " prompt_tokens, completion_tokens, cost_usd) VALUES (?, ?, ?, ?, 'pending', 1, 0, NULL, NULL,"
                " 0, 0, 0) ON CONFLICT (job_id, seq) DO NOTHING",
                (job_id, seq, encode_id(it), it.input),
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
            # A unique prefix names its job. '_' and '%' are LIKE wildcards ("bj_" is the prefix
            # of every id): escaped, so a prefix only matches ids starting with those characters.
            pattern = job_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            matches = sorted(str(r[0]) for r in self.store.query(
                "SELECT job_id FROM batch_jobs WHERE job_id LIKE ? ESCAPE '\\'", (pattern,)))
            if len(matches) == 1:
                return self.get(matches[0])
            if len(matches) > 1:
                shown = ", ".join(matches[:3]) + (f" and {len(matches) - 3} more" if len(matches) > 3 else "")
                raise InvalidRequestError(f"batch job prefix {job_id!r} is ambiguous: it starts {len(matches)} job "
                                          f"ids ({shown}); give more of the id")
            raise NotFoundError(f"no batch job {job_id!r} (see `thrifty batch status`)", code="not_found")
        return job

    def all_jobs(self) -> list[Job]:
        rows = self.store.query("SELECT job_id FROM batch_jobs ORDER BY created")
        return [self.get(str(r[0])) for r in rows]

    def update(self, job_id: str, where: Mapping[str, Any] | None = None, **fields: Any) -> bool:
        """Set ``fields``; with ``where`` (column -> value, None for NULL) only while the row still
        holds those values, so two processes racing for one step cannot both take it. True when
        the row changed."""
        fields["updated"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in fields)
        conds = "".join(f" AND {k} IS NULL" if v is None else f" AND {k} = ?" for k, v in (where or {}).items())
        args = [v for v in (where or {}).values() if v is not None]
        return self.store.execute(f"UPDATE batch_jobs SET {sets} WHERE job_id = ?{conds}",
                                  (*fields.values(), job_id, *args)) == 1

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
        return [JobItem.from_row(tuple(r)) for r in rows]

    def reopen_failed(self, job_id: str, next_round: int) -> int:
        """Give a finished or cancelled job's failed items another round: the job goes back to
        ``created`` for round ``next_round`` (a new batch, new custom ids), its failed items to
        ``pending``; ok items are untouched (never paid twice). ``tries`` is kept (it is the
        item's ``calls``), so an item past ``max_resubmits`` gets this one round.
        The job row first: a crash before the items are reset leaves a job that finishes at once
        with the same failed items, and the next run reopens it again. The items reopened."""
        failed = self.store.query("SELECT COUNT(*) FROM batch_job_items WHERE job_id = ? AND status = 'failed'",
                                  (job_id,))
        if not failed or not int(failed[0][0]):
            return 0
        self.update(job_id, status="created", round=next_round, input_file_id=None, batch_id=None,
                    provider_status=None, error=None)
        return self.store.execute("UPDATE batch_job_items SET status = 'pending' WHERE job_id = ? "
                                  "AND status = 'failed'", (job_id,))

    def submitted(self, job_id: str, round_no: int, batch_id: str, provider_status: str) -> bool:
        """Record round ``round_no``'s provider batch and count it as one more try of each pending
        item, in one transaction: a crash leaves both done or neither. The tries used to be
        counted before the create: a process killed in between, or a create the provider refused,
        left a try counted for a batch that never ran, and the next run counted the round again.
        A batch an interrupted run created but never recorded, found again by the next run
        (``DeferredRunner._created_earlier``), is recorded here too: its try counted once.
        False when the job had already left ``created`` for this round (another process submitted
        or cancelled it): nothing changed."""
        return self.store.execute_all([
            ("UPDATE batch_jobs SET status = 'submitted', batch_id = ?, provider_status = ?, updated = ? WHERE "
             "job_id = ? AND status = 'created' AND round = ?", (batch_id, provider_status, time.time(), job_id,
                                                                 round_no)),
            ("UPDATE batch_job_items SET round = ?, tries = tries + 1 WHERE job_id = ? AND status = 'pending'",
             (round_no, job_id)),
        ]) is None

    def update_item(self, job_id: str, seq: int, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.store.execute(f"UPDATE batch_job_items SET {sets} WHERE job_id = ? AND seq = ?",
                           (*fields.values(), job_id, seq))

    def counts(self, job_id: str) -> dict[str, int]:
        rows = self.store.query("SELECT status, COUNT(*) FROM batch_job_items WHERE job_id = ? GROUP BY status",
                                (job_id,))
        return {str(s): int(n) for s, n in rows}
