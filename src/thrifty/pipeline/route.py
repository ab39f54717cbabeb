"""Stage: decide the plan (which model, or which cascade of tiers) for the request."""

from __future__ import annotations

from typing import Protocol

from thrifty.catalog import Catalog
from thrifty.errors import NotFoundError
from thrifty.pipeline.context import Handler, Plan, RequestContext, Tier


class Router(Protocol):
    """Turns ``model: "auto"`` / ``"route:NAME"`` requests into a plan (see thrifty.routing)."""

    def plan(self, ctx: RequestContext) -> Plan | None:
        """A plan for the request, or None when this router does not handle it."""
        ...


class RouteStage:
    """A model the catalog knows is served as asked (one tier); anything else goes to the router."""

    def __init__(self, catalog: Catalog, router: Router | None = None, default_model: str | None = None) -> None:
        self.catalog = catalog
        self.router = router
        self.default_model = default_model

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> None:
        ctx.plan = self.decide(ctx)
        await call_next(ctx)

    def decide(self, ctx: RequestContext) -> Plan:
        asked = ctx.request.model
        info = self.catalog.get(asked)
        if info is not None and ctx.route is None:
            return Plan(tiers=[Tier(info.name)], reason="model requested by name")
        if self.router is not None:
            plan = self.router.plan(ctx)
            if plan is not None:
                return plan
        if asked == "auto" and self.default_model:
            return Plan(tiers=[Tier(self.default_model)], reason="no router configured: default model")
        known = sorted(m.name for m in self.catalog)
        raise NotFoundError(f"The model '{asked}' does not exist. Available models: {', '.join(known)}"
                            + self._other_names(), param="model")

    def _other_names(self) -> str:
        """The non-model names this gateway accepts, for the unknown-model message."""
        if self.router is not None:
            return "; or 'auto' / 'route:NAME' (GET /v1/models lists the routes)."
        if self.default_model:
            return f"; or 'auto' (served by the default model, {self.default_model})."
        return "."
