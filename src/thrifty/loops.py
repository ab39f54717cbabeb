"""One connection pool per event loop, for objects a library user may drive from several loops.

An aiohttp session or a redis.asyncio client belongs to the event loop it first ran in: used
from another loop it fails (often silently: a cache lookup turns into a miss), and closing it
once its loop is closed raises "Event loop is closed". A Gateway, though, may be used from
several loops: ``asyncio.run`` twice, or the in-process sync client's loop thread and then the
script's own loop. ``PerLoop`` keeps one resource per running loop, closes each on its own loop
and forgets those whose loop is gone. ``LoopSessions`` is the aiohttp flavour.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("thrifty.loops")

T = TypeVar("T")

# How long aclose() waits for a resource living on another thread's loop to close.
OTHER_LOOP_CLOSE_TIMEOUT_S = 5.0
# The same wait at interpreter exit, for gateways nobody closed.
EXIT_CLOSE_TIMEOUT_S = 2.0


def _never_closed(_: object) -> bool:
    return False


def _forget(_: object) -> None:
    return None


class PerLoop(Generic[T]):
    """One ``T`` per event loop, made by ``factory`` on first use in that loop.

    ``close`` is the resource's async close (run on the resource's own loop); ``discard``
    releases what it can synchronously once that loop is closed (it must not raise or touch
    the loop); ``is_closed`` tells a resource that was closed behind our back, so ``get``
    makes a new one. ``what`` names the resource in log messages.

    Keyed by the loop object but not weakly: a resource refers to its loop, so a weak key would
    never die. Instead, resources whose loop has closed are dropped whenever a new loop shows up
    and in ``aclose``; that bounds the map to the live loops plus at most one stale entry.
    """

    def __init__(
        self,
        factory: Callable[[], T],
        close: Callable[[T], Awaitable[object]],
        *,
        discard: Callable[[T], None] = _forget,
        is_closed: Callable[[T], bool] = _never_closed,
        what: str = "a connection pool",
    ) -> None:
        self._factory = factory
        self._close = close
        self._discard = discard
        self._is_closed = is_closed
        self._what = what
        self._items: dict[asyncio.AbstractEventLoop, T] = {}
        # Per loop, the task that closes its resource when the loop winds down (``_watch``) and
        # the future that releases it when the resource is closed some other way.
        self._watchers: dict[asyncio.AbstractEventLoop, tuple[asyncio.Task[None], asyncio.Future[None]]] = {}
        # Loops of different threads (a script's asyncio.run, the in-process loop thread) may
        # create their resources at the same moment.
        self._lock = threading.Lock()
        _unreleased.add(self)

    def get(self) -> T:
        """The running loop's resource (made now if this loop has none yet)."""
        loop = asyncio.get_running_loop()
        item = self._items.get(loop)
        if item is not None and not self._is_closed(item):
            return item
        with self._lock:
            for old in [lp for lp in self._items if lp.is_closed()]:
                self._drop(self._items.pop(old))
                watcher = self._watchers.pop(old, None)
                if watcher is not None:  # its loop closed without ending it: it will never run
                    _kept.discard(watcher[0])
            item = self._factory()  # in the running loop, which it binds to
            self._items[loop] = item
            self._watch(loop, item)
            return item

    def _watch(self, loop: asyncio.AbstractEventLoop, item: T) -> None:
        """Close ``item`` on its own loop when that loop winds down.

        ``asyncio.run`` (and the in-process loop thread) cancel every pending task before closing
        the loop: a task parked until then closes the resource while its loop can still run the
        close. Without it, ``asyncio.run(gw.chat(...))`` left the upstream sockets of its loop open
        until garbage collection ("unclosed transport"), even after ``gw.close()``.
        """
        previous = self._watchers.pop(loop, None)
        if previous is not None:  # its resource was closed behind our back; this one replaces it
            _release(previous[1])
        released = loop.create_future()
        task = loop.create_task(self._close_at_loop_end(item, released),
                                name=f"thrifty: close {self._what} at loop end")
        # A loop closed without cancelling its tasks: the resource is dropped as before, and the
        # parked task is not worth a "Task was destroyed but it is pending" report.
        task._log_destroy_pending = False  # type: ignore[attr-defined]
        # The loop keeps only a weak reference to its tasks: a gateway dropped unclosed (a notebook
        # cell run again, a helper that builds one and returns) took this task, and the session,
        # with it into garbage collection ("Unclosed client session" on stderr). Held here, the
        # resource stays open until its loop ends or interpreter exit closes it.
        keep(task)
        self._watchers[loop] = (task, released)

    async def _close_at_loop_end(self, item: T, released: asyncio.Future[None]) -> None:
        try:
            await released  # set when aclose() takes the resource; cancelled when the loop ends
        except asyncio.CancelledError:
            if not self._is_closed(item):
                with contextlib.suppress(Exception):
                    await self._close(item)
            raise

    async def aclose(self) -> None:
        """Close every resource: this loop's here, other running loops' on their own thread
        (bounded wait), and forget those whose loop is closed or stopped (nothing to run them)."""
        current = asyncio.get_running_loop()
        for loop, item in self._take_open():
            if loop is current:
                await self._close(item)
            elif loop.is_running():
                await self._close_on(loop, item)
            else:
                self._drop(item)

    def release_at_exit(self) -> None:
        """``aclose()`` without an event loop, for interpreter exit: resources on a loop thread
        still running are closed there (bounded wait), the others discarded. Otherwise the
        garbage collector reports every unclosed session of a script that never closed its
        gateway ("Unclosed client session")."""
        for loop, item in self._take_open():
            if loop.is_running():
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(self._closing(item), loop).result(EXIT_CLOSE_TIMEOUT_S)
            else:
                self._drop(item)

    def _take_open(self) -> list[tuple[asyncio.AbstractEventLoop, T]]:
        """Forget every resource and return those not closed yet, to be closed by the caller."""
        with self._lock:
            items = list(self._items.items())
            self._items.clear()
            watchers = list(self._watchers.items())
            self._watchers.clear()
        for loop, (task, released) in watchers:  # the caller closes them; a closed loop runs nothing
            if loop.is_closed():
                _kept.discard(task)
                continue
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_release, released)
        return [(loop, item) for loop, item in items if not self._is_closed(item)]

    async def _closing(self, item: T) -> None:
        await self._close(item)

    async def _close_on(self, loop: asyncio.AbstractEventLoop, item: T) -> None:
        """Close ``item`` on its own loop, running in another thread; wait a bounded time."""
        try:
            future = asyncio.run_coroutine_threadsafe(self._closing(item), loop)
        except RuntimeError:  # that loop closed in the meantime
            self._drop(item)
            return
        try:
            await asyncio.wait_for(asyncio.wrap_future(future), OTHER_LOOP_CLOSE_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            log.warning("%s on another event loop did not close within %gs", self._what, OTHER_LOOP_CLOSE_TIMEOUT_S)

    def _drop(self, item: T) -> None:
        with contextlib.suppress(Exception):  # forgetting must never fail a request or a close
            self._discard(item)


def _release(released: asyncio.Future[None]) -> None:
    if not released.done():
        released.set_result(None)


# Tasks nothing else holds, until they finish (``keep``): PerLoop's watchers, gateways closing in
# a task of their loop, dropped streams being closed.
_kept: set[asyncio.Task[Any]] = set()


def keep(task: asyncio.Task[Any]) -> asyncio.Task[Any]:
    """Hold ``task`` until it is done: the loop keeps only a weak reference to its tasks, so one
    nothing else holds can be collected half-way. Its exception, if any, is retrieved when it
    ends (whoever runs it logs its own failures), so asyncio does not report it a second time."""
    _kept.add(task)
    task.add_done_callback(_let_go)
    return task


def _let_go(task: asyncio.Task[Any]) -> None:
    _kept.discard(task)
    if not task.cancelled():
        task.exception()


_unreleased: weakref.WeakSet[PerLoop[Any]] = weakref.WeakSet()


@atexit.register
def _release_all_at_exit() -> None:
    for per_loop in list(_unreleased):
        with contextlib.suppress(Exception):
            per_loop.release_at_exit()


class LoopSessions(PerLoop["aiohttp.ClientSession"]):
    """One aiohttp session per event loop."""

    def __init__(self, factory: Callable[[], aiohttp.ClientSession],
                 what: str = "an upstream connection pool") -> None:
        super().__init__(factory, _close_session, discard=_discard_session, is_closed=_session_closed, what=what)


async def _close_session(session: aiohttp.ClientSession) -> None:
    await session.close()


def _session_closed(session: aiohttp.ClientSession) -> bool:
    return bool(session.closed)


def _discard_session(session: aiohttp.ClientSession) -> None:
    """Forget a session whose loop cannot run its ``close()`` (closed, or stopped for good).

    The connector's synchronous half of close() marks it closed (so it never warns "Unclosed
    connector" from the garbage collector) and, with the loop already closed, touches no
    transport; the sockets go with the garbage collector.
    """
    connector = session.connector
    session.detach()
    if connector is not None:
        with contextlib.suppress(Exception):
            connector._close()


class LoopRedis(PerLoop[Any]):
    """One redis.asyncio client (and its connection pool) per event loop.

    A client whose loop is closed is only forgotten: its sockets cannot be closed without that
    loop, so they go with the garbage collector, as an aiohttp session's do.
    """

    def __init__(self, factory: Callable[[], Any], what: str = "a Redis connection pool") -> None:
        super().__init__(factory, _close_redis, what=what)


async def _close_redis(client: Any) -> None:
    await client.aclose()
