"""``providers.NAME.compat``: a server that rejects parts of OpenAI's current protocol still gets
requests it accepts, for normal and streamed calls, while other providers get the body as sent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from thrifty.errors import ConfigError
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.providers.compat import CompatConfig, adapt

OLD_SERVER = {"developer_role": "system", "max_tokens_field": "max_tokens", "drop_params": ["store", "metadata"]}
BODY = {"model": "m", "messages": [{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
        "max_completion_tokens": 7, "store": True, "metadata": {"team": "a"}, "temperature": 0}


def test_adapt_changes_a_copy_and_only_what_it_is_told() -> None:
    sent = {**BODY, "messages": list(BODY["messages"])}
    out = adapt(sent, CompatConfig.model_validate(OLD_SERVER))
    assert out == {"model": "m", "messages": [{"role": "system", "content": "Be terse."},
                                              {"role": "user", "content": "Hi"}],
                   "max_tokens": 7, "temperature": 0}
    assert sent == BODY  # the client's body is untouched
    assert adapt(BODY, CompatConfig()) is BODY  # the default changes nothing
    both = adapt({**BODY, "max_tokens": 5}, CompatConfig(max_tokens_field="max_tokens"))
    assert both["max_tokens"] == 5 and "max_completion_tokens" not in both  # an explicit max_tokens wins
    newer = adapt({"model": "m", "messages": [], "max_tokens": 9}, CompatConfig(max_tokens_field="max_completion_tokens"))
    assert newer == {"model": "m", "messages": [], "max_completion_tokens": 9}


def test_essential_fields_cannot_be_dropped(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        Gateway.from_config({"providers": {"p": {"base_url": "http://127.0.0.1:9/v1",
                                                 "compat": {"drop_params": ["messages", "store"]}}},
                             "models": {"m": {"provider": "p"}}, "ledger": {"path": str(tmp_path / "l.db")}})
    assert "providers.p.compat.drop_params" in err.value.message and "messages" in err.value.message


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, RunningServer]]:
    tmp = tmp_path_factory.mktemp("compat")
    with run_in_thread(create_mock(MockConfig.from_dict({}))) as mock:
        gw = Gateway.from_config({
            "providers": {"old": {"base_url": mock.url + "/v1", "max_retries": 0, "compat": OLD_SERVER},
                          "new": {"base_url": mock.url + "/v1", "max_retries": 0}},
            "models": {"old-model": {"provider": "old", "price": {"input": 1, "output": 2}},
                       "new-model": {"provider": "new", "price": {"input": 1, "output": 2}}},
            "ledger": {"path": str(tmp / "l.db")},
        })
        with run_in_thread(gw.app()) as server:
            yield server, mock
        gw.close()


def upstream_body(mock: RunningServer) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(mock.url + "/mock/requests?limit=1", timeout=5).json()["data"][-1]["body"]
    return body


@pytest.mark.parametrize("stream", [False, True])
def test_each_provider_gets_the_body_it_accepts(servers: tuple[RunningServer, RunningServer], stream: bool) -> None:
    server, mock = servers
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-0000", max_retries=0, timeout=30)
    kw: dict[str, Any] = {k: v for k, v in BODY.items() if k != "model"}
    for model in ("old-model", "new-model"):
        reply = client.chat.completions.create(model=model, stream=stream, **kw)
        text = "".join(c.choices[0].delta.content or "" for c in reply if c.choices) if stream \
            else reply.choices[0].message.content
        assert text
        sent = upstream_body(mock)
        if model == "old-model":
            assert [m["role"] for m in sent["messages"]] == ["system", "user"] and sent["max_tokens"] == 7
            assert not {"max_completion_tokens", "store", "metadata"} & set(sent)
        else:
            assert [m["role"] for m in sent["messages"]] == ["developer", "user"]
            assert sent["max_completion_tokens"] == 7 and sent["store"] is True and sent["metadata"] == {"team": "a"}
