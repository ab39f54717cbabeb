"""JSON output that standard parsers accept: NaN and infinities become null.

Python's ``json`` writes ``NaN``/``Infinity`` by default, which JavaScript's ``JSON.parse``, jq
and most other parsers reject; a rate over nothing (0/0) or an overflowed estimate must reach
a user's tooling as null instead.
"""

from __future__ import annotations

import json
import math
from typing import Any


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinite floats replaced by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN or Infinity (see ``json_safe``)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)
