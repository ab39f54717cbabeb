"""Provider files and batches a crashed run left behind: found again in one listing each.

A round's input file is uploaded under a name made for that one attempt (``upload_name``: the
job, the round and a random nonce), and the name is stored in the job row first (its
``provider_status`` reads ``uploading <name>`` while the job is ``created``); the file id is
stored right after the upload. A process killed in between leaves the name: the next run (or the
gateway collector's ``adopt_orphans``) lists the provider's batch files and deletes those with
that exact name before uploading again. Only a name this job stored, or the file id it recorded,
is ever deleted: no file another program (or another thrifty on the same account) uploaded.

``list_batches_since`` reads the provider's batch list once (paged as the provider pages it),
so every job a restart finds unrecorded is matched against the same listing (``matching``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from thrifty.batching.jobs import Job
from thrifty.errors import UpstreamError, UpstreamTimeoutError
from thrifty.providers.batch_api import LIST_PAGE, LIST_PAGES, BatchProvider, created_from, read_pages

log = logging.getLogger("thrifty.batching")

MARKER = "uploading "
INTERRUPTED = "interrupted upload "
# How far the clocks of two hosts sharing one ledger database may differ (a marker's age is our
# clock against the marking host's). The provider's clock plays no part: CLOCK_SKEW_S (an hour)
# would make a rerun after a hard kill wait that long for an upload that is long over.
LIVE_SKEW_S = 60.0
FILE_PAGE = 1000  # OpenAI pages files up to 10,000; 1,000 keeps one answer small
FILE_PAGES = 10


def upload_name(job: Job) -> str:
    """The name of round ``job.round``'s input file: unique to this upload attempt (the nonce),
    so a cleanup never mistakes another attempt's (or another ledger's same job's) file for it."""
    return f"{job.job_id}-r{job.round}-{uuid.uuid4().hex[:12]}.jsonl"


def marker(name: str) -> str:
    """What ``provider_status`` holds while an upload named ``name`` may be at the provider."""
    return MARKER + name


def interrupted(name: str) -> str:
    """What ``provider_status`` holds once the run uploading ``name`` saw its upload (or the id's
    write) fail: nobody is uploading it any more, so the next run cleans it up at once."""
    return INTERRUPTED + name


def marked_name(job: Job) -> str | None:
    """The name of an upload a run began for ``job`` and never recorded the id of, if any."""
    status = job.provider_status
    if job.status == "created" and job.input_file_id is None and status:
        for prefix in (MARKER, INTERRUPTED):
            if status.startswith(prefix):
                return status[len(prefix):]
    return None


def under_way(job: Job, timeout_s: float, now: float) -> bool:
    """``job``'s marked upload may still be running in another run (or another terminal's
    ``batch status``): marked less than the client's ``timeout_s`` (no upload outlives it) plus
    ``LIVE_SKEW_S`` ago. Deleting its file then failed that run's create, and its id write
    wiped the second run's record (an orphan); it is left to its run, looked at next poll."""
    status = job.provider_status or ""
    return marked_name(job) is not None and status.startswith(MARKER) and now - job.updated < timeout_s + LIVE_SKEW_S


def unchanged(job: Job) -> dict[str, Any]:
    """``JobStore.update``'s ``where`` for "the round is as ``job`` read it": a run starting an
    upload takes the round only if no other run started (or recorded) one meanwhile."""
    return {"status": "created", "round": job.round, "input_file_id": None, "provider_status": job.provider_status}


def own(name: str) -> dict[str, Any]:
    """``JobStore.update``'s ``where`` for "the round is still the upload ``name``'s": another
    run that judged it interrupted and took the round over has replaced the marker."""
    return {"status": "created", "provider_status": marker(name)}


def passing(exc: UpstreamError) -> bool:
    """A failure that may heal by asking again (5xx, 429, timeout, dropped connection)."""
    return exc.retryable or isinstance(exc, UpstreamTimeoutError)


@runtime_checkable
class FileCleanup(Protocol):
    """The two file calls a cleanup needs (a Batch API client without them is never cleaned)."""

    async def list_files(self, limit: int, after: str | None = None) -> dict[str, Any]: ...

    async def delete_file(self, file_id: str) -> None: ...


async def list_batches_since(api: BatchProvider, since: float) -> list[dict[str, Any]]:
    """The provider's batches back to ``since``, read once. Raises ``UpstreamError``."""
    return await read_pages(api.list_batches, LIST_PAGE, LIST_PAGES, since)


def matching(listing: Sequence[Mapping[str, Any]], input_file_id: str,
             metadata: Mapping[str, str]) -> list[dict[str, Any]]:
    """The batches of ``listing`` created from ``input_file_id`` with ``metadata``, newest first."""
    return [dict(b) for b in listing if created_from(b, input_file_id, metadata)]


async def files_named(api: BatchProvider, names: set[str], since: float) -> list[str] | None:
    """The ids of the provider's batch files named one of ``names`` (uploaded since ``since``);
    None when the provider cannot list its files (no list endpoint, a refused key: logged).
    A passing failure is raised: the caller tries again later rather than lose the names."""
    if not names:
        return []
    if not isinstance(api, FileCleanup):
        return None
    try:
        rows = await read_pages(api.list_files, FILE_PAGE, FILE_PAGES, since)
    except UpstreamError as exc:
        if passing(exc):
            raise
        log.warning("could not list %s's files to delete an upload an interrupted run never recorded (%s)",
                    getattr(api, "name", "the provider"), exc.message)
        return None
    return [str(r["id"]) for r in rows if r.get("filename") in names and isinstance(r.get("id"), str)]


async def delete_files(api: BatchProvider, file_ids: Iterable[str],
                       whose: str = "left by an interrupted run") -> list[str]:
    """Delete ``file_ids`` (each one thrifty uploaded, or its batch's output); the ids deleted or
    already gone. A file that cannot be deleted now is logged (``whose`` says what it is) and
    left: storage, never a double payment, never a failed job."""
    gone: list[str] = []
    if not isinstance(api, FileCleanup):
        return gone
    for file_id in file_ids:
        try:
            await api.delete_file(file_id)
        except Exception as exc:
            if getattr(exc, "upstream_status", None) == 404:  # gone already (an earlier pass, an expiry)
                gone.append(file_id)
                continue
            log.warning("could not delete %s's file %s, %s: %s", getattr(api, "name", "the provider"), file_id,
                        whose, exc.message if isinstance(exc, UpstreamError) else f"{type(exc).__name__}: {exc}")
            continue
        gone.append(file_id)
    return gone


@dataclass
class Listings:
    """Each provider's batches, read once for every job a stop left ``created`` with a file."""

    batches: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    later: set[str] = field(default_factory=set)  # failed for a moment: their jobs wait for a later pass
    blind: set[str] = field(default_factory=set)  # cannot list: nothing found, recorded files kept


async def read_listings(api: Callable[[str], BatchProvider], jobs: Sequence[Job], skew_s: float) -> Listings:
    """One listing per provider of ``jobs`` that uploaded a file (only those can have a batch
    nobody recorded), back to the oldest of them. Listed once per job, a restart that found N
    stale jobs read the same pages N times."""
    out = Listings()
    since: dict[str, float] = {}
    for job in jobs:
        if job.input_file_id is not None:
            since[job.provider] = min(since.get(job.provider, job.created), job.created)
    for provider, oldest in since.items():
        try:
            out.batches[provider] = await list_batches_since(api(provider), oldest - skew_s)
        except UpstreamError as exc:
            if passing(exc):
                out.later.add(provider)
            else:
                out.blind.add(provider)
            log.warning("could not list %s's batches to look for those interrupted runs created (%s)",
                        provider, exc.message)
        except Exception as exc:  # housekeeping: a client without a list is a provider that cannot list
            out.blind.add(provider)
            log.warning("could not list %s's batches: %s", provider, exc)
    return out


async def discard(api: Callable[[str], BatchProvider], jobs: Sequence[Job], listings: Listings,
                  skew_s: float) -> list[str]:
    """Delete the files of ``jobs`` (``created``, about to be abandoned: no batch of theirs was
    found): each one's recorded input file, when its provider's batches could be searched (else a
    batch may still use it), and the upload it never recorded (``marked_name``), found with one
    file listing per provider. The ids deleted; a failure is logged, never raised."""
    gone: list[str] = []
    by_provider: dict[str, list[Job]] = {}
    for job in jobs:
        by_provider.setdefault(job.provider, []).append(job)
    for provider, group in by_provider.items():
        try:
            client = api(provider)
            recorded = [j.input_file_id for j in group if j.input_file_id and provider not in listings.blind]
            names = {n for n in map(marked_name, group) if n}
            found = await files_named(client, names, min(j.created for j in group) - skew_s)
            gone += await delete_files(client, [*recorded, *(found or [])])
        except Exception as exc:
            log.warning("could not delete the files abandoned batch jobs left at %s: %s", provider, exc)
    return gone
