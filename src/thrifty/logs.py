"""Structured JSON logs: one object per line, with the request id when there is one.

Messages pass through the redactor so that a key never reaches a log line, even by mistake.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from thrifty.redact import redact


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key in ("request_id", "model", "status", "latency_ms", "cost_usd"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry)


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("thrifty")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
