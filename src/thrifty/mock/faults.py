"""Failure injection: the ``x-mock-behaviour`` header, per-model counters and error decisions.

Header grammar (case-insensitive keys, ``;``-separated, whitespace ignored)::

    x-mock-behaviour: status=429; retry_after=1
    x-mock-behaviour: hang
    x-mock-behaviour: latency_ms=200; jitter_ms=50
    x-mock-behaviour: truncate_after=3
    x-mock-behaviour: fail_first=2; fail_status=503

Each item is ``key=value`` or a bare flag (``hang``, ``malformed`` mean ``=true``); the keys are
exactly the fields of ``behaviour.Faults``, and they override the model's configured faults
for that one request. An unknown key or bad value is a 400, so a typo never passes silently.
"""

from __future__ import annotations

import math
import time
from email.utils import formatdate
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from thrifty.errors import InvalidRequestError
from thrifty.mock import digest
from thrifty.mock.behaviour import Faults, RetryAfterForm

HEADER = "x-mock-behaviour"


@lru_cache(maxsize=256)
def parse_header(value: str) -> Faults:
    """The ``Faults`` override a header value asks for (cached: tests repeat the same values)."""
    fields: dict[str, Any] = {}
    for item in value.split(";"):
        item = item.strip()
        if not item:
            continue
        name, sep, raw = item.partition("=")
        name = name.strip().lower().replace("-", "_")
        if name not in Faults.model_fields:
            raise InvalidRequestError(f"{HEADER}: unknown key {name!r}", param=HEADER)
        fields[name] = raw.strip() if sep else True
    try:
        return Faults.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidRequestError(f"{HEADER}: {first['loc'][0]}: {first['msg']}", param=HEADER) from exc


class InjectedError(Exception):
    """An injected HTTP error: status, optional Retry-After and message."""

    def __init__(self, status: int, retry_after: float | None, message: str | None,
                 form: RetryAfterForm = "both") -> None:
        super().__init__(f"injected {status}")
        self.status = status
        self.retry_after = retry_after
        self.message = message
        self.form = form

    def headers(self) -> dict[str, str]:
        """When to come back, in the ``form`` a provider uses: Retry-After (whole seconds) and
        retry-after-ms, which the openai SDK prefers (OpenAI, Azure); only one of them; Retry-After
        as an HTTP date (RFC 9110 allows it); or only OpenAI's ``x-ratelimit-reset-*`` durations."""
        if self.retry_after is None:
            return {}
        seconds = str(max(0, math.ceil(self.retry_after)))
        millis = str(int(self.retry_after * 1000))
        if self.form == "seconds":
            return {"retry-after": seconds}
        if self.form == "ms":
            return {"retry-after-ms": millis}
        if self.form == "http_date":
            return {"retry-after": formatdate(time.time() + math.ceil(self.retry_after), usegmt=True)}
        if self.form == "ratelimit_reset":
            # The requests limit is spent (remaining 0), the tokens limit is not: its reset is not a wait.
            return {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": go_duration(self.retry_after),
                    "x-ratelimit-remaining-tokens": "1000", "x-ratelimit-reset-tokens": "1h0m0s"}
        return {"retry-after": seconds, "retry-after-ms": millis}


def go_duration(seconds: float) -> str:
    """``seconds`` as OpenAI's rate-limit headers write a duration (Go's format: ``20ms``, ``1.5s``, ``6m0s``)."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{rest:g}s"
    if minutes or hours:
        text = f"{minutes}m{text}"
    return f"{hours}h{text}" if hours else text


class FaultState:
    """Per-model counters behind ``fail_first`` and ``error_rate``; cleared by /mock/reset."""

    def __init__(self, seed: int) -> None:
        self._seed = seed.to_bytes(8, "big", signed=True)
        self.fail_first_calls: dict[str, int] = {}
        self.calls: dict[str, int] = {}

    def reset(self) -> None:
        self.fail_first_calls.clear()
        self.calls.clear()

    def delay_s(self, model: str, faults: Faults) -> float:
        """Latency before answering: fixed plus jitter chosen by (seed, model, call number)."""
        delay = faults.latency_ms
        if faults.jitter_ms:
            nth = self.calls.get(model, 0)
            delay += faults.jitter_ms * digest.unit(self._seed + model.encode(), f"jitter{nth}")
        return delay / 1000.0

    def check(self, model: str, faults: Faults) -> InjectedError | None:
        """Count this call and return the error to inject, if any.

        ``fail_first`` counts only calls made while it is set, so earlier plain traffic to the
        same model does not use up the failures a retry test expects.
        """
        nth = self.calls.get(model, 0) + 1
        self.calls[model] = nth
        if faults.status is not None:
            return self._error(faults.status, faults)
        if faults.fail_first:
            done = self.fail_first_calls.get(model, 0) + 1
            self.fail_first_calls[model] = done
            if done <= faults.fail_first:
                return self._error(faults.fail_status, faults)
        if faults.error_rate and digest.unit(self._seed + model.encode(), f"err{nth}") < faults.error_rate:
            return self._error(faults.fail_status, faults)
        return None

    @staticmethod
    def _error(status: int, faults: Faults) -> InjectedError:
        retry_after = faults.retry_after
        if retry_after is None and status == 429:
            retry_after = 1.0  # OpenAI always tells a rate-limited client when to come back
        return InjectedError(status, retry_after, faults.error_message, faults.retry_after_form)
