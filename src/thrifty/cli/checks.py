"""Checks every CLI command applies to its flags before doing any work.

Why before: a command that calls paid models (``batch run``) or runs for minutes (``eval``,
``calibrate``) must not fail at the end on a flag it could have refused at the start. Each check
raises ``UsageError`` naming the flag, which ``thrifty.cli.main`` prints as one line.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

from thrifty.errors import InvalidRequestError, UsageError
from thrifty.strictjson import dumps, json_safe

__all__ = ["config_path", "dumps", "finite_float", "int_at_least", "json_safe", "writable_output"]


def comma_list(value: str, flag: str, what: str, example: str) -> list[str]:
    """``a,b,c`` as its stripped, non-empty names. A value with none in it (``","``) is refused:
    it would otherwise read as "not given" (any route, any label, every model), the opposite of
    what restricting something asked for."""
    found = [x.strip() for x in value.split(",") if x.strip()]
    if not found:
        raise UsageError(f"{flag}: no {what} in {value!r}; give comma-separated names ({example})")
    return found


def config_path(config: str | Path | None) -> Path:
    """The config file a command reads: ``--config``, else ``$THRIFTY_CONFIG``; neither is a
    one-line error, before any work."""
    path = config or os.environ.get("THRIFTY_CONFIG")
    if not path:
        raise InvalidRequestError("no config: pass --config FILE or set THRIFTY_CONFIG")
    return Path(path)


def writable_output(path: str | Path | None, flag: str) -> Path | None:
    """``path`` if the command will be able to write it, else ``UsageError``.

    Probes by opening the file for appending (creating it when missing, then removing it), since
    permission bits say nothing for root or for special file systems such as /proc."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag}: {p} is a folder, expected a file path")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{flag}: folder {parent} does not exist")
    existed = p.exists()
    try:
        with open(p, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise UsageError(f"{flag}: cannot write {p}: {exc.strerror or exc}") from None
    if not existed:
        with contextlib.suppress(OSError):
            os.unlink(p)
    return p


def int_at_least(value: int | None, flag: str, low: int, high: int | None = None) -> int | None:
    """``value`` when it is None or within [low, high], else ``UsageError``."""
    if value is None:
        return None
    if value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"between {low} and {high}"
        raise UsageError(f"{flag}: expected a whole number {span}, got {value}")
    return value


def finite_float(value: float | None, flag: str, low: float | None = None, high: float | None = None,
                 *, low_open: bool = False) -> float | None:
    """``value`` when it is None or a finite number within the bounds, else ``UsageError``."""
    if value is None:
        return None
    bad = not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low)) or (
        high is not None and value > high)
    if bad:
        lo = "" if low is None else (f"> {low:g}" if low_open else f">= {low:g}")
        hi = "" if high is None else f"<= {high:g}"
        span = " and ".join(x for x in (lo, hi) if x)
        raise UsageError(f"{flag}: expected a finite number{' ' + span if span else ''}, got {value}")
    return value
