"""Provider Batch APIs (OpenAI-style: upload a JSONL file, create a batch, poll, fetch files).

A separate small interface from the chat ``Provider``: few providers have it, and its calls
are about files and jobs, not completions. Like providers, implementations raise only
``thrifty.errors.UpstreamError`` subclasses. Like the chat provider, ``OpenAIBatchAPI`` keeps one
aiohttp session per event loop (a session is bound to the loop that made it).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlencode

import aiohttp

from thrifty.config import ProviderConfig
from thrifty.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeoutError
from thrifty.loops import LoopSessions
from thrifty.providers.openai_compat import OpenAICompatProvider
from thrifty.redact import Redactor


@runtime_checkable
class BatchProvider(Protocol):
    name: str

    async def upload_file(self, data: bytes, filename: str) -> str:
        """Upload a JSONL file of requests (purpose ``batch``); its file id."""
        ...

    async def create_batch(self, input_file_id: str, endpoint: str, completion_window: str,
                           metadata: dict[str, str] | None = None) -> dict[str, Any]:
        """Start a batch; the provider's batch object (``id``, ``status``...)."""
        ...

    async def get_batch(self, batch_id: str) -> dict[str, Any]: ...

    async def list_batches(self, limit: int, after: str | None = None) -> dict[str, Any]:
        """One page of the account's batches, newest first (OpenAI's list: ``data``,
        ``has_more``, ``last_id``); ``after`` is the previous page's ``last_id``."""
        ...

    async def cancel_batch(self, batch_id: str) -> dict[str, Any]: ...

    async def file_content(self, file_id: str) -> bytes: ...

    async def aclose(self) -> None: ...


class OpenAIBatchAPI:
    """OpenAI's ``/files`` and ``/batches`` endpoints under a provider's ``base_url``."""

    def __init__(self, name: str, config: ProviderConfig, redactor: Redactor | None = None) -> None:
        self.name = name
        self.config = config
        self._redact = redactor or Redactor()
        headers = dict(config.headers)
        if config.api_key:
            headers["authorization"] = f"Bearer {config.api_key}"
        self._headers = headers
        self._sessions = LoopSessions(self._new_session, what="a batch API connection pool")
        # Reuse the chat provider's mapping of HTTP errors to the thrifty error tree (it also adds
        # the provider's secrets to the shared redactor).
        self._errors = OpenAICompatProvider(name, config, self._redact)

    def _new_session(self) -> aiohttp.ClientSession:
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s, sock_connect=self.config.connect_timeout_s)
        return aiohttp.ClientSession(headers=self._headers, timeout=timeout)

    def _get_session(self) -> aiohttp.ClientSession:
        """The running loop's session."""
        return self._sessions.get()

    async def _request(self, method: str, path: str, *, json_body: Any = None, data: Any = None) -> bytes:
        try:
            async with self._get_session().request(method, self._errors.url(path), json=json_body,
                                                   data=data, allow_redirects=False) as resp:
                await self._errors.check_status(resp)  # redirects are not followed: see check_status
                return await resp.read()
        except UpstreamError:
            raise
        except TimeoutError:
            raise UpstreamTimeoutError(f"{self.name}: {path} took more than {self.config.timeout_s:g}s") from None
        except aiohttp.ClientError as exc:
            raise self._errors._connection_error(exc) from None

    async def _json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        raw = await self._request(method, path, **kw)
        try:
            data = json.loads(raw)
        except ValueError:
            raise UpstreamProtocolError(f"{self.name}: {path} answered something that is not JSON") from None
        if not isinstance(data, dict):
            raise UpstreamProtocolError(f"{self.name}: {path} answered {type(data).__name__}, not an object")
        return data

    async def upload_file(self, data: bytes, filename: str) -> str:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", data, filename=filename, content_type="application/jsonl")
        found = await self._json("POST", "/files", data=form)
        if not isinstance(found.get("id"), str):
            raise UpstreamProtocolError(f"{self.name}: file upload answered no id")
        return str(found["id"])

    async def create_batch(self, input_file_id: str, endpoint: str, completion_window: str,
                           metadata: dict[str, str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"input_file_id": input_file_id, "endpoint": endpoint,
                                "completion_window": completion_window}
        if metadata:
            body["metadata"] = metadata
        return await self._json("POST", "/batches", json_body=body)

    async def get_batch(self, batch_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/batches/{batch_id}")

    async def list_batches(self, limit: int, after: str | None = None) -> dict[str, Any]:
        query = urlencode({"limit": limit, **({"after": after} if after else {})})
        page = await self._json("GET", f"/batches?{query}")
        if not isinstance(page.get("data"), list):
            raise UpstreamProtocolError(f"{self.name}: /batches answered a list without 'data'")
        return page

    async def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return await self._json("POST", f"/batches/{batch_id}/cancel")

    async def file_content(self, file_id: str) -> bytes:
        return await self._request("GET", f"/files/{file_id}/content")

    async def list_files(self, limit: int, after: str | None = None) -> dict[str, Any]:
        """One page of the batch files, newest first (what a crashed run's cleanup searches)."""
        query = urlencode({"purpose": "batch", "limit": limit, "order": "desc", **({"after": after} if after else {})})
        page = await self._json("GET", f"/files?{query}")
        if not isinstance(page.get("data"), list):
            raise UpstreamProtocolError(f"{self.name}: /files answered a list without 'data'")
        return page

    async def delete_file(self, file_id: str) -> None:
        await self._json("DELETE", f"/files/{file_id}")

    async def aclose(self) -> None:
        """Close the sessions of every event loop this client was used from."""
        await self._sessions.aclose()


LIST_PAGE = 100  # OpenAI's largest page of batches
LIST_PAGES = 10  # at most 1,000 batches looked at: an account's whole history is never listed


def created_from(batch: Mapping[str, Any], input_file_id: str, metadata: Mapping[str, str]) -> bool:
    """``batch`` was created from ``input_file_id`` with ``metadata``. The file id decides (a
    round's file is uploaded for that round alone); metadata, when the provider keeps any, must
    agree too: a provider that drops it (some OpenAI-compatible ones) still finds the batch."""
    if batch.get("input_file_id") != input_file_id:
        return False
    kept = batch.get("metadata")
    if not isinstance(kept, Mapping) or not kept:
        return True
    return all(kept.get(k) == v for k, v in metadata.items())


async def read_pages(fetch: Any, page_size: int, max_pages: int, since: float) -> list[dict[str, Any]]:
    """Every row of a cursor list (``fetch(limit, after)``: batches, files) down to the first
    newest-first page reaching a row created before ``since`` (Unix time: none of interest can
    be older), the last page, or ``max_pages``. Raises ``UpstreamError`` when a page cannot be
    read (no list endpoint: a 404 or 405)."""
    rows: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(max_pages):
        page = await fetch(page_size, after)
        data = [r for r in page.get("data") or [] if isinstance(r, dict)]
        rows += data
        created = [r["created_at"] for r in data if isinstance(r.get("created_at"), int | float)]
        last = page.get("last_id") or (data[-1].get("id") if data else None)
        if not page.get("has_more") or not isinstance(last, str) or (newest_first(created) and min(created) < since):
            break
        after = last
    return rows


def newest_first(created: list[float]) -> bool:
    """``created`` (a page's ``created_at`` values, in order) never increases: a page known to be
    newest first, so an old row ends the search. A provider that ignores ``order`` and lists
    oldest first starts with old rows: stopping there would never reach this hour's."""
    return bool(created) and all(a >= b for a, b in itertools.pairwise(created))
