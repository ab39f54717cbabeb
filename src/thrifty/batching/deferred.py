"""Deferred work through a provider's Batch API, at batch prices, surviving restarts.

    runner = DeferredRunner(gateway)
    job = await runner.submit(items, task="...", model="cheap")   # idempotent: same input, same job
    job = await runner.wait(job.job_id)                          # polls until finished
    results = runner.results(job.job_id)

One round = one provider batch: the pending items go into a JSONL file (one chat request per
line, ``custom_id`` = ``r<round>-<seq>``), the file is uploaded, the batch is created and
polled. When it ends (completed, expired, failed or cancelled) the output file gives the
answers, priced at the model's batch price as of the time each was answered (a price that varies
in time, DeepSeek's off-peak hours, is read at that hour) and written to the ledger as batch
requests (an answer collected again after a crash is counted once, in the ledger and in the
job's own token and cost totals); items in the error file, missing, or with an invalid answer
go into the next round, up to ``max_resubmits`` times, after which they are reported failed
with the reason, never dropped.
Every step is persisted first (jobs.py), so ``poll`` after a restart continues the same job; a
batch created just before a crash, its id never stored, is found again by its input file and
metadata and adopted (``_created_earlier``), not created and paid a second time; a file uploaded
just before a crash, its id never stored, is found again by its name and deleted
(``drop_unrecorded_upload``, batching/uploads.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from thrifty.batching import packing, uploads
from thrifty.batching.items import Item, coerce_items
from thrifty.batching.jobs import Job, JobItem, JobStore
from thrifty.batching.runner import ItemResult, resolve_target
from thrifty.catalog import Catalog, ModelInfo
from thrifty.cost import Cost, call_cost, priced_at
from thrifty.errors import (
    ConfigError,
    InvalidRequestError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from thrifty.jsonl import text_lines
from thrifty.ledger.records import rows_from_context
from thrifty.ledger.store import SQLStore, open_store
from thrifty.pipeline.accounting import priced_usage, settle
from thrifty.pipeline.context import Attempt, RequestContext
from thrifty.providers.batch_api import BatchProvider, OpenAIBatchAPI
from thrifty.providers.compat import adapt
from thrifty.types import ChatRequest, Usage, cut_short, response_text

if TYPE_CHECKING:
    from thrifty.gateway import Gateway

log = logging.getLogger("thrifty.batching")

RUNNING = ("validating", "in_progress", "finalizing", "cancelling")
ENDED = ("completed", "expired", "failed", "cancelled")
# How far before a job's creation the search for a batch of it looks (``_created_earlier``):
# the provider's clock may differ from ours.
CLOCK_SKEW_S = 3600.0


def job_id_for(model: str, task: str, labels: list[str] | None, items: list[Item]) -> str:
    """Same model, task, labels and items: same job (so running again resumes, never resubmits)."""
    h = hashlib.sha256(json.dumps([model, task, labels, [[i.id, i.input] for i in items]]).encode())
    return "bj_" + h.hexdigest()[:20]


def open_job_store(gateway: Gateway) -> JobStore:
    cfg = gateway.config
    if not cfg.ledger.enabled:
        raise ConfigError("deferred batches need the ledger (ledger.enabled: true): jobs are kept there")
    return JobStore(open_store(cfg.resolve_path(cfg.ledger.path), cfg.ledger.dsn))


def _json_line(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def row_error(row: dict[str, Any]) -> str | None:
    """Why a Batch API output/error line holds no answer; None when it holds one."""
    response = row.get("response")
    err = row.get("error")
    body = response.get("body") if isinstance(response, dict) else None
    if not err and isinstance(body, dict) and isinstance(response, dict) and response.get("status_code") == 200:
        return None
    msg = err.get("message") if isinstance(err, dict) else None
    if msg is None and isinstance(body, dict) and isinstance(body.get("error"), dict):
        msg = body["error"].get("message")
    code = err.get("code") if isinstance(err, dict) else (response or {}).get("status_code")
    return f"{code}: {msg}" if msg else str(code)


def answered_at(body: dict[str, Any]) -> datetime:
    """When the provider produced a Batch API answer: its ``created`` (every chat completion
    carries it), else now. The answer's time rather than the batch's creation: a batch may
    queue for hours, and an hourly price applies to the hour the request ran. Never later than
    now (a provider clock ahead must not reach a dated price change still to come); a
    nonsense value (a string, NaN, past year 9999) reads as now."""
    now = time.time()
    value = body.get("created")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return datetime.fromtimestamp(min(float(value), now), UTC)
    return datetime.fromtimestamp(now, UTC)


def price_answer(request: ChatRequest | None, body: dict[str, Any], info: ModelInfo | None,
                 when: datetime) -> tuple[Usage, Cost]:
    """A Batch API answer's usage and cost at the batch price as of ``when`` (when it was
    answered, ``answered_at``), through the one pricing path of every call
    (``priced_usage``): what the answer's ``usage`` leaves out (or all of it) is counted
    offline from ``request`` and the answer and marked ``estimated``, so a billed answer never
    reaches the ledger as a silent $0. Without the request, what was reported is priced."""
    price = info.price if info else None
    with priced_at(when):
        if request is None:
            usage = Usage.from_openai(body.get("usage"))
            return usage, call_cost(usage, price, batch=True)
        return priced_usage(body.get("usage"), request, body, price, batch=True)


def settle_answer(ctx: RequestContext, catalog: Catalog, model: str, provider: str, usage: Usage, cost: Cost,
                  when: datetime, latency_ms: float = 0.0) -> None:
    """Add a Batch API answer to ``ctx`` as its served attempt and settle it, dated and priced
    at ``when``, the time it was answered (``answered_at``): the report re-prices a batch call
    at its attempt's time (its normal price, so its saving), and the baseline is read at that
    hour too. One helper for the runner's answers and the collector's adopted jobs alike."""
    info = catalog.get(model)
    attempt = Attempt(model=model, provider=provider, started=when.timestamp(), latency_ms=latency_ms, usage=usage,
                      cost_usd=cost.usd, cost_source=cost.source, tier=info.tier if info else None, batch=True, accepted=True)
    ctx.attempts.append(attempt)
    ctx.batch, ctx.strategy = True, "batch"
    with priced_at(when):
        settle(ctx, catalog, attempt)


class DeferredRunner:
    def __init__(self, gateway: Gateway, jobs: JobStore | None = None,
                 apis: dict[str, BatchProvider] | None = None) -> None:
        self.gw = gateway
        self.jobs = jobs or open_job_store(gateway)
        self._apis: dict[str, BatchProvider] = dict(apis or {})
        self.cfg = gateway.config.batching.deferred
        self._left_alone: set[str] = set()  # markers of other runs' uploads already logged as left alone
        # The ledger's database, written directly (see _ledger). Kept from the start: a gateway
        # being closed (Ctrl-C) drops its ``ledger`` while a collection may still be running.
        self._ledger_store: SQLStore | None = gateway.ledger.store if gateway.ledger is not None else None

    def api(self, provider: str) -> BatchProvider:
        if provider not in self._apis:
            pcfg = self.gw.config.providers.get(provider)
            if pcfg is None:
                raise ConfigError(f"provider {provider!r} is not configured: no Batch API to call")
            self._apis[provider] = OpenAIBatchAPI(provider, pcfg, self.gw.redactor)
        return self._apis[provider]

    async def aclose(self) -> None:
        for api in self._apis.values():
            await api.aclose()
        store: SQLStore = self.jobs.store
        await asyncio.to_thread(store.close)

    # ---------------------------------------------------------------- submit / poll
    async def submit(self, items: list[Any], *, task: str, model: str | None = None,
                     labels: list[str] | None = None) -> Job:
        """Create the job (or find the identical one) and send its first batch."""
        checked = coerce_items(items)
        target = resolve_target(self.gw, model, None)
        info = self.gw.catalog.get(target)
        if info is None:
            raise InvalidRequestError(f"--deferred needs a model the catalog knows (got {target!r}); routes cannot "
                                      "be used with provider batches")
        job_id = job_id_for(info.name, task, labels, checked)
        job = await asyncio.to_thread(self.jobs.find, job_id)
        if job is None:
            job = await asyncio.to_thread(self.jobs.create, job_id, info.name, info.provider, task, labels, checked)
        elif job.done:
            # Running the same work again retries what failed (lines that failed every round, a
            # cancelled job's rest), as a packed run does; answered items keep their answers.
            # Without this the same command returned the same failures for ever, and --restart
            # is refused for deferred runs: those items could never be run again.
            reopened = await asyncio.to_thread(self.jobs.reopen_failed, job_id, job.round + 1)
            if reopened:
                log.info("batch job %s: %d failed items sent again (round %d)", job_id, reopened, job.round + 1)
        return await self.poll(job.job_id)

    async def poll(self, job_id: str) -> Job:
        """Advance the job one step: send its round if not sent, else check the running batch."""
        job = await asyncio.to_thread(self.jobs.get, job_id)
        if job.status == "created":
            await self._send_round(job)
        elif job.status == "submitted":
            await self._check(job)
        elif job.status == "cancelling":
            # The provider takes a while to stop a batch (OpenAI: up to 10 minutes, "cancelling");
            # its answers so far are collected once it reports "cancelled".
            await self._check(job, cancelled=True)
        return await asyncio.to_thread(self.jobs.get, job_id)

    async def wait(self, job_id: str, interval: float | None = None, timeout: float | None = None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                job = await self.poll(job_id)
            except UpstreamError as exc:
                # The provider is down for a moment (5xx, 429, timeout, dropped connection): keep
                # the job and try again. A 4xx (unknown batch, refused key) will not heal by
                # waiting, possibly for ever: the caller gets it (the job stays as it was stored).
                if not (exc.retryable or isinstance(exc, UpstreamTimeoutError | UpstreamProtocolError)):
                    raise
                log.warning("batch job %s: poll failed, will retry: %s", job_id, exc.message)
                job = await asyncio.to_thread(self.jobs.get, job_id)
            if job.done or (deadline is not None and time.monotonic() >= deadline):
                return job
            await asyncio.sleep(interval if interval is not None else self.cfg.poll_interval_s)

    async def cancel(self, job_id: str) -> Job:
        job = await asyncio.to_thread(self.jobs.get, job_id)
        if job.done:
            return job
        if job.status == "cancelling":
            return await self.poll(job_id)
        # A run interrupted between creating this round's batch and recording it left the batch
        # running (billed): found, it is recorded, then cancelled and collected below. The
        # provider's batches are read as the collector reads them for the jobs a stop left.
        listings = await uploads.read_listings(self.api, [job], CLOCK_SKEW_S)
        if job.provider in listings.later:
            # Down for a moment: cancelling now could leave that batch running, billed, uncollected.
            raise UpstreamError(f"batch job {job_id}: could not look for its batch at {job.provider} (see the log); "
                                "try the cancel again", retryable=True)
        job = await self.recover_unrecorded(job, listings.batches.get(job.provider, []))
        if job.status == "submitted" and job.batch_id:
            if job.provider_status not in ENDED:  # an adopted batch may have ended: nothing to stop
                await self.api(job.provider).cancel_batch(job.batch_id)
            await asyncio.to_thread(self.jobs.update, job.job_id, status="cancelling")
            # Collect what the batch finished before the cancel; the rest is reported, not retried.
            job = await asyncio.to_thread(self.jobs.get, job_id)
            await self._check(job, cancelled=True)
        else:
            # A cancelled job is never sent: its upload, recorded (no batch was found using it) or
            # not (an interrupted run's), would stay at the provider for good. The collector's
            # cleanup of an abandoned job; a file not deleted now (provider down) is logged.
            await uploads.discard(self.api, [job], listings, CLOCK_SKEW_S)
            await asyncio.to_thread(self._finish, job, "cancelled", "cancelled before it was sent")
        return await asyncio.to_thread(self.jobs.get, job_id)

    async def recover_unrecorded(self, job: Job, listing: list[dict[str, Any]] | None = None) -> Job:
        """``job`` with the batch an interrupted run created for its current round and did not
        record (``_created_earlier``) recorded, when there is one; ``job`` as it was otherwise.
        Only a ``created`` job whose input file was uploaded can have one. ``listing``: the
        provider's batches already read (``uploads.list_batches_since``), searched instead of
        listing them again (the collector reads them once for every job a stop left)."""
        if job.status != "created" or job.input_file_id is None:
            return job
        found = await self._created_earlier(self.api(job.provider), job, job.input_file_id, listing)
        if found is None:
            return job
        await asyncio.to_thread(self.jobs.submitted, job.job_id, job.round, str(found["id"]),
                                str(found.get("status")))
        return await asyncio.to_thread(self.jobs.get, job.job_id)

    def results(self, job_id: str) -> list[ItemResult]:
        job = self.jobs.get(job_id)
        out = []
        for it in self.jobs.items(job.job_id):
            done = it.status == "ok"
            out.append(ItemResult(
                it.item_id, it.output if done else None, it.status if it.status != "pending" else "pending",
                "batch_api" if done else ("failed" if it.status == "failed" else "pending"),
                it.cost_usd, float(it.prompt_tokens), float(it.completion_tokens), it.tries, it.error,
            ))
        return out

    # ---------------------------------------------------------------- steps
    def _request(self, job: Job, it: JobItem) -> ChatRequest:
        """The chat request an item's batch line carries."""
        params = {"temperature": 0, "max_tokens": self.gw.config.batching.max_output_tokens_per_item}
        return ChatRequest(model=job.model, messages=packing.single_messages(job.task, Item(it.item_id, it.input),
                                                                              job.labels), params=params)

    def _line(self, job: Job, it: JobItem) -> dict[str, Any]:
        info = self.gw.catalog.get(job.model)
        assert info is not None
        req = self._request(job, it)
        return {"custom_id": f"r{job.round}-{it.seq}", "method": "POST", "url": self.cfg.endpoint,
                "body": self._adapt(job, req.to_body(info.upstream_model, stream=False))}

    def _adapt(self, job: Job, body: dict[str, Any]) -> dict[str, Any]:
        """The body as the job's provider accepts it (``providers.NAME.compat``), as for normal calls."""
        pcfg = self.gw.config.providers.get(job.provider)
        return adapt(body, pcfg.compat) if pcfg is not None else body

    async def _send_round(self, job: Job) -> None:
        pending = await asyncio.to_thread(self.jobs.items, job.job_id, "pending")
        if not pending:
            await asyncio.to_thread(self._finish, job, "finished", None)
            return
        api = self.api(job.provider)
        file_id = job.input_file_id
        if file_id is None:
            file_id = await self._upload(job, api, pending)
            if file_id is None:
                return  # another run is uploading this round, or took it over: its round
        elif (await self.recover_unrecorded(job)).status != "created":
            # The file was uploaded by an earlier run: one that died after the provider created
            # the batch but before its id was stored left that batch running, and billed. Created
            # again, the lines were paid twice and the first batch's answers never collected.
            return
        batch = await api.create_batch(file_id, self.cfg.endpoint, self.cfg.completion_window, self._metadata(job))
        # The try is counted with the batch it is, in one transaction (JobStore.submitted).
        if not await asyncio.to_thread(self.jobs.submitted, job.job_id, job.round, str(batch["id"]),
                                       str(batch.get("status"))):
            log.warning("batch job %s: round %d was submitted or cancelled by another process meanwhile; "
                        "batch %s is not used and is cancelled", job.job_id, job.round, batch["id"])
            with contextlib.suppress(UpstreamError):
                await api.cancel_batch(str(batch["id"]))

    async def _upload(self, job: Job, api: BatchProvider, pending: list[JobItem]) -> str | None:
        """Upload round ``job.round``'s file; its id, recorded. None, with nothing uploaded or our
        upload deleted, when another run owns the round: its upload may be under way (a second
        run of the command, a `batch status` poll elsewhere), or it took the round over from ours."""
        pcfg = self.gw.config.providers.get(job.provider)
        if uploads.under_way(job, pcfg.timeout_s if pcfg is not None else 120.0, time.time()):
            if job.provider_status not in self._left_alone:
                self._left_alone.add(str(job.provider_status))
                log.info("batch job %s: round %d is being uploaded by another run (%s); left to it",
                         job.job_id, job.round, job.provider_status)
            return None
        await self.drop_unrecorded_upload(job)
        data = "".join(json.dumps(self._line(job, it), ensure_ascii=False) + "\n" for it in pending)
        # The upload's name is stored before it starts and its id right after: a process
        # killed in between left a file at the provider no run knew of (storage against
        # the account's quota, holding the items' data); the next run finds it by the name.
        # Both writes are conditional, so of two runs racing for the round one uploads.
        name = uploads.upload_name(job)
        if not await asyncio.to_thread(self.jobs.update, job.job_id, where=uploads.unchanged(job),
                                       provider_status=uploads.marker(name)):
            return None
        try:
            file_id = await api.upload_file(data.encode("utf-8"), name)
            ours = await asyncio.to_thread(self.jobs.update, job.job_id, where=uploads.own(name), input_file_id=file_id,
                                           provider_status=None)
        except BaseException:
            # Our upload is over, its id unrecorded: marked so, the next run (or poll) deletes the
            # file at once instead of waiting for it as for an upload still under way. Written
            # in place (not in a thread): a Ctrl-C's cancellation must not skip it.
            with contextlib.suppress(Exception):
                self.jobs.update(job.job_id, where=uploads.own(name), provider_status=uploads.interrupted(name))
            raise
        if not ours and (await asyncio.to_thread(self.jobs.get, job.job_id)).input_file_id == file_id:
            # No row matched, yet the id is ours: the write was committed and a dropped connection
            # had the store run it again (PostgreSQL, SQLStore._run), when the marker was gone.
            ours = True
        if not ours:
            log.warning("batch job %s: round %d was taken over by another run while uploading; %s is deleted",
                        job.job_id, job.round, file_id)
            await uploads.delete_files(api, [file_id])
            return None
        return file_id

    async def drop_unrecorded_upload(self, job: Job) -> list[str]:
        """Delete the file an interrupted run uploaded for ``job``'s round and never recorded
        (``uploads.marked_name``); the ids deleted. A provider that cannot list its files: the
        file is left (logged). A passing failure is raised, the name kept for the next try."""
        name = uploads.marked_name(job)
        if name is None:
            return []
        api = self.api(job.provider)
        found = await uploads.files_named(api, {name}, job.created - CLOCK_SKEW_S)
        gone = await uploads.delete_files(api, found or [])
        if gone:
            log.info("batch job %s: deleted %s, uploaded by a run interrupted before recording it",
                     job.job_id, ", ".join(gone))
        return gone

    @staticmethod
    def _metadata(job: Job) -> dict[str, str]:
        """What a round's batch carries, so that ``_created_earlier`` can tell it apart."""
        return {"thrifty_job": job.job_id, "round": str(job.round)}

    async def _created_earlier(self, api: BatchProvider, job: Job, file_id: str,
                               listing: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
        """The batch an earlier run created for this round from ``file_id`` (newest first) and
        did not record, if the provider lists one to adopt: any status but ``failed`` (a failed
        batch answered and billed nothing, like a refused create: a new one is created). An
        expired or cancelled one holds answers that were billed: they are collected, as for a
        batch that ended so while this job polled it. Looked for only on this rare path (a round
        sent again with its file kept), so the normal path makes no extra call. A provider that
        cannot list its batches, or a list that fails: one line logged, and None (a batch is
        created as before, never worse than without the search)."""
        try:
            if listing is None:
                listing = await uploads.list_batches_since(api, job.created - CLOCK_SKEW_S)
            found = uploads.matching(listing, file_id, self._metadata(job))
        except UpstreamError as exc:
            if uploads.passing(exc):
                # Down for a moment (5xx, 429, a timeout, a dropped connection): creating now could
                # pay the lines twice. Raised: ``wait`` polls again later, the collector leaves the
                # job for its next pass. No list endpoint (404/405), a key not allowed to list, a
                # list of another shape: those will not heal, so a batch is created as before.
                raise
            log.warning("batch job %s: could not list %s's batches to look for one an interrupted run created for "
                        "round %d (%s); going on without it", job.job_id, job.provider, job.round, exc.message)
            return None
        usable = [b for b in found if b.get("status") != "failed" and isinstance(b.get("id"), str)]
        if usable:
            log.info("batch job %s: round %d's batch %s (%s), created by a run interrupted before recording it, "
                     "is adopted", job.job_id, job.round, usable[0]["id"], usable[0].get("status"))
            return usable[0]
        return None

    async def _check(self, job: Job, cancelled: bool = False) -> None:
        assert job.batch_id is not None
        api = self.api(job.provider)
        batch = await api.get_batch(job.batch_id)
        status = str(batch.get("status"))
        await asyncio.to_thread(self.jobs.update, job.job_id, provider_status=status)
        if status in RUNNING:
            return
        answered: dict[str, dict[str, Any]] = {}
        for key in ("output_file_id", "error_file_id"):
            if batch.get(key):
                try:
                    raw = await api.file_content(str(batch[key]))
                except UpstreamError as exc:
                    # Another run polling the same job (a `batch status` elsewhere) collected this
                    # round and deleted its files meanwhile (``delete_files``): nothing left to do.
                    if getattr(exc, "upstream_status", None) != 404:
                        raise
                    now = await asyncio.to_thread(self.jobs.get, job.job_id)
                    if (now.status, now.round, now.batch_id) != (job.status, job.round, job.batch_id):
                        return
                    raise
                for line in text_lines(raw.decode("utf-8", "replace")):
                    if line.strip():
                        row = _json_line(line)
                        if row is None:  # its item counts as missing: resubmitted, then reported
                            log.warning("batch %s: skipped a line of %s that is not a JSON object",
                                        job.batch_id, key)
                            continue
                        answered[str(row.get("custom_id"))] = row
        stop = cancelled or status == "cancelled"
        problem = None
        if status == "failed":
            errs = (batch.get("errors") or {}).get("data") or []
            problem = "batch failed: " + "; ".join(str(e.get("message")) for e in errs[:3] if isinstance(e, dict))
        await asyncio.to_thread(self._collect, job, answered, stop, problem)
        if self.cfg.delete_files:
            await self._delete_round_files(api, job, batch)

    async def _delete_round_files(self, api: BatchProvider, job: Job, batch: dict[str, Any]) -> None:
        """Delete the round's input file and its batch's output and error files at the provider,
        once ``_collect`` has recorded the answers (ledger rows, items, the job moved on): OpenAI
        keeps files, the prompts and answers, until deleted. Only after the record: a crash
        before it must find the output file again. Only this job's own files: the input it
        recorded, and the files of the batch it recorded. A failure is logged, never raised."""
        ids = [str(f) for f in (job.input_file_id, batch.get("output_file_id"), batch.get("error_file_id")) if f]
        gone = await uploads.delete_files(api, ids, f"of batch job {job.job_id}'s finished round {job.round}")
        if gone:
            log.info("batch job %s: round %d's files deleted at %s: %s", job.job_id, job.round, job.provider,
                     ", ".join(gone))

    def _collect(self, job: Job, answered: dict[str, dict[str, Any]], stop: bool, problem: str | None) -> None:
        """Record answers; retry or fail the rest; move the job to its next round or finish it."""
        retry = False
        for it in self.jobs.items(job.job_id, "pending"):
            row = answered.get(f"r{job.round}-{it.seq}")
            output, error = self._record(job, it, row) if row is not None else (None, problem or "missing from the results")
            if output is not None:
                continue
            if stop or it.tries > self.cfg.max_resubmits:
                self.jobs.update_item(job.job_id, it.seq, status="failed", error=error)
            else:
                self.jobs.update_item(job.job_id, it.seq, error=error)
                retry = True
        if retry and not stop:
            self.jobs.update(job.job_id, status="created", round=job.round + 1, input_file_id=None, batch_id=None,
                             provider_status=None)
        else:
            self._finish(job, "cancelled" if stop else "finished", None)

    def _record(self, job: Job, it: JobItem, row: dict[str, Any]) -> tuple[str | None, str]:
        error = row_error(row)
        if error is not None:
            return None, error
        body = row["response"]["body"]
        when = answered_at(body)
        usage, cost = price_answer(self._request(job, it), body, self.gw.catalog.get(job.model), when)
        item = Item(it.item_id, it.input)
        cut = cut_short(body)
        output = None if cut else packing.valid_output(response_text(body), item, job.labels, None)
        if self._ledger(job, it, usage, cost, when):
            prompt = it.prompt_tokens + usage.prompt_tokens
            completion = it.completion_tokens + usage.completion_tokens
            spent = None if cost.usd is None or it.cost_usd is None else it.cost_usd + cost.usd
        else:
            prompt, completion, spent = self._ledger_totals(job, it)
        self.jobs.update_item(
            job.job_id, it.seq, prompt_tokens=prompt, completion_tokens=completion, cost_usd=spent,
            **({"status": "ok", "output": output, "error": None} if output is not None else {}),
        )
        if output is not None:
            return output, ""
        return None, packing.cut_why(cut) if cut else "invalid answer"

    def _request_id(self, job: Job, seq: int, round_no: int) -> str:
        """The ledger request id of item ``seq``'s answer in round ``round_no`` (one row each)."""
        return f"{job.job_id}-{seq}-r{round_no}"

    def _ledger_totals(self, job: Job, it: JobItem) -> tuple[int, int, float | None]:
        """The item's tokens and cost over every round so far, read back from its ledger rows
        (one per answer), for an answer collected again (its row was already there). Adding it
        to the stored totals counted it twice when a crash came after the item was updated but
        before the job moved on (an invalid answer stays pending, so the next poll collects it
        again); not adding it lost it when the crash came between the row and the update."""
        assert self._ledger_store is not None
        ids = [self._request_id(job, it.seq, r) for r in range(1, job.round + 1)]
        rows = self._ledger_store.query(
            "SELECT COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cost_usd), 0),"
            f" COUNT(*) - COUNT(cost_usd) FROM requests WHERE request_id IN ({', '.join('?' * len(ids))})", ids)
        prompt, completion, spent, unknown = rows[0]
        return int(prompt), int(completion), None if int(unknown) else float(spent)

    def _ledger(self, job: Job, it: JobItem, usage: Usage, cost: Cost, when: datetime) -> bool:
        """Write the answer's row, durably, before the caller marks the item answered. Through
        the gateway's queued writer, an interruption during a collection (Ctrl-C closes the
        gateway while the collecting thread runs on) marked items ok whose rows were then
        dropped: their spend was never in the ledger, and no later run would record it. Now a
        crash between the two leaves the item pending; the next poll collects it again under
        the same request id, which the ledger keeps once (never two rows for one answer). A
        database error stops the collection the same way (the job stays as stored). True when
        the row is new (or there is no ledger): False for an answer collected again."""
        if self._ledger_store is None:
            return True
        ctx = RequestContext(request=ChatRequest(model=job.model, messages=[{"role": "user", "content": ""}]),
                             request_id=self._request_id(job, it.seq, job.round))
        ctx.task = "batch"
        settle_answer(ctx, self.gw.catalog, job.model, job.provider, usage, cost, when)
        req, attempts = rows_from_context(ctx)
        return self._ledger_store.write([req], attempts) > 0

    def _finish(self, job: Job, status: str, error: str | None) -> None:
        if status == "cancelled":
            for it in self.jobs.items(job.job_id, "pending"):
                self.jobs.update_item(job.job_id, it.seq, status="failed", error=it.error or "cancelled")
        self.jobs.update(job.job_id, status=status, error=error)


async def run_deferred(gateway: Gateway, items: list[Any], *, task: str, model: str | None = None,
                       labels: list[str] | None = None, interval: float | None = None,
                       timeout: float | None = None) -> tuple[Job, list[ItemResult]]:
    """Submit (or resume) and wait: the Python API of ``thrifty batch run --deferred``."""
    runner = DeferredRunner(gateway)
    try:
        job = await runner.submit(items, task=task, model=model, labels=labels)
        job = await runner.wait(job.job_id, interval, timeout)
        return job, await asyncio.to_thread(runner.results, job.job_id)
    finally:
        await runner.aclose()
