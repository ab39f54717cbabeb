"""Small mends of the seventeenth session, each with the defect it fixes."""

from __future__ import annotations

from pathlib import Path

import openai

from fixtures.served import sent
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import run_in_thread


def test_thriftys_body_keys_never_reach_the_provider_on_passthrough_endpoints(tmp_path: Path) -> None:
    """``extra_body={"thrifty": {...}}`` / ``{"cache": false}`` are the gateway's options; the
    Responses and legacy completions passthroughs forwarded them, and a provider that refuses an
    unknown parameter (OpenAI does) failed the request with a 400 the client could not explain."""
    with run_in_thread(create_mock(MockConfig.from_dict({"seed": 1}))) as mock:
        gw = Gateway.from_config({
            "providers": {"p": {"base_url": mock.url + "/v1"}},
            "models": {"m": {"provider": "p", "price": {"input": 1.0, "output": 2.0}}},
            "ledger": {"path": str(tmp_path / "ledger.db")}})
        with run_in_thread(gw.app()) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client", max_retries=0)
            extra = {"thrifty": {"task": "faq"}, "cache": False}
            assert client.responses.create(model="m", input="Hello there", extra_body=extra).output_text
            assert client.completions.create(model="m", prompt="Hello there", max_tokens=5,
                                             extra_body=extra).choices[0].text
            assert client.embeddings.create(model="m", input="Hello there", extra_body=extra).data
        gw.flush()
        bodies = sent(mock, "m")
        assert len(bodies) == 3
        for body in bodies:
            assert "thrifty" not in body and "cache" not in body, body
