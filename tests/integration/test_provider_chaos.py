"""A provider having a bad day, through a real gateway on 127.0.0.1 in front of the mock upstream,
with the real `openai` client: each fault injected on its own must give the client the answer or
an OpenAI-format error, one ledger row per request, and leave the gateway healthy for the next."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai

from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

HI = [{"role": "user", "content": "Which option? A or B"}]
TIMEOUT_S = 1.0  # the provider's timeout_s: short, so a stalled call fails fast
MOCK: dict[str, Any] = {"models": {
    "ok": {},
    "huge": {"output_tokens": [40_000, 40_000]},
    "strong": {"answer": "B"},
    "cut": {"faults": {"truncate_after": 3}},
    "cut0": {"faults": {"truncate_after": 0}},  # a stream accepted, then dropped before its first chunk
    "malformed": {"faults": {"malformed": True}},
    "down": {"faults": {"status": 503}},
    "stall": {"faults": {"chunk_delay_ms": 1500}},
}}


@contextlib.contextmanager
def chaos_gateway(tmp: Path, extra: dict[str, Any] | None = None
                  ) -> Iterator[tuple[Gateway, RunningServer, openai.OpenAI]]:
    """The mock upstream, and a gateway in front of it with one catalog model per mock model."""
    with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as upstream:
        cfg: dict[str, Any] = {
            "providers": {"mock": {"base_url": upstream.url + "/v1", "timeout_s": TIMEOUT_S, "max_retries": 1,
                                   "backoff_base_s": 0.01}},
            "models": {m: {"provider": "mock", "price": {"input": 1.0, "output": 2.0}} for m in MOCK["models"]},
            "ledger": {"path": str(tmp / "ledger.db")},
            **(extra or {}),
        }
        gw = Gateway.from_config(cfg)
        with run_in_thread(gw.app()) as server:
            yield gw, upstream, openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-0000",
                                              max_retries=0, timeout=30)
        gw.flush()


def open_sockets() -> int:
    """This process's open sockets (the test servers run in its threads)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return n


def requests_rows(gw: Gateway) -> list[sqlite3.Row]:
    gw.flush()
    assert gw.config.ledger.path
    with contextlib.closing(sqlite3.connect(gw.config.ledger.path)) as db:
        db.row_factory = sqlite3.Row
        return list(db.execute("SELECT * FROM requests ORDER BY ts"))


def test_a_long_stream_read_slowly_does_not_poison_the_next_call(tmp_path: Path) -> None:
    """A long answer streamed to a client slower than the provider fills the upstream connection's
    buffer (aiohttp pauses reading); aiohttp 3.14 re-armed that connection's read timer as the
    buffer drained after the end of the body, with the connection back in the pool, and the timer
    fired there: the next call on it failed at once with "no response within 1s"."""
    with chaos_gateway(tmp_path) as (gw, _, client):
        client.chat.completions.create(model="huge", messages=HI)
        text = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(model="huge", messages=HI, stream=True) if c.choices)
        assert len(text) > 100_000
        time.sleep(TIMEOUT_S * 1.5)  # the pooled connection idles past the provider timeout
        reply = client.chat.completions.create(model="ok", messages=HI)
        assert reply.choices[0].message.content
        assert [r["status"] for r in requests_rows(gw)] == ["ok", "ok", "ok"]


def test_fifty_faulted_requests_leave_one_row_each_nothing_cached_and_no_leak(tmp_path: Path) -> None:
    """Cut, malformed, refused and stalled calls, streamed or not, with the exact cache on: each
    gets an OpenAI-format error, one failed ledger row, no cache entry, and the gateway keeps its
    file descriptors and answers the next request."""
    faulted = ["cut", "malformed", "down", "stall"]
    with chaos_gateway(tmp_path, {"cache": {"path": str(tmp_path / "cache.db")}}) as (gw, _, client):
        fds = 0
        for i in range(50):
            if i == 8:  # after a first round, which opens the ledger and cache files
                time.sleep(2)
                fds = open_sockets()
            model, stream = faulted[i % 4], bool(i % 2)
            with contextlib.suppress(openai.APIError):  # an error event or an error status, never a hang
                if stream:
                    list(client.chat.completions.create(model=model, messages=HI, temperature=0, stream=True))
                else:
                    client.chat.completions.create(model=model, messages=HI, temperature=0)
        rows = requests_rows(gw)
        assert len(rows) == 50 and {r["status"] for r in rows} == {"error"}
        assert {r["cache_status"] for r in rows} <= {"miss", None}
        time.sleep(2)  # the mock (in this process) notices, at its next chunk, that a stalled stream was left
        # At most the two ends of a pooled gateway-mock and client-gateway connection each, not one
        # per request (sockets only: the ledger writer may open its database file meanwhile).
        assert open_sockets() <= fds + 4
        assert client.chat.completions.create(model="ok", messages=HI).choices[0].message.content


def test_a_200_whose_body_is_cut_or_not_json_is_priced_at_its_prompt(tmp_path: Path) -> None:
    """The provider accepted the call (200) and ran the model; only its answer was lost on the way
    back (a body cut short, a body that is not JSON). It bills such a call, so each try is a failed
    attempt priced at its prompt, `estimated`: recorded at $0 before, while a retry paid twice."""
    with chaos_gateway(tmp_path) as (gw, _, client):
        for model in ("cut", "malformed"):
            with contextlib.suppress(openai.APIError):
                client.chat.completions.create(model=model, messages=HI)
        gw.flush()
        assert gw.config.ledger.path
        with contextlib.closing(sqlite3.connect(gw.config.ledger.path)) as db:
            attempts = db.execute("SELECT a.model, a.status, a.cost_source, a.cost_usd, a.prompt_tokens FROM attempts a "
                                  "ORDER BY a.model").fetchall()
            costs = dict(db.execute("SELECT requested_model, cost_usd FROM requests").fetchall())
        refused = client.chat.completions.with_raw_response  # a 503 (never accepted) still costs nothing
        with contextlib.suppress(openai.APIError):
            refused.create(model="down", messages=HI)
    assert len(attempts) == 4  # max_retries 1: two tries each
    for model, status, source, cost, prompt in attempts:
        assert status == "error" and source == "estimated" and prompt > 0 and cost > 0, model
    assert costs["cut"] == sum(a[3] for a in attempts if a[0] == "cut") > 0
    assert costs["malformed"] > 0
    rows = requests_rows(gw)
    assert [r["cost_usd"] for r in rows if r["requested_model"] == "down"] in ([0.0], [None])


def test_an_accepted_stream_that_fails_before_its_first_chunk_is_priced_at_its_prompt(tmp_path: Path) -> None:
    """A stream the provider accepted (200, event-stream headers) and then stalled or cut before
    its first chunk: the provider had the prompt and ran the model. Each try is a failed attempt
    priced at its prompt, `estimated`, as for a non-streamed call whose answer was lost."""
    with chaos_gateway(tmp_path) as (gw, _, client):
        with contextlib.suppress(openai.APIError):
            list(client.chat.completions.create(model="cut0", messages=HI, stream=True))
        gw.flush()
        assert gw.config.ledger.path
        with contextlib.closing(sqlite3.connect(gw.config.ledger.path)) as db:
            attempts = db.execute("SELECT status, cost_source, cost_usd, prompt_tokens FROM attempts").fetchall()
    assert len(attempts) == 2 and all(status == "error" and cost and cost > 0 and prompt > 0
                            for status, _, cost, prompt in attempts), attempts


def test_a_passed_through_call_whose_answer_is_lost_is_priced_at_its_prompt(tmp_path: Path) -> None:
    """The Responses API and the other passthrough endpoints follow chat's rule: a provider that
    accepted the call (200) and lost its answer on the way back (a body cut short, a stream that
    stalls before its first event, a first event that is not JSON) billed it, so each try is
    priced at its prompt, `estimated`."""
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Lossy(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(200)
            if b'"bad"' in body:  # a stream whose first event is not JSON
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                self.wfile.write(b"data: {bad\n\n")
                self.wfile.flush()
                return
            if b'"stream": true' in body or b'"stream":true' in body:
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                self.wfile.flush()
                time.sleep(TIMEOUT_S * 2)  # accepted, then nothing before the timeout
                return
            self.send_header("content-type", "application/json")
            self.send_header("content-length", "500")
            self.end_headers()
            self.wfile.write(b'{"id": "resp_1", "object": "response", "output": [')  # then the line drops
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Lossy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = {"providers": {"lossy": {"base_url": f"http://127.0.0.1:{server.server_port}/v1", "max_retries": 1,
                                       "backoff_base_s": 0.01, "timeout_s": TIMEOUT_S}},
               "models": {"m": {"provider": "lossy", "price": {"input": 1.0, "output": 2.0}},
                          "bad": {"provider": "lossy", "price": {"input": 1.0, "output": 2.0}}},
               "ledger": {"path": str(tmp_path / "ledger.db")}}
        gw = Gateway.from_config(cfg)
        with run_in_thread(gw.app()) as srv:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="sk-client-0000", max_retries=0, timeout=30)
            for model, stream in (("m", False), ("m", True), ("bad", True)):
                with contextlib.suppress(openai.APIError):
                    reply = client.responses.create(model=model, input="Which option? A or B", stream=stream)
                    if stream:
                        list(reply)  # type: ignore[arg-type]
        gw.flush()
        with contextlib.closing(sqlite3.connect(tmp_path / "ledger.db")) as db:
            attempts = db.execute("SELECT status, cost_source, cost_usd, prompt_tokens FROM attempts").fetchall()
        gw.close()
    finally:
        server.shutdown()
    # The cut body and the bad first event tried twice each; a stalled stream is not retried (as chat's).
    assert len(attempts) == 5, attempts
    assert all(status == "error" and source == "estimated" and cost and cost > 0 and prompt > 0
               for status, source, cost, prompt in attempts), attempts
