"""Stage: read thrifty's hints off the request (task, route) before anything acts on it."""

from __future__ import annotations

from typing import Any, Protocol

from thrifty.pipeline.context import Handler, RequestContext

TASK_HEADER = "x-thrifty-task"


class RouteClassifier(Protocol):
    """Decides an ``auto`` request's route without calling a model (thrifty.routing's router)."""

    def classify(self, ctx: RequestContext) -> Any:
        """Set ``ctx.route`` (and ``ctx.task``) when the route is known without a model call."""
        ...


class NormalizeStage:
    """Sets ``ctx.task`` from, in order: the ``thrifty.task`` body option, the
    ``x-thrifty-task`` header, or ``metadata.task``; and ``ctx.route`` from ``model: "route:NAME"``,
    or, for ``model: "auto"``, from the router's early classification when a router is given.

    Why here: compression and the cache run before the route stage and look their per-route
    overrides up by ``ctx.route``; without this an ``auto`` request matched only ``auto`` entries."""

    def __init__(self, router: RouteClassifier | None = None) -> None:
        self.classifier = router

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> None:
        req = ctx.request
        task = req.options.get("task") or ctx.headers.get(TASK_HEADER) or req.metadata.get("task")
        if isinstance(task, str) and task.strip():
            ctx.task = task.strip()
        if req.model.startswith("route:"):
            ctx.route = req.model.removeprefix("route:")
        if self.classifier is not None and req.model == "auto":
            self.classifier.classify(ctx)
        await call_next(ctx)
