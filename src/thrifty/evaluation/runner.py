"""Sending every prompt through the real pipeline and recording what it did.

Each item becomes an ordinary chat request: ``model: "auto"``, the item's messages, and
``metadata: {"task": <label>}`` when the item has one (plus ``eval_id`` so the replay can tell
apart rows that share a prompt). The runner only ever holds items without scores.

In-process (default): the Gateway calls a ``ReplayProvider`` directly; each finished request
context is collected by a gateway observer (the same hook the ledger's consumers use), so a
failed request is recorded too. Requests run concurrently, bounded by a semaphore.

Over HTTP (``--via-http``): the replay upstream and the gateway each run as real servers on
loopback; prompts go to the gateway's /v1/chat/completions, and the calls and costs are read
back from the gateway's ledger by request id, exactly as ``thrifty report`` would see them.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from thrifty.errors import ThriftyError
from thrifty.evaluation.dataset import Item
from thrifty.evaluation.metrics import Decision
from thrifty.evaluation.policy import GatewayFactory, replay_config
from thrifty.pipeline.context import RequestContext, new_request_id
from thrifty.providers.replay import EVAL_ID_KEY, ReplayIndex, ReplayProvider, eval_id
from thrifty.types import ChatRequest

Progress = Callable[[int], None]


def request_body(item: Item) -> dict[str, Any]:
    metadata: dict[str, Any] = {EVAL_ID_KEY: eval_id(item)}
    if item.task:
        metadata["task"] = item.task
    # ``store``: ``metadata`` goes upstream only with it (OpenAI refuses metadata without it:
    # types.ChatRequest.to_body), and the replay upstream reads ``eval_id`` there to tell apart
    # rows sharing a prompt. The replay stores nothing.
    return {"model": "auto", "messages": item.messages, "metadata": metadata, "store": True}


def decision_from_context(item: Item, ctx: RequestContext) -> Decision:
    calls = [a.model for a in ctx.attempts if a.status == "ok"]
    cost = ctx.cost_usd if ctx.cost_usd is not None else (ctx.spent_usd() or 0.0)
    if ctx.status != "ok" or ctx.served_model is None:
        return Decision(item.file, item.row, calls, None, cost, ctx.error or "request failed")
    return Decision(item.file, item.row, calls, ctx.served_model, cost)


async def run_inprocess(
    config: dict[str, Any],
    index: ReplayIndex,
    items: list[Item],
    factory: GatewayFactory,
    *,
    concurrency: int = 32,
    progress: Progress | None = None,
) -> list[Decision]:
    gateway = factory(config, {"replay": ReplayProvider(index)})
    finished: dict[str, RequestContext] = {}
    gateway.observers.append(lambda ctx: finished.__setitem__(ctx.request_id, ctx))
    sem = asyncio.Semaphore(concurrency)

    async def one(item: Item) -> Decision:
        async with sem:
            request_id = new_request_id()
            try:
                await gateway.handle(ChatRequest.from_body(request_body(item)), request_id=request_id)
            except ThriftyError:
                pass  # recorded by the observer with its error, like the ledger would
            finally:
                if progress:
                    progress(1)
            ctx = finished.pop(request_id, None)
            if ctx is None:
                return Decision(item.file, item.row, [], None, 0.0, "request was not recorded")
            return decision_from_context(item, ctx)

    try:
        return list(await asyncio.gather(*(one(i) for i in items)))
    finally:
        await gateway.aclose()


def run_via_http(
    config_for: Callable[[str, str], dict[str, Any]],
    index: ReplayIndex,
    items: list[Item],
    factory: GatewayFactory,
    *,
    concurrency: int = 16,
    progress: Progress | None = None,
) -> list[Decision]:
    """``config_for(replay_base_url, ledger_path)`` gives the gateway config for this run."""
    from thrifty.evaluation.replay_server import create_replay_app
    from thrifty.mock.server import run_in_thread

    with tempfile.TemporaryDirectory(prefix="thrifty-eval-") as tmp:
        ledger_path = str(Path(tmp) / "ledger.db")
        with run_in_thread(create_replay_app(index)) as replay:
            gateway = factory(config_for(replay.url + "/v1", ledger_path), None)
            with run_in_thread(gateway.app()) as server:
                ids = asyncio.run(_post_all(server.url, items, concurrency, progress))
            gateway.flush()
            decisions = _from_ledger(gateway, items, ids)
            if gateway.ledger is not None:
                gateway.ledger.close()
                gateway.ledger = None
        return decisions


async def _post_all(url: str, items: list[Item], concurrency: int, progress: Progress | None) -> list[str | None]:
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(headers={"content-type": "application/json"}) as session:

        async def one(item: Item) -> str | None:
            async with sem:
                try:
                    async with session.post(f"{url}/v1/chat/completions", data=json.dumps(request_body(item))) as r:
                        await r.read()
                        return r.headers.get("x-thrifty-request-id")
                except aiohttp.ClientError:
                    return None
                finally:
                    if progress:
                        progress(1)

        return list(await asyncio.gather(*(one(i) for i in items)))


def _from_ledger(gateway: Any, items: list[Item], ids: list[str | None]) -> list[Decision]:
    store = gateway.ledger.store
    requests = {r[0]: r[1:] for r in store.query(
        "SELECT request_id, served_model, cost_usd, status, error FROM requests")}
    calls: dict[str, list[str]] = {}
    for request_id, model in store.query(
            "SELECT request_id, model FROM attempts WHERE status = 'ok' ORDER BY request_id, seq"):
        calls.setdefault(request_id, []).append(model)
    out = []
    for item, rid in zip(items, ids, strict=True):
        row = requests.get(rid) if rid else None
        if row is None:
            out.append(Decision(item.file, item.row, [], None, 0.0, "no ledger row"))
            continue
        served, cost, status, error = row
        made = calls.get(rid or "", [])
        if status != "ok" or not served:
            out.append(Decision(item.file, item.row, made, None, float(cost or 0.0), error or "request failed"))
        else:
            out.append(Decision(item.file, item.row, made, served, float(cost or 0.0)))
    return out


__all__ = ["decision_from_context", "replay_config", "request_body", "run_inprocess", "run_via_http"]
