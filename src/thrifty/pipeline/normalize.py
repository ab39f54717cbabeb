"""Stage: read thrifty's hints off the request (task, route) before anything acts on it."""

from __future__ import annotations

from thrifty.pipeline.context import Handler, RequestContext

TASK_HEADER = "x-thrifty-task"


class NormalizeStage:
    """Sets ``ctx.task`` from, in order: the ``thrifty.task`` body option, the
    ``x-thrifty-task`` header, or ``metadata.task``; and ``ctx.route`` from ``model: "route:NAME"``."""

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> None:
        req = ctx.request
        task = req.options.get("task") or ctx.headers.get(TASK_HEADER) or req.metadata.get("task")
        if isinstance(task, str) and task.strip():
            ctx.task = task.strip()
        if req.model.startswith("route:"):
            ctx.route = req.model.removeprefix("route:")
        await call_next(ctx)
