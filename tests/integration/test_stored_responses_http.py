"""A stored response's own endpoints (GET / DELETE /v1/responses/{id}, /cancel, /input_items)
through real gateways on 127.0.0.1 in front of the mock upstream, driven by the official openai
SDK: each id reaches the provider that answered it, from any gateway sharing the ledger database,
for the key that created it only; unknown ids get OpenAI's 404; the calls cost nothing and leave
no ledger row."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

UPSTREAM_KEY = "sk-upstream-stored-0000"
ADMIN = "admin-stored-responses-0000"
PRICE = {"input": 1.0, "output": 2.0}


@pytest.fixture(scope="module")
def mock() -> Iterator[tuple[RunningServer, Any]]:
    app = create_mock(MockConfig.from_dict({"seed": 3, "api_key": UPSTREAM_KEY}))
    with run_in_thread(app) as server:
        yield server, app.state.mock


def config(mock_url: str, ledger: dict[str, Any], *, auth: bool = True) -> dict[str, Any]:
    upstream = {"base_url": mock_url + "/v1", "api_key": UPSTREAM_KEY, "max_retries": 0}
    return {
        # Two providers on the same upstream: an id must go back to the one that answered it.
        "providers": {"a": upstream, "b": upstream},
        "models": {"gpt": {"provider": "a", "upstream_model": "gpt-up", "price": PRICE},
                   "other": {"provider": "b", "upstream_model": "other-up", "price": PRICE}},
        "default_model": "gpt",
        "ledger": ledger,
        "auth": {"enabled": auth, "admin_key": ADMIN},
    }


@pytest.fixture(scope="module")
def gateways(mock: tuple[RunningServer, Any], tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[Gateway, RunningServer, RunningServer, dict[str, str]]]:
    """Two gateway instances sharing one ledger file (its keys and its stored-response ids)."""
    ledger = {"path": str(tmp_path_factory.mktemp("stored") / "ledger.db")}
    gw1 = Gateway.from_config(config(mock[0].url, ledger))
    gw2 = Gateway.from_config(config(mock[0].url, ledger))
    assert gw1.ops.keys is not None
    keys = {"a": gw1.ops.keys.create("tenant-a")[1], "b": gw1.ops.keys.create("tenant-b")[1],
            "gpt-only": gw1.ops.keys.create("gpt-only", routes=["gpt"])[1]}
    with run_in_thread(gw1.app()) as s1, run_in_thread(gw2.app()) as s2:
        yield gw1, s1, s2, keys
    gw1.close()
    gw2.close()


def client(server: RunningServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=30)


def upstream_calls(mock: tuple[RunningServer, Any], method: str) -> list[str]:
    return [r["path"] for r in mock[1].recorder.last(None) if r["method"] == method]


def request_rows(gw: Gateway) -> int:
    gw.flush()
    assert gw.ledger is not None
    return int(gw.ledger.store.query("SELECT COUNT(*) FROM requests")[0][0])


def test_retrieve_input_items_and_delete_reach_the_provider(
        gateways: tuple[Gateway, RunningServer, RunningServer, dict[str, str]],
        mock: tuple[RunningServer, Any]) -> None:
    gw, server, _, keys = gateways
    c = client(server, keys["a"])
    created = c.responses.create(model="other", input="Name three rivers.", instructions="Be brief.")
    rows = request_rows(gw)

    got = c.responses.retrieve(created.id)
    assert got.id == created.id and got.output_text == created.output_text and got.status == "completed"
    items = c.responses.input_items.list(created.id)
    assert [(i.type, i.role) for i in items.data] == [("message", "user")]  # type: ignore[union-attr]
    assert items.data[0].content[0].text == "Name three rivers."  # type: ignore[union-attr]
    # Forwarded to the provider that answered (`other` is on provider b: the same mock here, so
    # the path and the upstream key show it went upstream rather than being made up).
    assert upstream_calls(mock, "GET")[-2:] == [f"/v1/responses/{created.id}", f"/v1/responses/{created.id}/input_items"]

    assert c.responses.delete(created.id) is None
    with pytest.raises(openai.NotFoundError) as err:
        c.responses.retrieve(created.id)
    assert created.id in err.value.message and err.value.request_id
    # Free calls: no ledger row (the create left the only one).
    assert request_rows(gw) == rows


def test_another_tenant_cannot_touch_a_response(
        gateways: tuple[Gateway, RunningServer, RunningServer, dict[str, str]],
        mock: tuple[RunningServer, Any]) -> None:
    _, server, _, keys = gateways
    mine = client(server, keys["a"]).responses.create(model="gpt", input="A private question.")
    theirs = client(server, keys["b"])
    before = len(mock[1].recorder.last(None))
    for call in (lambda: theirs.responses.retrieve(mine.id), lambda: theirs.responses.delete(mine.id),
                 lambda: theirs.responses.cancel(mine.id), lambda: theirs.responses.input_items.list(mine.id)):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        # The answer an unknown id gets: nothing tells B that the id exists.
        assert err.value.body == {"message": f"Response with id '{mine.id}' not found.", "code": "response_not_found",
                                  "type": "invalid_request_error", "param": None}
    # Nor may B continue A's conversation (and read it back through the model).
    with pytest.raises(openai.NotFoundError) as err:
        theirs.responses.create(model="gpt", input="What did I ask?", previous_response_id=mine.id)
    assert err.value.param == "previous_response_id"
    assert len(mock[1].recorder.last(None)) == before  # none of it went upstream
    # A's response is untouched, and A may continue it.
    assert client(server, keys["a"]).responses.retrieve(mine.id).status == "completed"
    follow = client(server, keys["a"]).responses.create(model="gpt", input="And?", previous_response_id=mine.id)
    assert follow.previous_response_id == mine.id


def test_another_gateway_instance_finds_the_id_in_the_ledger(
        gateways: tuple[Gateway, RunningServer, RunningServer, dict[str, str]]) -> None:
    _, first, second, keys = gateways
    created = client(first, keys["a"]).responses.create(model="other", input="Made on instance one.")
    got = client(second, keys["a"]).responses.retrieve(created.id)  # its memory has never seen the id
    assert got.id == created.id and got.output_text == created.output_text
    with pytest.raises(openai.NotFoundError):
        client(second, keys["b"]).responses.retrieve(created.id)


def test_a_streamed_response_is_remembered_before_its_first_event(
        gateways: tuple[Gateway, RunningServer, RunningServer, dict[str, str]]) -> None:
    _, server, second, keys = gateways
    c = client(server, keys["a"])
    with c.responses.create(model="gpt", input="Stream it.", stream=True) as stream:
        first = next(iter(stream))
        assert first.type == "response.created"
        # Usable at once, even elsewhere, while the stream is still open.
        assert client(second, keys["a"]).responses.retrieve(first.response.id).id == first.response.id
        final = next(e for e in stream if e.type == "response.completed")
    replay = c.responses.retrieve(final.response.id, stream=True)
    assert [e.type for e in replay][-1] == "response.completed"


def test_background_response_can_be_cancelled(
        gateways: tuple[Gateway, RunningServer, RunningServer, dict[str, str]]) -> None:
    _, server, _, keys = gateways
    c = client(server, keys["a"])
    queued = c.responses.create(model="gpt", input="Take your time.", background=True)
    assert queued.status == "queued"
    assert c.responses.cancel(queued.id).status == "cancelled"
    assert c.responses.retrieve(queued.id).status == "cancelled"
    done = c.responses.create(model="gpt", input="Quick one.")
    with pytest.raises(openai.BadRequestError) as err:  # the provider's refusal, passed on
        c.responses.cancel(done.id)
    assert "background" in err.value.message


def test_unknown_unstored_and_unauthenticated_ids(
        gateways: tuple[Gateway, RunningServer, RunningServer, dict[str, str]],
        mock: tuple[RunningServer, Any]) -> None:
    _, server, _, keys = gateways
    c = client(server, keys["a"])
    unstored = c.responses.create(model="gpt", input="Forget me.", store=False)
    gets = len(upstream_calls(mock, "GET"))
    for rid in (unstored.id, "resp_never_seen"):
        r = httpx.get(f"{server.url}/v1/responses/{rid}", headers={"authorization": f"Bearer {keys['a']}"})
        assert r.status_code == 404
        assert r.json() == {"error": {"message": f"Response with id '{rid}' not found.", "type": "invalid_request_error",
                                      "param": None, "code": "response_not_found"}}
    assert len(upstream_calls(mock, "GET")) == gets
    with pytest.raises(openai.AuthenticationError):
        client(server, "thr-not-a-key-0000").responses.retrieve(unstored.id)
    # A key limited to other models sees the id as unknown, as its model list would.
    other = c.responses.create(model="other", input="Only for keys allowed `other`.")
    with pytest.raises(openai.NotFoundError):
        client(server, keys["gpt-only"]).responses.retrieve(other.id)
    # Other POSTs under /v1/responses/ are not OpenAI endpoints thrifty serves.
    r = httpx.post(f"{server.url}/v1/responses/input_tokens", json={}, headers={"authorization": f"Bearer {keys['a']}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unsupported_endpoint"


def test_without_keys_the_client_key_is_the_tenant(mock: tuple[RunningServer, Any], tmp_path: Path) -> None:
    # No ledger either: the ids live in the gateway's memory.
    gw = Gateway.from_config(config(mock[0].url, {"enabled": False}, auth=False))
    with run_in_thread(gw.app()) as server:
        created = client(server, "sk-app-one-0000").responses.create(model="gpt", input="Hello.")
        assert client(server, "sk-app-one-0000").responses.retrieve(created.id).id == created.id
        with pytest.raises(openai.NotFoundError):
            client(server, "sk-app-two-0000").responses.retrieve(created.id)
    gw.close()


def test_instances_sharing_postgres_find_each_others_ids(mock: tuple[RunningServer, Any], pg_dsn: str) -> None:
    ledger = {"dsn": pg_dsn}
    gw1 = Gateway.from_config(config(mock[0].url, ledger))
    gw2 = Gateway.from_config(config(mock[0].url, ledger))
    assert gw1.ops.keys is not None
    a, b = gw1.ops.keys.create("pg-a")[1], gw1.ops.keys.create("pg-b")[1]
    with run_in_thread(gw1.app()) as s1, run_in_thread(gw2.app()) as s2:
        created = client(s1, a).responses.create(model="other", input="Across instances.")
        assert client(s2, a).responses.retrieve(created.id).output_text == created.output_text
        with pytest.raises(openai.NotFoundError):
            client(s2, b).responses.retrieve(created.id)
        client(s2, a).responses.delete(created.id)
        with pytest.raises(openai.NotFoundError):
            client(s1, a).responses.retrieve(created.id)  # instance one still remembers it; the provider does not
    gw1.close()
    gw2.close()
