"""Gateway requests marked deferrable, gathered into provider batches (half price, later).

    collector = Collector(gateway, gateway.config.batching.deferred)
    answer = await collector.submit(request_id, model_info, upstream_body)   # waits for the batch

Requests wait in one group per (provider, model). A group is flushed ``window_s`` after its first
request, or at once when it holds ``max_items``: its requests become one persisted job
(jobs.py, task ``GATEWAY_TASK``, each item's input the upstream request body as JSON), sent as
one provider batch by ``DeferredRunner``'s own steps, and polled every ``poll_interval_s``. When
the batch ends, every waiting request gets its answer (``BatchAnswer``, priced at the batch
price) or a ``BatchItemError`` (failed, expired, missing): the stage then serves it with a normal
call, so nothing is dropped and nobody waits for a second batch round.

A process that dies while a batch runs leaves a ``submitted`` job. Another collector on the same
ledger database (this process after a restart, or another instance) adopts it once it has not
been touched for ``2 * poll_interval_s + 60`` seconds (a live owner touches it at every poll),
polls it to the end and writes each answer to the ledger under the original request id, so the
batch's spend is recorded even though its clients are gone. A job that was never sent is
abandoned instead: sending it would spend money for nobody.

An idle collector holds no connections: the Batch API clients are closed whenever no batch is
in flight, so the gateway needs no extra shutdown step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from thrifty.batching import uploads
from thrifty.batching.config import DeferredConfig
from thrifty.batching.deferred import (
    CLOCK_SKEW_S,
    DeferredRunner,
    answered_at,
    price_answer,
    row_error,
    settle_answer,
)
from thrifty.batching.items import Item
from thrifty.batching.jobs import Job, JobItem, JobStore
from thrifty.catalog import ModelInfo
from thrifty.cost import Cost
from thrifty.errors import ConfigError, UpstreamError
from thrifty.ledger.records import rows_from_context
from thrifty.pipeline.context import RequestContext
from thrifty.providers.batch_api import BatchProvider
from thrifty.types import ChatRequest, Usage

if TYPE_CHECKING:
    from thrifty.gateway import Gateway

log = logging.getLogger("thrifty.batching")

# batch_jobs.task of the jobs made from gateway requests (their items are whole request bodies).
GATEWAY_TASK = "(gateway requests)"


class BatchItemError(UpstreamError):
    """A deferrable request's batch line did not produce an answer (failed, expired, missing)."""


@dataclass
class BatchAnswer:
    response: dict[str, Any]
    usage: Usage
    cost: Cost
    batch_id: str | None
    # When the provider answered (``answered_at``), read once: the answer is priced and dated at
    # this one time (with no ``created`` it is "now", which two reads would make two times).
    answered: datetime


@dataclass
class _Waiting:
    request_id: str
    body: dict[str, Any]
    future: asyncio.Future[BatchAnswer]


@dataclass
class _Group:
    info: ModelInfo
    waiting: list[_Waiting] = field(default_factory=list)
    timer: asyncio.Task[Any] | None = None


class GatewayJobRunner(DeferredRunner):
    """``DeferredRunner`` for jobs whose items are whole chat requests (no task, no packing)."""

    def __init__(self, gateway: Gateway, jobs: JobStore, apis: dict[str, BatchProvider] | None = None) -> None:
        super().__init__(gateway, jobs, apis)
        # A waiting client is better served by a normal call now than by another batch round
        # that may take another day: no resubmission, the stage falls back instead.
        self.cfg = self.cfg.model_copy(update={"max_resubmits": 0})

    def _line(self, job: Job, it: JobItem) -> dict[str, Any]:
        return {"custom_id": f"r{job.round}-{it.seq}", "method": "POST", "url": self.cfg.endpoint,
                "body": self._adapt(job, json.loads(it.input))}

    def _record(self, job: Job, it: JobItem, row: dict[str, Any]) -> tuple[str | None, str]:
        error = row_error(row)
        if error is not None:
            return None, error
        body = row["response"]["body"]
        # Dated now if the provider did not date it: the stored answer is priced and dated again
        # when delivered (``_outcome``), at this same time, not at a second "now".
        body.setdefault("created", int(time.time()))
        info = self.gw.catalog.get(job.model)
        usage, cost = _priced(it.input, body, info, answered_at(body))
        output = json.dumps(body, ensure_ascii=False)
        # The ledger row is written by whoever delivers the answer (the waiting request's
        # ledger stage, or the collector for an orphan), not here.
        self.jobs.update_item(job.job_id, it.seq, status="ok", output=output, error=None,
                              prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                              cost_usd=cost.usd)
        return output, ""

    def take_apis(self) -> list[BatchProvider]:
        """Hand over the Batch API clients (to close them); new ones are made when needed."""
        apis = list(self._apis.values())
        self._apis = {}
        return apis


class Collector:
    """One per gateway: groups deferrable requests into provider batches and answers them."""

    def __init__(self, gateway: Gateway, cfg: DeferredConfig, *, apis: dict[str, BatchProvider] | None = None) -> None:
        if gateway.ledger is None:
            raise ConfigError("batching.deferred.enabled needs the ledger (ledger.enabled: true): batch jobs are kept "
                              "in its database")
        self.gw = gateway
        self.cfg = cfg
        self._own_apis = apis is None
        self.runner = GatewayJobRunner(gateway, JobStore(gateway.ledger.store), apis)
        self.jobs = self.runner.jobs
        self._groups: dict[tuple[str, str], _Group] = {}
        self._active: set[str] = set()  # job ids this collector is polling
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def stale_after_s(self) -> float:
        return 2 * self.cfg.poll_interval_s + 60.0

    # ---------------------------------------------------------------- waiting requests
    async def submit(self, request_id: str, info: ModelInfo, body: dict[str, Any]) -> BatchAnswer:
        """Queue one upstream request body for ``info``'s next batch; its answer when the batch ends.

        Raises ``BatchItemError`` (or another ``UpstreamError``/``StorageError``) when the batch
        gave no answer for it; cancelling the caller takes it out of a batch not yet sent.
        """
        key = (info.provider, info.name)
        group = self._groups.get(key)
        if group is None:
            # Once per window: cheap, and a job left by a dead process is picked up soon after
            # deferrable traffic resumes.
            self._spawn(self.adopt_orphans())
            group = self._groups[key] = _Group(info)
            group.timer = self._spawn(self._flush_later(key, group))
        future: asyncio.Future[BatchAnswer] = asyncio.get_running_loop().create_future()
        group.waiting.append(_Waiting(request_id, body, future))
        if len(group.waiting) >= self.cfg.max_items:
            self._take(key, group)
            if group.timer is not None:
                group.timer.cancel()
            self._spawn(self._run(group))
        return await future

    def _take(self, key: tuple[str, str], group: _Group) -> None:
        if self._groups.get(key) is group:
            del self._groups[key]

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # keep a reference: the loop holds tasks only weakly
        task.add_done_callback(self._tasks.discard)
        return task

    async def _flush_later(self, key: tuple[str, str], group: _Group) -> None:
        await asyncio.sleep(self.cfg.window_s)
        self._take(key, group)
        await self._run(group)

    async def _run(self, group: _Group) -> None:
        """Send one group as one job/batch, wait for it, answer every waiting request."""
        waiting = [w for w in group.waiting if not w.future.done()]  # clients gone before sending
        job_id = "bj_" + uuid.uuid4().hex[:20]
        job: Job | None = None
        try:
            if not waiting:
                return
            self._active.add(job_id)
            info = group.info
            items = [Item(w.request_id, json.dumps(w.body, ensure_ascii=False)) for w in waiting]
            job = await asyncio.to_thread(self.jobs.create, job_id, info.name, info.provider, GATEWAY_TASK, None, items)
            job = await self.runner.poll(job_id)  # uploads the file and creates the batch
            log.info("batch job %s: %d requests for %s in batch %s", job_id, len(items), info.name, job.batch_id)
            job = await self.runner.wait(job_id, self.cfg.poll_interval_s)
            # Close idle connections before answering: once answered, the server may stop.
            self._active.discard(job_id)
            await self._close_if_idle()
            await self._resolve(job, dict(enumerate(waiting)))
        except Exception as exc:
            message = exc.message if isinstance(exc, UpstreamError) else f"{type(exc).__name__}: {exc}"
            log.warning("batch job %s failed, its requests are served by normal calls: %s", job_id, message)
            if job is None or job.status == "created":
                # An upload the provider took but whose answer never came (a timeout, a dropped
                # connection): an abandoned job is never looked at again, so it is deleted now.
                with contextlib.suppress(Exception):
                    await self.runner.drop_unrecorded_upload(await asyncio.to_thread(self.jobs.get, job_id))
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._abandon, job_id, f"not sent: {message}")
            for w in waiting:
                if not w.future.done():
                    w.future.set_exception(BatchItemError(f"batch job {job_id}: {message}"))
        finally:
            self._active.discard(job_id)
            await self._close_if_idle()

    async def _resolve(self, job: Job, waiting: dict[int, _Waiting]) -> None:
        items = await asyncio.to_thread(self.jobs.items, job.job_id)
        info = self.gw.catalog.get(job.model)
        for it in items:
            outcome = self._outcome(job, it, info)
            w = waiting.get(it.seq)
            if w is not None and not w.future.done():
                if isinstance(outcome, BatchAnswer):
                    w.future.set_result(outcome)
                else:
                    w.future.set_exception(outcome)
            elif isinstance(outcome, BatchAnswer):
                # Nobody waits any more (client gone, or a job adopted after a restart): the
                # provider billed it all the same, so it goes to the ledger here.
                self._ledger_orphan(job, it, outcome)

    @staticmethod
    def _outcome(job: Job, it: JobItem, info: ModelInfo | None) -> BatchAnswer | BatchItemError:
        if it.status == "ok" and it.output:
            try:
                body = json.loads(it.output)
            except ValueError:
                body = None
            if isinstance(body, dict) and body.get("choices"):
                when = answered_at(body)
                usage, cost = _priced(it.input, body, info, when)
                return BatchAnswer(body, usage, cost, job.batch_id, when)
            return BatchItemError(f"batch {job.batch_id}: the stored answer is not a chat completion")
        return BatchItemError(f"batch {job.batch_id}: {it.error or 'no answer'} ({job.provider_status or job.status})")

    def _ledger_orphan(self, job: Job, it: JobItem, answer: BatchAnswer) -> None:
        """An answer nobody waits for, to the ledger: dated and priced when it was answered, as
        the runner's (``settle_answer``). Dated at the job's creation and settled at the time of
        adoption, the report re-priced its normal price (its saving) at the hour the job was sent."""
        if self.gw.ledger is None:
            return
        body = json.loads(it.input)
        ctx = RequestContext(request=ChatRequest(model=job.model, messages=body.get("messages") or []),
                             request_id=it.item_id)
        settle_answer(ctx, self.gw.catalog, job.model, job.provider, answer.usage, answer.cost, answer.answered)
        self.gw.ledger.submit(*rows_from_context(ctx))

    def _abandon(self, job_id: str, reason: str) -> None:
        for it in self.jobs.items(job_id, "pending"):
            self.jobs.update_item(job_id, it.seq, status="failed", error=reason)
        self.jobs.update(job_id, status="cancelled", error=reason)

    async def _close_if_idle(self) -> None:
        if self._own_apis and not self._active and not self._groups:
            for api in self.runner.take_apis():
                with contextlib.suppress(Exception):
                    await api.aclose()

    # ---------------------------------------------------------------- after a restart
    async def adopt_orphans(self) -> list[str]:
        """Take over gateway jobs nobody has touched for ``stale_after_s``; the ids adopted.

        A submitted one is polled to its end (answers written to the ledger); one never sent is
        abandoned. The claim is a conditional update, so two instances never adopt the same job.
        """
        cutoff = time.time() - self.stale_after_s
        try:
            rows = await asyncio.to_thread(self.jobs.stale, GATEWAY_TASK, cutoff)
        except Exception as exc:  # never let housekeeping fail a request
            log.warning("cannot look for unfinished batch jobs: %s", exc)
            return []
        claimed: list[tuple[str, str]] = []
        for job_id, status, updated in rows:
            if job_id in self._active:
                continue
            if await asyncio.to_thread(self.jobs.claim, job_id, updated, time.time()):
                claimed.append((job_id, status))  # else another instance got there first
        try:
            unsent = {j: await asyncio.to_thread(self.jobs.get, j) for j, status in claimed if status == "created"}
        except Exception as exc:  # claimed, so left for a later pass
            log.warning("cannot read unfinished batch jobs: %s", exc)
            return []
        # The provider's batches are read once for all of them, not once a job: N stale jobs
        # read the same pages N times.
        listings = await uploads.read_listings(self.runner.api, list(unsent.values()), CLOCK_SKEW_S)
        adopted, dropped = [], []
        for job_id, status in claimed:
            recovered = await self._recovered(unsent[job_id], listings) if status == "created" else True
            if recovered is None:
                continue  # the provider could not be asked now: left for a later pass (claimed, so not soon)
            adopted.append(job_id)
            if not recovered:
                dropped.append(job_id)
            else:
                log.info("batch job %s: resuming polling after a restart", job_id)
                self._active.add(job_id)
                self._spawn(self._watch_orphan(job_id))
        if dropped:
            # Their files first (an abandoned job is never looked at again): the uploads no
            # batch will use, recorded or not, stay at the provider otherwise.
            await uploads.discard(self.runner.api, [unsent[j] for j in dropped if j in unsent], listings,
                                  CLOCK_SKEW_S)
        for job_id in dropped:
            await asyncio.to_thread(self._abandon, job_id, "the gateway stopped before this batch was sent")
        return adopted

    async def _recovered(self, job: Job, listings: uploads.Listings) -> bool | None:
        """Whether a ``created`` job's batch was found at the provider after all: the gateway
        stopped between creating it and recording it. That batch runs and is billed, so it is
        polled like any submitted orphan and its answers reach the ledger, instead of the job being
        abandoned. None when the provider could not be asked now (down, rate limited): abandoned,
        a running batch would be billed and never collected."""
        job_id = job.job_id
        try:
            if job.input_file_id is not None and job.provider in listings.later:
                log.warning("batch job %s: could not look for its batch at the provider, will try again", job_id)
                return None
            job = await self.runner.recover_unrecorded(job, listings.batches.get(job.provider, []))
        except UpstreamError as exc:  # only passing failures reach here (recover_unrecorded)
            log.warning("batch job %s: could not look for its batch at the provider, will try again: %s",
                        job_id, exc.message)
            return None
        except Exception as exc:  # housekeeping: a store problem abandons, as before
            log.warning("batch job %s: could not look for its batch: %s", job_id, exc)
            return False
        return job.status == "submitted"

    async def _watch_orphan(self, job_id: str) -> None:
        try:
            job = await self.runner.wait(job_id, self.cfg.poll_interval_s)
            await self._resolve(job, {})
        except Exception as exc:
            log.warning("batch job %s: resuming failed: %s", job_id, exc)
        finally:
            self._active.discard(job_id)
            await self._close_if_idle()


def _priced(request_json: str, body: dict[str, Any], info: ModelInfo | None, when: datetime) -> tuple[Usage, Cost]:
    """A batch answer's usage and cost at the batch price as of ``when`` (``price_answer``), for
    the request stored as the item's input."""
    try:
        request: ChatRequest | None = ChatRequest.from_body(json.loads(request_json))
    except Exception:  # the stored request is ours; if it cannot be read, price what was reported
        request = None
    return price_answer(request, body, info, when)
