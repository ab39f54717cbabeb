"""Structured JSON logs: one object per line, with the request id when there is one.

Every line passes through the redactor so that a key never reaches a log, even by mistake: key
shapes (``sk-...``, ``thr-...``, ``Bearer ...``) always, and the configured provider keys of every
gateway built in the process (``register_secrets``), which may look like any word.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from thrifty.redact import Redactor, redact

if TYPE_CHECKING:
    from thrifty.pipeline.context import RequestContext


# Extra fields a record may carry (``log.info(..., extra={...})``); anything else is dropped.
_FIELDS = ("request_id", "model", "status", "latency_ms", "cost_usd", "key_id", "route", "strategy", "tier",
           "cache", "prompt_tokens", "completion_tokens", "error_type", "prompt")


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        # The gateways' redactors (their configured keys); held weakly: a closed gateway's go.
        self._redactors: weakref.WeakSet[Redactor] = weakref.WeakSet()

    def add_redactor(self, redactor: Redactor) -> None:
        self._redactors.add(redactor)

    def _masker(self) -> Callable[[str], str]:
        """What masks one line's strings: the gateways' redactors in turn, each of which ends with
        the key shapes (``Redactor.__call__``), else the key shapes alone.

        Why once per line: with every field of the request line (written per request at INFO,
        serve's default) copying the weak set and applying the key shapes a second time,
        formatting it took ~17 us instead of ~11. Applying them again after a redactor changes
        nothing: what they mask is replaced by ``[REDACTED]``, which they do not match."""
        redactors = list(self._redactors)
        if not redactors:
            return redact
        if len(redactors) == 1:
            return redactors[0]

        def each(text: str) -> str:
            for r in redactors:
                text = r(text)
            return text

        return each

    def format(self, record: logging.LogRecord) -> str:
        mask = self._masker()
        entry = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask(record.getMessage()),
        }
        for key in _FIELDS:
            if hasattr(record, key):
                value = getattr(record, key)
                entry[key] = mask(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc"] = mask(self.formatException(record.exc_info))
        return json.dumps(entry)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler writing to ``sys.stderr`` as it is when a record is logged, not as it was
    when the handler was made (a replaced or closed stream would lose every later line)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _CancelledRequest(logging.Filter):
    """uvicorn's "Exception in ASGI application" for a request it cancelled itself (the server
    stopping with the request still running past its graceful-shutdown bound) as one WARNING line
    instead of an ERROR with a traceback: no bug, and the request is recorded in the ledger."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, asyncio.CancelledError) and str(record.msg).startswith("Exception in ASGI application"):
            record.msg, record.args = ("a request still running when the server stopped was cancelled at the "
                                       "shutdown bound; it is recorded in the ledger"), ()
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


# uvicorn's level names (uvicorn.config.LOG_LEVELS); "trace" is its own, below debug.
_LEVELS = {"critical": 50, "error": 40, "warning": 30, "info": 20, "debug": 10, "trace": 5}


def setup_logging(level: str = "info", loggers: tuple[str, ...] = ("thrifty", "uvicorn")) -> None:
    """JSON lines on stderr for thrifty's loggers and uvicorn's (start-up, shutdown, errors), and
    for other libraries' warnings, so the server's stderr is one format a log shipper can parse. Run uvicorn with
    ``log_config=None`` so it keeps these handlers instead of installing its plain-text ones."""
    handler = _Stderr()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_CancelledRequest())
    for name in loggers:
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.setLevel(_LEVELS.get(level.lower(), logging.INFO))
        log.propagate = False
    # Other libraries' records (psycopg's "error ignored terminating <Pipeline>", redis, asyncio's
    # "Task exception was never retrieved") propagate to the root logger; with no handler there
    # Python's last-resort handler wrote them as plain, unredacted text among the JSON lines. The
    # root keeps its level (warnings and up by default) and any handler that is not ours (a test
    # runner's capture).
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h.formatter, JsonFormatter)] + [handler]


def register_secrets(redactor: Redactor, loggers: tuple[str, ...] = ("thrifty", "uvicorn")) -> None:
    """Mask ``redactor``'s secrets (a gateway's configured provider keys) in every line the JSON
    handlers of ``loggers`` (installed by ``setup_logging``) write from now on.

    Why here and not only at the call sites: ``setup_logging`` runs before the gateway (and its
    keys) exists, and a key that is not key-shaped (``PlainProviderKey42``) in a prompt, an
    upstream error or a traceback would otherwise be written as is. Loggers without such a
    handler (a library user's own logging) are left alone."""
    for log in [*(logging.getLogger(name) for name in loggers), logging.getLogger()]:  # root: see setup_logging
        for handler in log.handlers:
            if isinstance(handler.formatter, JsonFormatter):
                handler.formatter.add_redactor(redactor)


def request_logger(log_prompts: bool = False, redactor: Callable[[str], str] = redact,
                   ) -> Callable[[RequestContext], None]:
    """A gateway observer writing one ``thrifty.request`` line per finished request.

    It carries ids, model, cost and outcome; the prompt text only when ``server.log_prompts``,
    passed through ``redactor`` (the gateway's: its provider keys too) whatever handler writes it.
    """
    log = logging.getLogger("thrifty.request")

    def observe(ctx: RequestContext) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        extra = {
            "request_id": ctx.request_id, "model": ctx.served_model or ctx.request.model, "status": ctx.status,
            "latency_ms": round(ctx.elapsed_ms, 1), "cost_usd": ctx.cost_usd, "key_id": ctx.key_id,
            "route": ctx.route, "strategy": ctx.strategy, "tier": ctx.served_tier, "cache": ctx.cache_status,
            "prompt_tokens": ctx.usage.prompt_tokens, "completion_tokens": ctx.usage.completion_tokens,
            "error_type": ctx.error_type,
        }
        if log_prompts:
            last = ctx.request.messages[-1].get("content") if ctx.request.messages else None
            # Redacted whole, then cut: a key across the cut would otherwise leave its start.
            extra["prompt"] = redactor(last if isinstance(last, str) else json.dumps(last))[:2000]
        log.info("request %s %s", ctx.status, ctx.request_id, extra=extra)

    return observe
