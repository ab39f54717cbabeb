"""Structured JSON logs: one object per line, with the request id when there is one.

Messages pass through the redactor so that a key never reaches a log line, even by mistake.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from thrifty.redact import redact

if TYPE_CHECKING:
    from thrifty.pipeline.context import RequestContext


# Extra fields a record may carry (``log.info(..., extra={...})``); anything else is dropped.
_FIELDS = ("request_id", "model", "status", "latency_ms", "cost_usd", "key_id", "route", "strategy", "tier",
           "cache", "prompt_tokens", "completion_tokens", "error_type", "prompt")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key in _FIELDS:
            if hasattr(record, key):
                value = getattr(record, key)
                entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler writing to ``sys.stderr`` as it is when a record is logged, not as it was
    when the handler was made (a replaced or closed stream would lose every later line)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


# uvicorn's level names (uvicorn.config.LOG_LEVELS); "trace" is its own, below debug.
_LEVELS = {"critical": 50, "error": 40, "warning": 30, "info": 20, "debug": 10, "trace": 5}


def setup_logging(level: str = "info", loggers: tuple[str, ...] = ("thrifty", "uvicorn")) -> None:
    """JSON lines on stderr for thrifty's loggers and uvicorn's (start-up, shutdown, errors), so
    the server's stderr is one format a log shipper can parse. Run uvicorn with
    ``log_config=None`` so it keeps these handlers instead of installing its plain-text ones."""
    handler = _Stderr()
    handler.setFormatter(JsonFormatter())
    for name in loggers:
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.setLevel(_LEVELS.get(level.lower(), logging.INFO))
        log.propagate = False


def request_logger(log_prompts: bool = False) -> Callable[[RequestContext], None]:
    """A gateway observer writing one ``thrifty.request`` line per finished request.

    It carries ids, model, cost and outcome; the prompt text only when ``server.log_prompts``.
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
            extra["prompt"] = (last if isinstance(last, str) else json.dumps(last))[:2000]
        log.info("request %s %s", ctx.status, ctx.request_id, extra=extra)

    return observe
