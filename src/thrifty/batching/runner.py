"""Packing K items per call, with fallbacks, so every item gets exactly one result.

    results = await run_batch(gateway, items, task="Classify the sentiment", model="cheap", pack=10)

Each pack of K items is one request through the gateway (so it is priced, routed and in the
ledger like any other). Items the answer misses, duplicates or gets wrong are retried in a pack
half the size, then one by one as plain requests; an item still failing is reported as failed
with the reason, never dropped. Each call's cost and tokens are shared equally among the items
it carried (a failed call's too: what it billed is in the ledger), so the item costs add up to
exactly what the run spent.

Every call of a run is one ledger request of strategy ``packing`` (fallbacks included: they are
what packing costs when it fails), whose baseline is what the baseline model would have charged
for the items that call answered, each sent on its own; an item's baseline is claimed once, by the
call whose answer it kept, and a call that answered nothing claims none (its spend is a loss).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from thrifty.batching import packing
from thrifty.batching.items import Item, coerce_items
from thrifty.batching.progress import Progress
from thrifty.errors import ConfigError, InvalidRequestError, ThriftyError, UpstreamError, UsageError
from thrifty.pipeline.context import RequestContext, new_request_id
from thrifty.types import ChatRequest, cut_short, response_text

if TYPE_CHECKING:
    from thrifty.batching.checkpoint import Checkpoint
    from thrifty.gateway import Gateway

__all__ = ["Item", "ItemResult", "run_batch"]

# How a request names a route (thrifty.routing.router.ROUTE_PREFIX; not imported, to keep this
# module free of the routing package).
ROUTE_PREFIX = "route:"
# The ledger's strategy for every call of a packed run (`thrifty report --by strategy`, the
# dashboard, the savings metric): without it a packed call read as `passthrough` (or routing).
STRATEGY = "packing"

# What a call's answer settled: item id -> output for the items it answered, item id -> why for
# the rest. Judged once, when the ledger row is written, so the row's baseline and the run agree.
Judge = Callable[[str], packing.PackOutcome]


@dataclass
class _Sent:
    """One call's judged answer (``answered``: the call itself succeeded), with what its failed
    tries said: a route's cheap tier refusing a parameter fails a try, not the call."""

    outcome: packing.PackOutcome
    answered: bool
    error: ThriftyError | None = None  # the call's own error
    failed: list[str] = field(default_factory=list)  # the messages of its failed answer attempts


@dataclass
class ItemResult:
    """One output line: the answer (or why there is none), its cost share and how it was made."""

    id: str
    output: str | None
    status: str  # ok | failed
    produced: str  # packed | repacked | single | batch_api | failed
    cost_usd: float | None = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    calls: int = 0  # upstream requests this item took part in
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "output": self.output, "status": self.status, "produced": self.produced,
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 10),
            "tokens": {"prompt": round(self.prompt_tokens, 2), "completion": round(self.completion_tokens, 2)},
            "calls": self.calls, "error": self.error,
        }

    def to_line(self, json_id: str | int) -> str:
        """The output line (JSON and a newline), with the item's id as the input gave it."""
        return json.dumps({**self.to_json(), "id": json_id}, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> ItemResult:
        """``to_json`` (or an output line) read back."""
        tokens = row.get("tokens") or {}
        cost = row.get("cost_usd")
        return cls(str(row["id"]), row.get("output"), str(row["status"]), str(row["produced"]),
                   None if cost is None else float(cost), float(tokens.get("prompt", 0.0)),
                   float(tokens.get("completion", 0.0)), int(row.get("calls") or 0), row.get("error"))


def resolve_target(gateway: Gateway, model: str | None, route: str | None) -> str:
    """The request ``model`` to send: --model, else route:NAME, else the config's defaults.

    The name is checked against the config here, before any call: an unknown one would otherwise
    fail every item one by one (each after the gateway's retries) and still look like a run."""
    if model and route:
        raise InvalidRequestError("give --model or --route, not both")
    cfg = gateway.config.batching
    if model:
        return _known_model(gateway, model, "--model")
    if route:
        return _known_route(gateway, route, "--route")
    if cfg.model:
        return _known_model(gateway, cfg.model, "batching.model")
    if cfg.route:
        return _known_route(gateway, cfg.route, "batching.route")
    if gateway.config.default_model:
        return gateway.config.default_model
    raise InvalidRequestError("no model to run the batch on: pass --model or --route (or set batching.model)")


def _refuse(where: str, message: str) -> ConfigError:
    """A flag's mistake is the user's command line (UsageError); a config key's is the config's."""
    return UsageError(f"{where}: {message}") if where.startswith("--") else ConfigError(f"{where}: {message}")


def _known_model(gateway: Gateway, name: str, where: str) -> str:
    """``name`` when the gateway can serve it: a catalog model or alias, ``auto`` (with a router
    or a default model) or ``route:NAME``; else an error listing what the config has."""
    if name.startswith(ROUTE_PREFIX):
        _known_route(gateway, name[len(ROUTE_PREFIX):], where)
        return name
    if gateway.catalog.get(name) is not None:
        return name
    if name == "auto" and (gateway.router is not None or gateway.config.default_model):
        return name
    known = ", ".join(sorted(m.name for m in gateway.catalog)) or "none"
    raise _refuse(where, f"unknown model {name!r} (this config has: {known})")


def _known_route(gateway: Gateway, name: str, where: str) -> str:
    """``route:NAME`` when the config's routing section has that route, else an error listing them."""
    routes = sorted(gateway.config.routing.routes)
    if name not in routes:
        known = f"this config has: {', '.join(routes)}" if routes else "this config has no routing.routes"
        raise _refuse(where, f"unknown route {name!r} ({known})")
    return ROUTE_PREFIX + name


class _Run:
    def __init__(self, gateway: Gateway, target: str, task: str, labels: list[str] | None,
                 validate: packing.Validator | None, progress: Progress, task_name: str,
                 checkpoint: Checkpoint | None = None) -> None:
        self.gw = gateway
        self.checkpoint = checkpoint
        self.target = target
        self.task = task
        self.labels = labels
        self.validate = validate
        self.progress = progress
        self.task_name = task_name
        info = gateway.catalog.get(target)
        self.json_mode = info.supports_json_mode if info is not None else True
        self.max_per_item = gateway.config.batching.max_output_tokens_per_item
        self.results: dict[str, ItemResult] = {}
        self._saving = False

    def _result(self, item: Item) -> ItemResult:
        if item.id not in self.results:
            self.results[item.id] = ItemResult(item.id, None, "failed", "failed")
        return self.results[item.id]

    async def _call(self, items: list[Item], messages: list[dict[str, Any]], params: dict[str, Any],
                    judge: Judge) -> _Sent:
        """Send one request for ``items`` and judge its answer; its cost is shared among them. An
        answer cut or blocked (``max_tokens``, a provider's filter or failure) answers none of
        them (it was paid for, but is no answer)."""
        req = ChatRequest(model=self.target, messages=messages, params=params,
                          options={"task": self.task_name})
        ctx = RequestContext(request=req, request_id=new_request_id())
        found: list[packing.PackOutcome] = []
        raised: list[Exception] = []

        async def account(done: RequestContext) -> None:
            # Runs as the ledger row is written (the last step of the request): the row names
            # the strategy and the baseline of what this call answered.
            if done.cache_status != "hit":
                done.strategy = STRATEGY
            if done.status != "ok":
                return  # a failed request has no baseline (docs/operations.md, "Accounting")
            try:
                outcome = self._judge(done, items, params, judge)
            except Exception as exc:  # the caller's validate(): raised to it below, as before
                raised.append(exc)
                return
            found.append(outcome)
            done.baseline_cost_usd = self._baseline(items, outcome, done.baseline_cost_usd)

        ctx.finalizers.append(account)
        error: ThriftyError | None = None
        try:
            await self.gw.run(ctx)
        except ThriftyError as exc:
            error = exc
        self._share(items, ctx)
        if raised:
            raise raised[0]
        failed = [a.error or "" for a in ctx.attempts if a.status == "error" and a.purpose == "answer"]
        if found:
            return _Sent(found[0], True, error, failed)
        why = error.message if error is not None else "no answer"
        return _Sent(packing.PackOutcome(failed={it.id: why for it in items}), False, error, failed)

    def _judge(self, ctx: RequestContext, items: list[Item], params: dict[str, Any],
               judge: Judge) -> packing.PackOutcome:
        response = ctx.response or {}
        cut = cut_short(response)
        if cut is not None:
            why = packing.cut_why(cut, params.get("max_tokens"))
            return packing.PackOutcome(failed={it.id: why for it in items})
        return judge(response_text(response))

    def _baseline(self, items: list[Item], outcome: packing.PackOutcome, settled: float | None) -> float | None:
        """The call's baseline: each item it answered, sent on its own to the baseline model. A
        one-item call was sent on its own, so the gateway's baseline (its real tokens) stands."""
        answered = [it for it in items if it.id in outcome.accepted]
        if not answered:
            return 0.0 if settled is not None else None
        if len(items) == 1:
            return settled
        total = 0.0
        for it in answered:
            one = packing.alone_baseline_usd(self.task, it, outcome.accepted[it.id], self.labels,
                                             self.gw.catalog.baseline)
            if one is None:
                return None
            total += one
        return total

    def _share(self, items: list[Item], ctx: RequestContext) -> None:
        """Add an equal share of the call's cost and tokens to each of ``items``: a failed call's
        too (a deadline reached mid-answer is billed, and in the ledger)."""
        if not ctx.attempts and ctx.status != "ok":
            return  # refused before reaching the provider: nothing billed, no call made
        share = 1.0 / len(items)
        cost = ctx.spent_usd()
        prompt = sum(a.usage.prompt_tokens for a in ctx.attempts)
        completion = sum(a.usage.completion_tokens for a in ctx.attempts)
        for it in items:
            r = self._result(it)
            r.calls += 1
            r.prompt_tokens += prompt * share
            r.completion_tokens += completion * share
            r.cost_usd = None if (cost is None or r.cost_usd is None) else r.cost_usd + cost * share

    async def pack(self, items: list[Item], level: int) -> None:
        if len(items) == 1 or level >= 2:
            for it in items:
                await self.single(it)
            return
        outcome = await self._packed_call(items)
        produced = "packed" if level == 0 else "repacked"
        for it in items:
            if it.id in outcome.accepted:
                r = self._result(it)
                r.output, r.status, r.produced, r.error = outcome.accepted[it.id], "ok", produced, None
        self._done([it for it in items if it.id in outcome.accepted])
        retry = [it for it in items if it.id in outcome.failed]
        for it in retry:
            self._result(it).error = outcome.failed[it.id]
        if not retry:
            return
        size = max(1, (len(items) + 1) // 2) if len(retry) > 1 and level == 0 else 1
        if size == 1:
            for it in retry:
                await self.single(it)
        else:
            for i in range(0, len(retry), size):
                await self.pack(retry[i : i + size], level + 1)

    async def _packed_call(self, items: list[Item]) -> packing.PackOutcome:
        """One pack's call, sent again with the next weaker response_format (packing.FORMATS)
        while the provider refuses the one sent: learned for the target, so the run's (and the
        process's) later packs are not refused again. Each refused call is in the ledger, and
        counted in its items' calls, like any other. A refusal the call survived (a route whose
        cheap tier refused, its next tier answered) is learned too, and the answer kept."""
        messages = packing.packed_messages(self.task, items, self.labels)
        catalog = self.gw.catalog
        while True:
            fmt = packing.known_format(catalog, self.target)
            params = packing.packed_params(self.labels, self.json_mode, self.max_per_item * len(items) + 50, fmt)
            sent = await self._call(items, messages, params,
                                    lambda text: packing.parse_packed(text, items, self.labels, self.validate))
            if "response_format" not in params or not _format_refused(sent):
                return sent.outcome
            packing.weaker_format(catalog, self.target, fmt)  # strictly weaker: the loop ends at "none"
            if sent.answered:
                return sent.outcome

    async def single(self, item: Item) -> None:
        params: dict[str, Any] = {"temperature": 0, "max_tokens": self.max_per_item}
        outcome = (await self._call([item], packing.single_messages(self.task, item, self.labels), params,
                                    lambda text: self._alone(item, text))).outcome
        r = self._result(item)
        if item.id in outcome.accepted:
            r.output, r.status, r.produced, r.error = outcome.accepted[item.id], "ok", "single", None
        else:
            r.status, r.produced, r.error = "failed", "failed", outcome.failed.get(item.id) or "no answer"
        self._done([item])

    def _alone(self, item: Item, text: str) -> packing.PackOutcome:
        """The one-item call's answer judged as a plain answer."""
        ok = packing.valid_output(text, item, self.labels, self.validate)
        if ok is not None:
            return packing.PackOutcome(accepted={item.id: ok})
        return packing.PackOutcome(failed={item.id: f"invalid answer alone too: {text[:80]!r}"})

    def _done(self, items: list[Item]) -> None:
        """``items`` are final (an answer accepted, or failed for good)."""
        if items:
            cost = sum((self.results[it.id].cost_usd or 0.0) for it in items)
            self.progress.update(len(items), cost)
            if self.checkpoint is not None:
                self.checkpoint.add([(it.json_id, self.results[it.id]) for it in items])

    async def save(self) -> None:
        """Write the checkpoint when it is due (one write at a time): the ledger rows first."""
        cp = self.checkpoint
        if cp is None or not cp.due() or self._saving:
            return
        self._saving = True
        try:
            await asyncio.to_thread(cp.sync, self.gw.flush)
        finally:
            self._saving = False


def _format_refused(sent: _Sent) -> bool:
    """Whether the call, or one of its tries, was refused for its response_format: the call's own
    error by its status and param, a try by its message (an attempt keeps no status)."""
    err = sent.error
    if isinstance(err, UpstreamError) and packing.format_refused(err.status, err.param, err.message):
        return True
    return any(packing.format_refused(None, None, message) for message in sent.failed)


async def run_batch(
    gateway: Gateway,
    items: list[Any],
    *,
    task: str,
    model: str | None = None,
    route: str | None = None,
    pack: int | None = None,
    labels: list[str] | None = None,
    validate: packing.Validator | None = None,
    concurrency: int | None = None,
    progress: bool = False,
    task_name: str = "batch",
    checkpoint: Checkpoint | None = None,
) -> list[ItemResult]:
    """Run ``task`` on every item, ``pack`` items per call; one ``ItemResult`` per item, in order.

    With a ``checkpoint`` (checkpoint.py, opened for this run's ``run_id_for``), the items it
    already holds are not run again (their kept results are returned), and items finishing ok
    are written to it as the run goes, including when the run is cancelled or fails."""
    if not task.strip():
        raise InvalidRequestError("--task must not be empty")
    checked = coerce_items(items)
    # ``is None``, not ``or``: a 0 given on purpose is refused, not silently swapped for the default.
    size = gateway.config.batching.pack if pack is None else pack
    if size < 1:
        raise UsageError(f"--pack: expected a whole number >= 1, got {size}")
    in_flight = gateway.config.batching.concurrency if concurrency is None else concurrency
    if in_flight < 1:
        # A semaphore below 1 raises (negative) or never lets a call through (0).
        raise UsageError(f"--concurrency: expected a whole number >= 1, got {in_flight}")
    target = resolve_target(gateway, model, route)
    done: dict[str, ItemResult] = {}
    if checkpoint is not None:
        from thrifty.batching.checkpoint import run_id_for

        if checkpoint.run_id != run_id_for(target, task, labels, checked):
            raise InvalidRequestError(f"checkpoint {checkpoint.path} was opened for another run (other items, "
                                      "task, labels or model)")
        done = {it.id: checkpoint.finished[it.id] for it in checked if it.id in checkpoint.finished}
    todo = [it for it in checked if it.id not in done]
    bar = Progress(len(checked), enabled=progress)
    if done:
        bar.update(len(done), sum(r.cost_usd or 0.0 for r in done.values()))
    run = _Run(gateway, target, task, labels, validate, bar, task_name, checkpoint)
    run.results.update(done)
    sem = asyncio.Semaphore(in_flight)

    async def one(chunk: list[Item]) -> None:
        async with sem:
            await run.pack(chunk, 0)
        await run.save()

    try:
        await asyncio.gather(*(one(todo[i : i + size]) for i in range(0, len(todo), size)))
    finally:
        bar.close()
        if checkpoint is not None:
            # Also when cancelled (Ctrl-C) or failing: what finished is kept. Blocking here is
            # fine, the run is over; awaiting could be cancelled again.
            checkpoint.sync(gateway.flush)
    return [run.results[it.id] for it in checked]
