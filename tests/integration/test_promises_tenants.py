"""Promise: another tenant's cached answer is never served, over real HTTP (uvicorn on loopback,
the openai SDK, the mock upstream), exact or semantic, streamed or not, with virtual keys
(tenant = the key) and without (tenant = a hash of the client's bearer token).

Each refusal is shown to be the tenant's doing: the same request from the owning tenant hits.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from thrifty.gateway import Gateway
from thrifty.ledger.store import SQLiteStore
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

QUESTION = "How do I enable two factor authentication?"
REWORDED = "how do I enable two-factor authentication"
STREAMED = "How do I reset my router to factory settings?"


class Served:
    def __init__(self, gw: Gateway, server: RunningServer, mock: RunningServer, keys: tuple[str, str, str],
                 tmp: Path) -> None:
        self.gw, self.server, self.mock, self.keys, self.tmp = gw, server, mock, keys, tmp

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.server.url + "/v1", api_key=key, max_retries=0, timeout=30)

    def upstream_calls(self) -> int:
        return int(httpx.get(self.mock.url + "/mock/stats", timeout=5).json()["requests"])


@pytest.fixture(scope="module", params=["virtual-keys", "bearer-tokens"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    virtual = request.param == "virtual-keys"
    tmp = tmp_path_factory.mktemp("tenants")
    with run_in_thread(create_mock(MockConfig.from_dict({}))) as mock:
        cfg: dict[str, Any] = {
            "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-upstream-tenants-0000", "max_retries": 0}},
            "models": {"cheap": {"provider": "mock", "price": {"input": 1, "output": 2}}},
            "ledger": {"path": str(tmp / "ledger.db")},
            "cache": {"path": str(tmp / "cache.db"), "semantic": {"enabled": True}},
            "auth": {"enabled": virtual},
        }
        gw = Gateway.from_config(cfg)
        if virtual:
            assert gw.ops.keys is not None
            keys = tuple(gw.ops.keys.create(name)[1] for name in ("alice", "bob", "carol"))
        else:
            keys = ("sk-client-alice-11111111", "sk-client-bob-22222222", "sk-client-carol-33333333")
        with run_in_thread(gw.app()) as server:
            yield Served(gw, server, mock, keys, tmp)
        gw.close()


def ask(s: Served, key: str, text: str) -> tuple[str, str, str, str]:
    """(x-thrifty-cache, x-thrifty-cache-match, answer, request id)."""
    raw = s.client(key).chat.completions.with_raw_response.create(
        model="cheap", temperature=0, messages=[{"role": "user", "content": text}])
    return (raw.headers["x-thrifty-cache"], raw.headers.get("x-thrifty-cache-match", ""),
            raw.parse().choices[0].message.content or "", raw.headers["x-thrifty-request-id"])


def test_exact_and_semantic_hits_stay_within_a_tenant(served: Served) -> None:
    alice, bob, _ = served.keys
    calls = served.upstream_calls()
    status, _, answer, _ = ask(served, alice, QUESTION)
    assert status == "miss"
    assert ask(served, alice, QUESTION)[:2] == ("hit", "exact")
    assert ask(served, alice, REWORDED)[:2] == ("hit", "semantic")
    assert served.upstream_calls() == calls + 1
    # Bob's reworded question would be alice's semantic hit: it goes upstream.
    assert ask(served, bob, REWORDED)[0] == "miss"
    assert served.upstream_calls() == calls + 2
    # Bob's own entry then serves bob (the scope works for him too); alice keeps hers.
    assert ask(served, bob, QUESTION)[:2] == ("hit", "semantic")
    assert ask(served, bob, REWORDED)[:2] == ("hit", "exact")
    assert ask(served, alice, QUESTION)[:2] == ("hit", "exact")
    assert served.upstream_calls() == calls + 2
    # And the very question alice stored, from a third tenant's first request, is a miss.
    third = ask(served, served.keys[2], QUESTION)
    assert third[0] == "miss" and served.upstream_calls() == calls + 3
    assert answer  # the mock answers alike for alike questions: the headers and calls are the proof


def test_a_streamed_answer_is_not_replayed_to_another_tenant(served: Served) -> None:
    alice, bob, _ = served.keys
    kw: Any = {"model": "cheap", "temperature": 0, "stream": True,
               "messages": [{"role": "user", "content": STREAMED}]}

    def stream(key: str) -> str:
        with served.client(key).chat.completions.with_streaming_response.create(**kw) as resp:
            status = resp.headers["x-thrifty-cache"]
            lines = [line for line in resp.iter_lines() if line]  # to the end: a stream left early is not stored
        assert lines[-1] == "data: [DONE]" and any(line.startswith("data: {") for line in lines)
        return status

    calls = served.upstream_calls()
    assert [stream(alice), stream(bob), stream(alice), stream(bob)] == ["miss", "miss", "hit", "hit"]
    assert served.upstream_calls() == calls + 2


def test_the_ledger_and_the_cache_keep_tenants_apart_and_no_key(served: Served) -> None:
    alice, bob, _ = served.keys
    ids = [ask(served, key, "Which tenant owns this entry?")[3] for key in (alice, bob)]
    served.gw.flush()
    store = SQLiteStore(str(served.tmp / "ledger.db"))
    rows = [store.query("SELECT tenant, cache_status FROM requests WHERE request_id = ?", [i]) for i in ids]
    assert [r[0][1] for r in rows] == ["miss", "miss"]
    tenants = {r[0][0] for r in rows}
    assert len(tenants) == 2 and not tenants & {alice, bob, "default"}
    cached = {t for (t,) in SQLiteStore(str(served.tmp / "cache.db")).query("SELECT DISTINCT tenant FROM cache_entries")}
    assert tenants <= cached
    for path in served.tmp.iterdir():  # databases and their -wal files, as bytes
        data = path.read_bytes()
        assert alice.encode() not in data and bob.encode() not in data, path.name


@pytest.mark.parametrize("header", ["x-api-key", "api-key"])
def test_keys_in_api_key_headers_are_tenants_too(served: Served, header: str) -> None:
    # Every header a key is accepted in scopes the cache by that key, with virtual keys or not
    # (x-api-key once fell into the shared "default" tenant: /work/scratch/s8/tests.md B2).
    alice, bob, _ = served.keys
    body = {"model": "cheap", "temperature": 0, "messages": [{"role": "user", "content": f"Whose {header} answer?"}]}

    def status(key: str) -> str:
        r = httpx.post(served.server.url + "/v1/chat/completions", json=body, headers={header: key}, timeout=30)
        assert r.status_code == 200, r.text
        return r.headers["x-thrifty-cache"]

    assert [status(alice), status(bob), status(alice)] == ["miss", "miss", "hit"]
