"""Packing many small items into one call, and provider Batch API jobs (half price, later).

    results = await thrifty.batching.run_batch(gateway, items, task="Classify the sentiment", pack=10)

See docs/compression-and-batching.md. Names are imported lazily: thrifty.config imports
``thrifty.batching.config`` and must not pull the gateway in with it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Item", "ItemResult", "run_batch", "run_deferred"]


def __getattr__(name: str) -> Any:
    if name in ("run_batch", "ItemResult", "Item"):
        from thrifty.batching import packing, runner

        return getattr(runner, name, None) or getattr(packing, name)
    if name == "run_deferred":
        from thrifty.batching.deferred import run_deferred

        return run_deferred
    raise AttributeError(name)
