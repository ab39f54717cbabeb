"""Routing: ``model: "auto"`` and named routes -> a task -> one model or a cascade.

    router = build_router(config, catalog)   # None when the config has no routes
    plan = router.plan(ctx)                  # used by the pipeline's RouteStage

See docs/routing.md. ``thrifty.routing.fit.fit_policy`` fits a ``routing:`` section from
outcome data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thrifty.catalog import Catalog
    from thrifty.routing.router import TaskRouter


def build_router(config: Any, catalog: Catalog) -> TaskRouter | None:
    from thrifty.routing.router import build_router as _build

    return _build(config, catalog)


__all__ = ["build_router"]
