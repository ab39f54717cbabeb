"""Single flight: concurrent identical requests in one process wait for the first one's answer.

The first request for a key becomes the leader and calls upstream; the others wait on its
flight. When the leader stored an answer the followers read it from the cache; when it could
not (an error, an answer that must not be cached) they all proceed at once rather than in
turn. Across processes the backend's lock plays the same role (see stage.py).
"""

from __future__ import annotations

import asyncio
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

    def finish(self, key: str, flight: Flight, stored: bool) -> None:
        flight.stored = stored
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.done.set()

    def __len__(self) -> int:
        return len(self._flights)


async def wait(flight: Flight, timeout_s: float) -> bool:
    """Wait for ``flight``; True when it stored an answer worth re-reading."""
    try:
        await asyncio.wait_for(flight.done.wait(), timeout_s)
    except TimeoutError:
        return False
    return flight.stored
