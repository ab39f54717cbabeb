"""JSON on the request path: orjson (several times faster than the standard library here)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.background import BackgroundTask
from starlette.responses import Response

# Given, these replace the computed ones (Starlette's rule), which the slow path keeps.
_OWN_NAMES = (b"content-length", b"content-type")
_CONTENT_TYPE = (b"content-type", b"application/json")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def loads(data: bytes | str) -> Any:
    """Parse JSON; raises ValueError (orjson.JSONDecodeError is one) on bad input."""
    return orjson.loads(data)


class FastJSONResponse(Response):
    media_type = "application/json"

    def __init__(self, content: Any = None, status_code: int = 200, headers: Mapping[str, str] | None = None,
                 media_type: str | None = None, background: BackgroundTask | None = None) -> None:
        """Starlette's ``Response.__init__`` and ``init_headers``, inlined for every JSON answer the
        request path sends: its per-header ``lower().encode()`` and presence checks were ~1 us of a
        request's ~0.1 ms (five headers). Same raw headers, in the same order; anything unusual
        (another media type, a bodiless status, content-length/-type given) takes Starlette's path."""
        if media_type is not None or status_code < 200 or status_code in (204, 304):
            super().__init__(content, status_code, headers, media_type, background)
            return
        body = orjson.dumps(content)  # first, as Starlette: a body it cannot make fails before the headers
        raw: list[tuple[bytes, bytes]] = []
        if headers:
            for name, value in headers.items():
                key = name.lower().encode("latin-1")
                if key in _OWN_NAMES:
                    super().__init__(content, status_code, headers, media_type, background)
                    return
                raw.append((key, value.encode("latin-1")))
        self.status_code = status_code
        self.background = background
        self.body = body
        raw.append((b"content-length", b"%d" % len(body)))
        raw.append(_CONTENT_TYPE)
        self.raw_headers = raw

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
