"""A synchronous httpx transport that serves requests from an ASGI app in-process.

httpx only ships an async ASGI transport; a sync ``openai.OpenAI`` client needs a sync one.
The app runs on a private event loop in a daemon thread, so the sync caller never needs a loop.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from types import ModuleType
from typing import Any


def openai_httpx() -> ModuleType:
    """The httpx flavour the installed openai SDK is built on (openai 3.x moved to httpx2)."""
    try:
        return importlib.import_module("httpx2")
    except ImportError:
        return importlib.import_module("httpx")


httpx: Any = openai_httpx()


class ThreadLoopTransport(httpx.BaseTransport):  # type: ignore[misc,name-defined]
    def __init__(self, app: Any) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="thrifty-inprocess", daemon=True)
        self._thread.start()

    def handle_request(self, request: Any) -> Any:
        body = request.read()

        async def run() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            areq = httpx.Request(request.method, request.url, headers=request.headers, content=body)
            resp = await self._inner.handle_async_request(areq)
            content = b"".join([part async for part in resp.stream])
            return resp.status_code, resp.headers.raw, content

        status, headers, content = asyncio.run_coroutine_threadsafe(run(), self._loop).result()
        return httpx.Response(status, headers=headers, content=content, request=request)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
