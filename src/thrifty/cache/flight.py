"""Single flight: concurrent identical requests in one process wait for the first one's answer.

The first request for a key becomes the leader and calls upstream; the others wait on its
flight. When the leader stored an answer the followers read it from the cache; when it could
not (an error, an answer that must not be cached) they all proceed at once rather than in
turn. Across processes the backend's lock plays the same role (see stage.py).

Embeddings are cached per input, so one request leads many keys at once (``lead_many``) with a
single flight, and may wait on the flights of several other requests (``wait_all``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Flight:
    done: asyncio.Event = field(default_factory=asyncio.Event)
    stored: bool = False


class SingleFlight:
    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}

    def current(self, key: str) -> Flight | None:
        return self._flights.get(key)

    def lead(self, key: str) -> Flight:
        flight = Flight()
        self._flights[key] = flight
        return flight

    def lead_many(self, keys: Iterable[str], flight: Flight | None = None) -> Flight:
        """Make ``flight`` (a new one by default) the leader of every key in ``keys``: a request
        computing several keys in one call ends them all at once, with the one store."""
        flight = flight if flight is not None else Flight()
        for key in keys:
            self._flights[key] = flight
        return flight

    def finish(self, key: str, flight: Flight, stored: bool) -> None:
        self.finish_many((key,), flight, stored)

    def finish_many(self, keys: Iterable[str], flight: Flight, stored: bool) -> None:
        flight.stored = stored
        for key in keys:
            # A key another request took over (this flight timed out for its waiters) is theirs.
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.done.set()

    def __len__(self) -> int:
        return len(self._flights)


async def wait(flight: Flight, timeout_s: float) -> bool:
    """Wait for ``flight``; True when it stored an answer worth re-reading."""
    if flight.done.is_set():
        # Python 3.11's wait_for(..., 0) times out even on a set event: a caller whose deadline
        # is spent must still see a flight that ended long ago.
        return flight.stored
    try:
        await asyncio.wait_for(flight.done.wait(), timeout_s)
    except TimeoutError:
        return False
    return flight.stored


async def wait_all(flights: Iterable[Flight], timeout_s: float) -> list[bool]:
    """Wait for ``flights`` within one shared ``timeout_s`` (they run side by side, so waiting in
    turn costs no more than the slowest); True for each that has ended and stored its answer,
    whichever were still running when the time ran out."""
    flights = list(flights)
    try:
        async with asyncio.timeout(timeout_s):
            for f in flights:
                await f.done.wait()
    except TimeoutError:
        pass  # the ones that ended still count, below
    return [f.done.is_set() and f.stored for f in flights]
