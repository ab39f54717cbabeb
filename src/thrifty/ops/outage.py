"""One service's outage as the log tells it: its start once, its end once.

A service that stops answering (Redis, the key database, a readiness probe's target) is met by
every request, or every check, for as long as it is down: a line each was hundreds a second per
instance under load, and nothing said when it came back. ``Outage`` logs the first failure at
WARNING, later ones at DEBUG, and the first success after them once at WARNING. ``about`` names
what a failure concerns (a key served from its record, a probe's reason): each new one is a
warning of its own, once per outage.
"""

from __future__ import annotations

import logging


class Outage:
    """The log of one service's outages; ``answered`` message and args say that it is back."""

    def __init__(self, log: logging.Logger, answered: str, *args: object) -> None:
        self._log = log
        self._answered = (answered, args)
        # What this outage has been logged about; empty while the service answers. (Plain set
        # operations: a race between threads costs at most one extra line, never a lost one.)
        self._seen: set[str] = set()

    @property
    def down(self) -> bool:
        """True from a failure until the next success."""
        return bool(self._seen)

    def failed(self, msg: str, *args: object, about: str = "") -> None:
        """Log a failure: a warning the first time this outage meets ``about``, else debug."""
        level = logging.DEBUG if about in self._seen else logging.WARNING
        self._seen.add(about)
        self._log.log(level, msg, *args)

    def answered(self) -> None:
        """Note a success: the end of an outage is logged, once."""
        if self._seen:
            self._seen = set()
            msg, args = self._answered
            self._log.warning(msg, *args)
