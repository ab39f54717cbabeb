"""Fitted artifacts (routers, scorers, verifiers) as versioned JSON files.

Every artifact carries a ``format`` tag so that loading a file of the wrong kind or an old
version fails with a clear ConfigError instead of a KeyError deep inside a model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from thrifty.errors import ConfigError


def read_artifact(path: str | Path, fmt: str, what: str) -> dict[str, Any]:
    """The JSON object in ``path``, checked to be of format ``fmt`` (``what`` names it in errors)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:  # str(exc) repeats the path: keep only the reason
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: {what} file is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise ConfigError(f"{path}: not a thrifty {what} file (expected format {fmt})")
    return doc


def write_artifact(path: str | Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as JSON, atomically: a crash mid-write leaves the old file, never half a new one."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from None
