"""A route's split over real HTTP: mock upstream <- thrifty gateway <- openai SDK. The share of
prompts the split sends on is served by the target route's model; the ledger keeps the route the
request was given, and ``route explain`` names the split's target for the prompts it takes."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fixtures.routed import client, routed_gateway
from thrifty.cli.main import main
from thrifty.gateway import Gateway
from thrifty.ledger.store import SQLiteStore
from thrifty.mock.server import RunningServer
from thrifty.routing.split import split_point

MOCK = {"models": {m: {"answers": [{"pattern": "", "answer": f"answer from {m}"}]} for m in ("cheap", "dear", "big")}}
ROUTING: dict[str, Any] = {
    "default_route": "main",
    "routes": {"main": {"model": "cheap", "split": {"share": 0.25, "route": "more"}},
               "more": {"model": "dear"}},
}
PROMPTS = [f"Summarise ticket #{i}: the printer on floor {i % 7} is jammed." for i in range(80)]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, RunningServer, Path]]:
    tmp = tmp_path_factory.mktemp("split")
    with routed_gateway(tmp, MOCK, {"cheap": 0.1, "dear": 1.0, "big": 10.0}, "big", ROUTING) as (gw, server):
        yield gw, server, tmp


def test_the_split_share_is_served_by_the_target_route_and_the_ledger_keeps_the_route(
        served: tuple[Gateway, RunningServer, Path]) -> None:
    gw, server, _ = served
    sdk = client(server)
    models = []
    for prompt in PROMPTS:
        raw = sdk.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": prompt}])
        models.append(raw.headers["x-thrifty-model"])
        assert raw.parse().choices[0].message.content == f"answer from {models[-1]}"
    want = ["dear" if split_point("main", p) < 0.25 else "cheap" for p in PROMPTS]
    assert models == want and 0 < want.count("dear") < len(PROMPTS)
    # The same prompt again takes the same path.
    again = sdk.chat.completions.with_raw_response.create(model="route:main",
                                                          messages=[{"role": "user", "content": PROMPTS[0]}])
    assert again.headers["x-thrifty-model"] == want[0]
    gw.flush()
    assert gw.config.ledger.path
    rows = SQLiteStore(gw.config.ledger.path).query("SELECT route, served_model FROM requests ORDER BY ts")
    assert {r[0] for r in rows} == {"main"}
    assert [r[1] for r in rows[: len(PROMPTS)]] == want


def test_route_explain_names_the_split_target(served: tuple[Gateway, RunningServer, Path]) -> None:
    _gw, _, tmp = served
    config = tmp / "thrifty.yaml"
    config.write_text(yaml.safe_dump({
        "providers": {"mock": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {m: {"provider": "mock", "price": {"input": 1, "output": 1}} for m in ("cheap", "dear", "big")},
        "baseline": "big", "routing": ROUTING}), encoding="utf-8")
    taken = next(p for p in PROMPTS if split_point("main", p) < 0.25)
    kept = next(p for p in PROMPTS if split_point("main", p) >= 0.25)
    for prompt, split_to, model in ((taken, "more", "dear"), (kept, None, "cheap")):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
            main(["route", "explain", prompt, "--config", str(config), "--json"])
        assert not exc.value.code, err.getvalue()
        explained = json.loads(out.getvalue())
        assert explained["route"] == "main" and explained["split_to"] == split_to
        assert [s["model"] for s in explained["plan"]] == [model]
        assert "split" in explained["reason"]
