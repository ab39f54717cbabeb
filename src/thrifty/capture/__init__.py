"""Capture: a sample of live chat traffic written as ``thrifty outcomes collect`` prompts.

capture -> ``thrifty outcomes collect`` -> ``thrifty calibrate`` fits routing to a team's own
traffic (docs/routing.md). Off unless the config has a ``capture:`` section; then one gateway
observer (and a stream tap under the ledger stage) decides, and a thread writes (writer.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from thrifty.capture.observe import Capture
    from thrifty.config import Config

__all__ = ["build_capture"]


def build_capture(config: Config, redactor: Callable[[str], str]) -> Capture | None:
    """The configured capture, its file opened (a path that cannot be is a ``ConfigError``), or None."""
    cfg = config.capture
    if cfg is None:
        return None
    from thrifty.capture.observe import Capture
    from thrifty.capture.writer import CaptureWriter
    from thrifty.errors import ConfigError

    path = config.resolve_path(cfg.path)
    try:
        writer = CaptureWriter(path, redactor)
    except OSError as exc:
        raise ConfigError(f"capture.path: cannot open {path} for appending: {exc.strerror or exc}") from None
    return Capture(cfg, path, writer)
