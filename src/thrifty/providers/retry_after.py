"""How long a provider asked to be left alone, from whichever headers it says it in.

- ``retry-after-ms``: OpenAI and Azure OpenAI (the openai SDK reads it before Retry-After);
  it is also the more precise figure (Retry-After rounds up to whole seconds).
- ``Retry-After``: delta-seconds (most providers) or an HTTP date (RFC 9110 allows either).
- OpenAI's and Groq's ``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens``: Go-style
  durations (``20ms``, ``1.5s``, ``6m0s``, ``2m59.56s``), sent with every answer; only a limit
  whose ``x-ratelimit-remaining-*`` is 0 is what a 429 waits for.

Read as Retry-After seconds only, the other forms gave no wait: the gateway retried a limit that
lasts minutes at once (every retry refused again) and told its client nothing of when to return.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_LIMITS = ("requests", "tokens")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After value: delta-seconds, or an HTTP date (its distance from now)."""
    if not value or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def go_duration_s(value: str | None) -> float | None:
    """Seconds in a Go duration (``6m0s``, ``1.5s``, ``20ms``), or a plain number of seconds."""
    text = (value or "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        parts = _PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            return None
        seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def retry_after(headers: Mapping[str, str], status: int) -> float | None:
    """The wait a provider's answer with ``status`` asks for (see the module doc), or None."""
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    said = parse_retry_after(headers.get("retry-after"))
    if said is not None or status != 429:
        return said
    waits = [go_duration_s(headers.get(f"x-ratelimit-reset-{limit}")) for limit in _LIMITS
             if (headers.get(f"x-ratelimit-remaining-{limit}") or "").strip() == "0"]
    known = [w for w in waits if w is not None]
    return max(known) if known else None


def _number(value: str | None) -> float | None:
    """A plain non-negative number (``retry-after-ms``), or None."""
    try:
        number = float(value) if value else math.nan
    except ValueError:
        return None
    return max(0.0, number) if math.isfinite(number) else None
