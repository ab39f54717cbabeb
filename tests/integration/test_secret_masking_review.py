"""Security review (brief G): every credential a provider's configuration sends upstream stays out
of the client's errors, the log and the ledger, over real HTTP (uvicorn on loopback, the real
``openai`` client) with an upstream that echoes the caller's credentials in its errors.

Before the fixes: header values (Azure ``api-key``, custom ones), the base_url password and its
Basic token, and base_url query tokens were echoed as is; a key in a non-JSON error body was cut
before masking (its prefix leaked); a base_url query broke the URL; redirects were followed with
the provider's headers (and, on a 307, the prompt) to the new host; a Redis URL with a bad port
printed a traceback in ``config check``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from fixtures.cli_run import assert_one_line, run_main
from fixtures.served import attempt_rows, serving
from thrifty.config import ProviderConfig, load_config
from thrifty.errors import ConfigError, UpstreamError
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.providers.batch_api import OpenAIBatchAPI
from thrifty.providers.error_body import read_error
from thrifty.redact import Redactor, provider_secrets

HEX_KEY = "0123456789abcdef0123456789abcdef"  # Azure-style: no sk- shape to recognise
HEX_API_KEY = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"
HEADER_SECRET = "hdr-SECRETHEADER-99999"
PASSWORD = "pw-USERINFOSECRET-42"
BASIC = base64.b64encode(f"produser:{PASSWORD}".encode()).decode()
QUERY_TOKEN = "tok-QUERYSECRET-77"


def echo_app(seen: list[dict[str, Any]], other: list[str]) -> Starlette:
    """An upstream answering by model (or path): its errors quote the caller's credentials."""

    async def handle(request: Request) -> Response:
        body = await request.json() if request.method == "POST" else {}
        seen.append({"path": request.url.path, "query": request.url.query, "headers": dict(request.headers)})
        auth = request.headers.get("authorization", "")
        key = auth.split(" ", 1)[-1]
        everything = f"auth={auth} key={key} path={request.url.path}?{request.url.query} hdrs={dict(request.headers)}"
        what = body.get("model") or request.url.path.rsplit("/", 1)[-1]
        if what == "echo401":
            return JSONResponse({"error": {"message": f"Incorrect API key provided: {everything}"}}, 401)
        if what == "pad500":  # the key straddles the 200th character of a plain-text body
            return PlainTextResponse("x" * 180 + " key=" + key + " end", 500)
        if what in ("r302", "r307"):
            return Response(status_code=int(what[1:]), headers={"location": other[0] + "/v1/chat/completions"})
        return JSONResponse({"id": "x", "object": "chat.completion", "created": 1, "model": what,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    return Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST"])])


class Upstreams:
    def __init__(self, echo: RunningServer, seen: list[dict[str, Any]], target_seen: list[dict[str, Any]]) -> None:
        self.echo, self.seen, self.target_seen = echo, seen, target_seen


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    seen: list[dict[str, Any]] = []
    target_seen: list[dict[str, Any]] = []
    other: list[str] = []
    with run_in_thread(echo_app(target_seen, other)) as target, run_in_thread(echo_app(seen, other)) as echo:
        other.append(target.url)  # where the redirects point: it must never be called
        yield Upstreams(echo, seen, target_seen)


def _config(tmp: Path, url: str) -> dict[str, Any]:
    host = url.removeprefix("http://")
    providers = {
        "azure": {"base_url": url + "/v1", "headers": {"api-key": HEX_KEY}},
        "custom": {"base_url": url + "/v1", "api_key": "sk-custom-abcdef0123456789",
                   "headers": {"X-Custom-Secret": HEADER_SECRET, "X-Title": "thrifty"}},
        "userinfo": {"base_url": f"http://produser:{PASSWORD}@{host}/v1"},
        "query": {"base_url": f"{url}/v1/?api-version=2024-10-21&token={QUERY_TOKEN}"},
        "hexp": {"base_url": url + "/v1", "api_key": HEX_API_KEY},
    }
    models: dict[str, Any] = {
        name: {"provider": provider, "upstream_model": upstream, "price": {"input": 1.0, "output": 1.0}}
        for name, provider, upstream in (("azm", "azure", "echo401"), ("custom401", "custom", "echo401"),
                                         ("uim", "userinfo", "echo401"), ("querym", "query", "echo401"),
                                         ("queryok", "query", "fine"), ("hexm", "hexp", "pad500"),
                                         ("r302", "custom", "r302"), ("r307", "custom", "r307"))}
    return {"providers": {n: {**p, "max_retries": 0} for n, p in providers.items()}, "models": models,
            "default_model": "azm", "ledger": {"path": str(tmp / "ledger.db")}}


SECRETS = {"azm": [HEX_KEY], "custom401": [HEADER_SECRET], "uim": [PASSWORD, BASIC],
           "querym": [QUERY_TOKEN], "hexm": [HEX_API_KEY[:8]]}


def _ask(client: openai.OpenAI, model: str, stream: bool = False) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                               stream=stream)
        if stream:
            list(reply)  # type: ignore[call-overload]
    return info.value


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_provider_credentials_never_reach_the_client_the_log_or_the_ledger(
        upstreams: Upstreams, tmp_path: Path, caplog: pytest.LogCaptureFixture, stream: bool) -> None:
    caplog.set_level(logging.DEBUG)
    with serving(_config(tmp_path, upstreams.echo.url)) as (gw, client):
        for model, secrets in SECRETS.items():
            err = _ask(client, model, stream)
            shown = f"{err} {err.body}"
            assert "[REDACTED]" in shown, (model, shown)
            for secret in secrets:
                assert secret not in shown, (model, secret, shown)
        rows = attempt_rows(gw, "a.error AS attempt_error, r.error AS request_error")
    ledger = repr(rows)
    assert rows and "[REDACTED]" in ledger
    every_secret = [s for found in SECRETS.values() for s in found]
    for secret in every_secret:
        assert secret not in ledger, secret
        assert secret not in caplog.text, secret


def test_a_base_url_query_is_kept_after_the_path(upstreams: Upstreams, tmp_path: Path) -> None:
    """Azure's ``?api-version=``: the path used to be appended after the query."""
    upstreams.seen.clear()
    with serving(_config(tmp_path, upstreams.echo.url)) as (_gw, client):
        reply = client.chat.completions.create(model="queryok", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "ok"
    assert upstreams.seen[-1]["path"] == "/v1/chat/completions"
    assert upstreams.seen[-1]["query"] == f"api-version=2024-10-21&token={QUERY_TOKEN}"


@pytest.mark.parametrize("model", ["r302", "r307"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_upstream_redirects_are_not_followed(upstreams: Upstreams, tmp_path: Path, model: str, stream: bool) -> None:
    upstreams.target_seen.clear()
    with serving(_config(tmp_path, upstreams.echo.url)) as (_gw, client):
        err = _ask(client, model, stream)
    assert err.status_code == 502
    assert f"HTTP {model[1:]}" in str(err) and "redirect" in str(err)
    assert upstreams.target_seen == []  # neither the custom header nor the prompt went there


def test_the_batch_api_client_masks_headers_and_follows_no_redirect(upstreams: Upstreams) -> None:
    upstreams.target_seen.clear()
    config = ProviderConfig(base_url=upstreams.echo.url + "/v1", headers={"X-Custom-Secret": HEADER_SECRET})

    async def run() -> tuple[str, str]:
        api = OpenAIBatchAPI("custom", config, Redactor())
        try:
            with pytest.raises(UpstreamError) as echoed:
                await api.get_batch("echo401")
            with pytest.raises(UpstreamError) as moved:
                await api.get_batch("r302")
            return echoed.value.message, moved.value.message
        finally:
            await api.aclose()

    echoed, moved = asyncio.run(run())
    assert HEADER_SECRET not in echoed and "[REDACTED]" in echoed
    assert "HTTP 302" in moved
    assert upstreams.target_seen == []


def test_a_non_json_error_body_is_masked_before_it_is_cut() -> None:
    raw = ("x" * 180 + " key=" + HEX_API_KEY + " end").encode()
    message = read_error(raw, Redactor([HEX_API_KEY])).message
    assert HEX_API_KEY[:4] not in message and "[REDACTED]" in message


def test_provider_secrets_and_longest_first_masking() -> None:
    found = provider_secrets(f"https://u:{PASSWORD}@h/v1?api-version=2024-10-21&sig=abc%2Fdef123",
                             None, {"Authorization": "Bearer tok-abcdef-123", "X-Title": "myapp"})
    assert {PASSWORD, "Bearer tok-abcdef-123", "tok-abcdef-123", "abc/def123", "abc%2Fdef123"} <= set(found)
    assert "2024-10-21" not in found and "myapp" not in found
    # A secret inside a longer one: the longer is masked whole, whatever the registration order.
    nested = [HEX_KEY[:n] for n in range(6, len(HEX_KEY) + 1)]
    assert Redactor(nested)(f"key {HEX_KEY}.") == "key [REDACTED]."


# Headers of a gateway in front of another (Portkey, Helicone): credentials by name or by scheme,
# the rest routing metadata that must stay readable.
GATEWAY_HEADERS = {"x-portkey-provider": "openai", "x-model": "gpt-4o-mini",
                   "api-key": "azk-HEADERSECRET-1111", "x-api-key": "xak-HEADERSECRET-2222",
                   "Helicone-Auth": "Bearer hel-HEADERSECRET-3333", "x-portkey-api-key": "pk9HEADERSECRET4444",
                   "X-Upstream": "Basic dXNlcjpIRUFERVJTRUNSRVQ1NTU1"}


def test_only_credential_headers_are_masked(upstreams: Upstreams, tmp_path: Path) -> None:
    """Every non-public header value used to be a secret: ``x-portkey-provider: openai`` masked
    the word "openai" (and ``x-model`` the model's name) in every log line and client error."""
    cfg = {"providers": {"portkey": {"base_url": upstreams.echo.url + "/v1", "headers": GATEWAY_HEADERS,
                                     "max_retries": 0}},
           "models": {"pk": {"provider": "portkey", "upstream_model": "echo401",
                             "price": {"input": 1.0, "output": 1.0}}},
           "default_model": "pk", "ledger": {"path": str(tmp_path / "ledger.db")}}
    with serving(cfg) as (_gw, client):
        err = _ask(client, "pk")
    shown = f"{err} {err.body}"
    assert "'x-portkey-provider': 'openai'" in shown and "'x-model': 'gpt-4o-mini'" in shown, shown
    assert "HEADERSECRET" not in shown and "dXNlcjpIRUFERVJTRUNSRVQ1NTU1" not in shown, shown
    found = provider_secrets("https://h/v1", None, GATEWAY_HEADERS)
    assert "openai" not in found and "gpt-4o-mini" not in found
    assert {"hel-HEADERSECRET-3333", "dXNlcjpIRUFERVJTRUNSRVQ1NTU1", "pk9HEADERSECRET4444"} <= set(found)


def test_config_check_hides_a_header_written_as_a_string(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text('providers:\n  mock: {base_url: "http://127.0.0.1:9/v1", headers: "api-key: PLAINSECRETVALUEqq2"}\n'
                   "models: {cheap: {provider: mock}}\n")
    code, out, err = run_main(capsys, "config", "check", str(cfg))
    assert_one_line(code, err, "providers.mock.headers")
    assert "PLAINSECRETVALUE" not in out + err


def test_a_bad_redis_url_is_a_one_line_config_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "redis.yaml"
    cfg.write_text('providers:\n  mock: {base_url: "http://127.0.0.1:9/v1"}\nmodels: {cheap: {provider: mock}}\n'
                   'redis_url: "redis://:rdSECRETpw1@127.0.0.1:notaport/0"\n')
    code, out, err = run_main(capsys, "config", "check", str(cfg))
    assert_one_line(code, err, "redis_url", "port")
    assert "rdSECRETpw1" not in out + err
    with pytest.raises(ConfigError):
        load_config(str(cfg))


@pytest.mark.parametrize("key", ["redis_url", "cache.redis_url"])
def test_config_check_reports_a_redis_url_redis_py_refuses_in_one_line(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, key: str) -> None:
    """A URL only redis-py refuses (a bad ``?socket_timeout=``): redis-py parses it when
    ``reach_services`` makes its client, where its ValueError printed a traceback; the config
    is refused at load instead, in one line, so ``config check`` never reaches that call."""
    pytest.importorskip("redis")
    url = "redis://:rdSECRETpw1@127.0.0.1:6379/0?socket_timeout=abc"
    setting = f"redis_url: {url!r}" if key == "redis_url" else f"cache: {{backend: redis, redis_url: {url!r}}}"
    cfg = tmp_path / "redis.yaml"
    cfg.write_text('providers:\n  mock: {base_url: "http://127.0.0.1:9/v1"}\nmodels: {cheap: {provider: mock}}\n'
                   + setting + "\n")
    code, out, err = run_main(capsys, "config", "check", str(cfg))
    assert_one_line(code, err, key, "socket_timeout")
    assert "rdSECRETpw1" not in out + err
