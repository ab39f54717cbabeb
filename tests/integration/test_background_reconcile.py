"""Background Responses API requests nobody retrieves through thrifty still get their real cost:
the gateway's periodic reconciler (``server.reconcile_background_s``) and ``thrifty ledger
reconcile`` ask the provider and settle them as a client's retrieve would, once. Real gateways on
127.0.0.1 in front of the mock upstream over HTTP, the official openai SDK creating the
responses, the CLI run as a process."""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from starlette.applications import Starlette

from fixtures.processes import thrifty_cmd
from fixtures.services import free_port
from thrifty.gateway import Gateway
from thrifty.ledger.store import SQLStore
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

UPSTREAM_KEY = "sk-upstream-reconcile-0000"
ADMIN = "admin-reconcile-0000"
IN, CACHED, OUT = 2.0, 0.5, 8.0  # USD per million tokens


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[RunningServer, Starlette]]:
    app = create_mock(MockConfig.from_dict({"seed": 9, "api_key": UPSTREAM_KEY,
                                            "models": {"gpt-up": {"reasoning_tokens": [16, 16]}}}))
    with run_in_thread(app) as server:
        yield server, app


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "postgres":
        return {"dsn": request.getfixturevalue("pg_dsn")}
    return {"path": str(tmp_path / "ledger.db")}


def config(base_url: str, ledger: dict[str, Any], every_s: float, min_age_s: float = 0.0) -> dict[str, Any]:
    return {
        "providers": {"a": {"base_url": base_url + "/v1", "api_key": UPSTREAM_KEY, "max_retries": 0}},
        "models": {"gpt": {"provider": "a", "upstream_model": "gpt-up",
                           "price": {"input": IN, "cached_input": CACHED, "output": OUT}}},
        "default_model": "gpt",
        "ledger": {**ledger, "flush_interval_s": 0.05},
        "auth": {"enabled": True, "admin_key": ADMIN},
        "server": {"reconcile_background_s": every_s, "reconcile_background_min_age_s": min_age_s},
    }


def client(server: RunningServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=30)


def store(gw: Gateway) -> SQLStore:
    assert gw.ledger is not None
    return gw.ledger.store


def pending(gw: Gateway, response_id: str) -> int:
    return int(store(gw).query("SELECT pending FROM stored_responses WHERE response_id = ?", (response_id,))[0][0])


def cost(gw: Gateway, request_id: str) -> tuple[Any, ...]:
    """The request's tokens and cost, and its (single) attempt's cost and cost source."""
    req = store(gw).query("SELECT prompt_tokens, completion_tokens, cost_usd FROM requests WHERE request_id = ?",
                          (request_id,))
    att = store(gw).query("SELECT cost_usd, cost_source FROM attempts WHERE request_id = ?", (request_id,))
    assert len(req) == 1 and len(att) == 1
    return (*req[0], *att[0])


def real_usd(upstream: RunningServer, response_id: str) -> tuple[int, int, float]:
    """The finished response's tokens and price, asked of the mock directly (not through thrifty)."""
    got = httpx.get(f"{upstream.url}/v1/responses/{response_id}", headers={"authorization": f"Bearer {UPSTREAM_KEY}"})
    assert got.status_code == 200 and got.json()["status"] == "completed", got.text
    usage = got.json()["usage"]
    cached = usage["input_tokens_details"]["cached_tokens"]
    usd = ((usage["input_tokens"] - cached) * IN + cached * CACHED + usage["output_tokens"] * OUT) / 1e6
    return usage["input_tokens"], usage["output_tokens"], usd


def spent(server: RunningServer, key_id: str) -> float:
    shown = httpx.get(f"{server.url}/admin/keys/{key_id}", headers={"authorization": f"Bearer {ADMIN}"})
    assert shown.status_code == 200, shown.text
    return float(shown.json()["usage"]["spent_usd"])


def metered_cost(server: RunningServer) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    found = re.search(r'^thrifty_cost_usd_total\{model="gpt",route="-"\} (\S+)$', text, re.M)
    assert found, text
    return float(found.group(1))


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def stored_at_mock(app: Starlette) -> dict[str, Any]:
    """The mock's stored responses (id -> entry), to make one look still running."""
    for route in app.routes:
        endpoint = getattr(route, "endpoint", None)
        if getattr(route, "path", "") == "/v1/responses/{response_id}" and hasattr(endpoint, "__self__"):
            return endpoint.__self__.stored  # type: ignore[union-attr,no-any-return]
    raise AssertionError("the mock has no stored responses route")


def reconcile(cfg: dict[str, Any], path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """``thrifty ledger reconcile`` as an operator's cron would run it, config from a file."""
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(thrifty_cmd("ledger", "reconcile", "--config", str(path), *flags),
                          capture_output=True, text=True, timeout=120)


def counts(run: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The CLI's five lines as numbers: settled, still running, gone, failed to reach the provider, not due yet."""
    out: dict[str, int] = {}
    for label in ("settled", "still running", "gone", "failed to reach the provider"):
        found = re.search(rf"^{label} (\d+)", run.stdout, re.M)
        assert found, run.stdout
        out[label] = int(found.group(1))
    found = re.search(r"^not due yet (\d+)", run.stdout, re.M)
    assert found, run.stdout
    out["not due yet"] = int(found.group(1))
    assert len(run.stdout.splitlines()) == 5, run.stdout
    return out


def test_the_serve_loop_settles_a_response_nobody_retrieves(
        upstream: tuple[RunningServer, Starlette], ledger: dict[str, Any]) -> None:
    mock, _ = upstream
    gw = Gateway.from_config(config(mock.url, ledger, every_s=0.2, min_age_s=0.5))
    try:
        assert gw.ops.keys is not None
        key, secret = gw.ops.keys.create("tenant-a", budget_usd=5.0)
        with run_in_thread(gw.app()) as server:
            created = client(server, secret).responses.create(model="gpt", input="Describe a glacier.",
                                                              background=True)
            assert created.status == "queued" and created.usage is None
            request_id = created._request_id or ""
            gw.flush()
            estimate = cost(gw, request_id)
            assert estimate[1] == 0 and estimate[4] == "estimated"  # the prompt only
            assert spent(server, key.key_id) == pytest.approx(estimate[2], rel=1e-9)
            # Nobody retrieves it: the loop asks the provider once it is older than the minimum age.
            task = gw.app().state.reconcile_task
            assert task is not None and not task.done()
            wait_for(lambda: pending(gw, created.id) == 0)
            prompt, completion, usd = real_usd(mock, created.id)
            assert usd > estimate[2] * 2 and completion > 0
            assert cost(gw, request_id) == (prompt, completion, pytest.approx(usd, rel=1e-9),
                                            pytest.approx(usd, rel=1e-9), "computed")
            # The budget correction follows the ledger's amendment in the same step.
            wait_for(lambda: spent(server, key.key_id) == pytest.approx(usd, rel=1e-9))
            assert metered_cost(server) == pytest.approx(usd, rel=1e-9)
            time.sleep(0.5)  # later passes change nothing
            assert cost(gw, request_id)[2] == pytest.approx(usd, rel=1e-9)
            assert spent(server, key.key_id) == pytest.approx(usd, rel=1e-9)
        assert task.done()  # stopped with the server: nothing outlives the lifespan
    finally:
        gw.close()


def test_the_cli_settles_responses_when_no_gateway_runs(
        upstream: tuple[RunningServer, Starlette], ledger: dict[str, Any], tmp_path: Path) -> None:
    mock, _ = upstream
    cfg = config(mock.url, ledger, every_s=0)  # the loop off: only the CLI settles
    gw = Gateway.from_config(cfg)
    try:
        assert gw.ops.keys is not None
        key, secret = gw.ops.keys.create("tenant-a", budget_usd=5.0)
        with run_in_thread(gw.app()) as server:
            c = client(server, secret)
            created = [c.responses.create(model="gpt", input=f"Tell story {i}.", background=True) for i in range(2)]
    finally:
        gw.close()

    young = reconcile(cfg, tmp_path / "thrifty.yaml", "--min-age", "1h")  # too young: nothing asked
    assert young.returncode == 0, young.stderr
    # Said, rather than four zeros with no reason.
    assert counts(young) == {"settled": 0, "still running": 0, "gone": 0, "failed to reach the provider": 0,
                             "not due yet": 2}
    run = reconcile(cfg, tmp_path / "thrifty.yaml", "--min-age", "0s")
    assert run.returncode == 0, run.stderr
    assert counts(run)["settled"] == 2 and "Traceback" not in run.stderr
    again = reconcile(cfg, tmp_path / "thrifty.yaml", "--min-age", "0")
    assert counts(again)["settled"] == 0  # once

    gw = Gateway.from_config(cfg)
    try:
        total = 0.0
        for response in created:
            prompt, completion, usd = real_usd(mock, response.id)
            assert pending(gw, response.id) == 0
            assert cost(gw, response._request_id or "")[:3] == (prompt, completion, pytest.approx(usd, rel=1e-9))
            total += usd
        with run_in_thread(gw.app()) as server:  # the budget, seeded from the amended ledger
            assert spent(server, key.key_id) == pytest.approx(total, rel=1e-9)
    finally:
        gw.close()


def test_a_client_retrieve_and_the_reconciler_settle_once(
        upstream: tuple[RunningServer, Starlette], ledger: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    mock, _ = upstream
    cfg = config(mock.url, ledger, every_s=0.05)
    gw = Gateway.from_config(cfg)
    caplog.set_level(logging.INFO, logger="thrifty.server")
    try:
        assert gw.ops.keys is not None
        key, secret = gw.ops.keys.create("tenant-a", budget_usd=5.0)
        with run_in_thread(gw.app()) as server:
            c = client(server, secret)
            created, threads = [], []
            for i in range(6):
                created.append(c.responses.create(model="gpt", input=f"Explain topic {i}.", background=True))
                # Three retrieves each, at once or a little later: some before the loop's next
                # pass, some racing it, some after it.
                for _ in range(3):
                    threads.append(threading.Thread(target=lambda r=created[-1], w=(i % 3) * 0.03: (
                        time.sleep(w), c.responses.retrieve(r.id))))
                    threads[-1].start()
            for t in threads:
                t.join()
            wait_for(lambda: all(pending(gw, r.id) == 0 for r in created))
            total = 0.0
            for r in created:
                _, _, usd = real_usd(mock, r.id)
                assert cost(gw, r._request_id or "")[2] == pytest.approx(usd, rel=1e-9)
                total += usd
            time.sleep(0.3)  # loop passes after the last settlement change nothing
            assert spent(server, key.key_id) == pytest.approx(total, rel=1e-9)  # no double correction
            assert metered_cost(server) == pytest.approx(total, rel=1e-9)
        amended = [r for r in caplog.records if "amended to its usage" in r.getMessage()]
        assert len(amended) == 6  # each settled once, by a retrieve or by the loop
    finally:
        gw.close()


def test_a_response_gone_or_a_provider_unreachable_is_reported_not_raised(
        upstream: tuple[RunningServer, Starlette], tmp_path: Path) -> None:
    mock, _ = upstream
    ledger = {"path": str(tmp_path / "ledger.db")}
    cfg = config(mock.url, ledger, every_s=0)
    gw = Gateway.from_config(cfg)
    try:
        assert gw.ops.keys is not None
        _, secret = gw.ops.keys.create("tenant-a")
        with run_in_thread(gw.app()) as server:
            c = client(server, secret)
            gone, kept = (c.responses.create(model="gpt", input=f"Question {i}?", background=True) for i in range(2))
        gw.flush()
        estimate = cost(gw, gone._request_id or "")
    finally:
        gw.close()
    # Deleted at the provider, behind thrifty's back.
    deleted = httpx.delete(f"{mock.url}/v1/responses/{gone.id}", headers={"authorization": f"Bearer {UPSTREAM_KEY}"})
    assert deleted.status_code == 200

    # The provider unreachable: both stay pending, exit 1.
    dead = config(f"http://127.0.0.1:{free_port()}", ledger, every_s=0)
    down = reconcile(dead, tmp_path / "dead.yaml", "--min-age", "0s")
    assert down.returncode == 1, down.stderr
    assert counts(down) == {"settled": 0, "still running": 0, "gone": 0,
                           "failed to reach the provider": 2, "not due yet": 0}
    assert "Traceback" not in down.stderr and "stays pending" in down.stderr
    assert UPSTREAM_KEY not in down.stderr + down.stdout

    run = reconcile(cfg, tmp_path / "thrifty.yaml", "--min-age", "0s")
    assert run.returncode == 0, run.stderr
    assert counts(run) == {"settled": 1, "still running": 0, "gone": 1,
                          "failed to reach the provider": 0, "not due yet": 0}
    assert "Traceback" not in run.stderr
    assert re.search(rf"warning: background response {gone.id} is gone .* will never be settled", run.stderr)
    gw = Gateway.from_config(cfg)
    try:
        assert pending(gw, gone.id) == 0 and pending(gw, kept.id) == 0
        assert cost(gw, gone._request_id or "") == estimate  # the estimate stays, documented
        assert cost(gw, kept._request_id or "")[4] == "computed"
    finally:
        gw.close()
    assert counts(reconcile(cfg, tmp_path / "thrifty.yaml", "--min-age", "0s"))["gone"] == 0  # reported once


def test_a_response_still_running_stays_pending(upstream: tuple[RunningServer, Starlette], tmp_path: Path) -> None:
    mock, app = upstream
    # The minimum age keeps the loop off it until it looks running at the mock (a moment later).
    cfg = config(mock.url, {"path": str(tmp_path / "ledger.db")}, every_s=0.1, min_age_s=0.3)
    gw = Gateway.from_config(cfg)
    try:
        assert gw.ops.keys is not None
        _, secret = gw.ops.keys.create("tenant-a")
        with run_in_thread(gw.app()) as server:
            created = client(server, secret).responses.create(model="gpt", input="Think long.", background=True)
            at_mock = stored_at_mock(app)[created.id]
            queued = at_mock.response
            at_mock.response = {**queued, "status": "in_progress"}  # the provider is still working on it
            gw.flush()
            estimate = cost(gw, created._request_id or "")
            time.sleep(0.8)  # several passes of the loop
            assert pending(gw, created.id) == 1 and cost(gw, created._request_id or "") == estimate
        run = reconcile(cfg, tmp_path / "thrifty.yaml", "--min-age", "0s")
        assert run.returncode == 0, run.stderr
        assert counts(run) == {"settled": 0, "still running": 1, "gone": 0,
                              "failed to reach the provider": 0, "not due yet": 0}
        assert pending(gw, created.id) == 1 and cost(gw, created._request_id or "") == estimate

        at_mock.response = queued  # it runs now: the next pass settles it
        assert counts(reconcile(cfg, tmp_path / "thrifty.yaml", "--min-age", "0s"))["settled"] == 1
        assert pending(gw, created.id) == 0
        assert cost(gw, created._request_id or "")[4] == "computed"
    finally:
        gw.close()


def test_gateways_sharing_a_ledger_take_turns_asking_about_a_pending_response(
        upstream: tuple[RunningServer, Starlette], ledger: dict[str, Any]) -> None:
    """Every instance of a fleet asked the provider about every pending entry on every pass: ten
    gateways, ten look-ups per entry and minute. A serve pass now takes the entries it asks about
    (``ResponseIndex.lease``), and the others' passes skip them until the lease ends; the CLI's
    pass, an operator's explicit request, still asks about all of them."""
    import asyncio

    from thrifty.server.reconcile import Reconciler
    from thrifty.server.response_resources import ResponseResources

    mock, app = upstream
    cfg = config(mock.url, ledger, every_s=0)  # no loop of their own: the passes are driven here
    first, second = Gateway.from_config(cfg), Gateway.from_config(cfg)
    try:
        assert first.ops.keys is not None
        _, secret = first.ops.keys.create("tenant-a")
        with run_in_thread(first.app()) as server:
            created = client(server, secret).responses.create(model="gpt", input="Think long.", background=True)
        first.flush()
        at_mock = stored_at_mock(app)[created.id]
        at_mock.response = {**at_mock.response, "status": "in_progress"}

        def looked_up() -> int:
            seen = httpx.get(f"{mock.url}/mock/requests", params={"limit": 200}).json()["data"]
            return sum(1 for r in seen if r["method"] == "GET" and r["path"].endswith(created.id))

        def one_pass(gw: Gateway, lease_s: float | None) -> Any:
            reconciler = Reconciler(ResponseResources(gw, gw.ops.responses), min_age_s=0.0)
            return asyncio.run(reconciler.run_once(lease_s=lease_s))

        before = looked_up()
        taken = one_pass(first, 60.0)
        assert (taken.running, taken.elsewhere) == (1, 0)
        skipped = one_pass(second, 60.0)  # the first gateway holds it for a minute
        assert (skipped.running, skipped.elsewhere) == (0, 1)
        assert skipped.oldest_pending is not None  # still pending: the sweep's window keeps it
        assert looked_up() - before == 1
        assert one_pass(second, None).running == 1  # no lease (the CLI's pass): asked regardless
        assert looked_up() - before == 2
        # A lease that ended (set back here rather than waited out) lets the next pass take it.
        store(first).execute("UPDATE stored_responses SET poll_after = 0 WHERE response_id = ?", (created.id,))
        assert one_pass(second, 60.0).running == 1
        assert looked_up() - before == 3
    finally:
        first.close()
        second.close()
