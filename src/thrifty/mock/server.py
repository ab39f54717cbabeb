"""Run any ASGI app (the mock upstream, the gateway) under uvicorn in a background thread.

Tests and benchmarks need a real server on loopback that starts fast, reports its port and
stops cleanly. ``run_in_thread`` binds the socket itself (port 0 = a free port chosen by the
OS, with no race between picking and binding), starts uvicorn on it in a daemon thread, and
returns only once uvicorn is accepting connections::

    with run_in_thread(create_app(MockConfig())) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test-1234")
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn
from starlette.types import ASGIApp


class RunningServer:
    """A uvicorn server running in a thread; a context manager that stops it on exit."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, sock: socket.socket) -> None:
        self.server = server
        self.thread = thread
        self._sock = sock
        self.host, self.port = sock.getsockname()[:2]

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:54321``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful shutdown; in-flight requests get ``timeout`` seconds, then are cancelled."""
        if not self.thread.is_alive():
            self._sock.close()
            return
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True  # e.g. a hung request whose client never left
            self.thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def run_in_thread(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    startup_timeout: float = 10.0,
    **uvicorn_options: Any,
) -> RunningServer:
    """Start ``app`` on ``host:port`` (0 = any free port) and wait until it accepts connections.

    ``uvicorn_options`` go to ``uvicorn.Config`` (defaults: loop "auto", log level "warning",
    no access log, no lifespan errors swallowed: lifespan "auto").
    """
    options: dict[str, Any] = {
        "loop": "auto",
        "log_level": "warning",
        "access_log": False,
        "lifespan": "auto",
    }
    options.update(uvicorn_options)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, **options))
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to the starting thread below
            failure.append(exc)

    thread = threading.Thread(target=serve, name=f"uvicorn-{sock.getsockname()[1]}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            reason = repr(failure[0]) if failure else "server did not start in time"
            raise RuntimeError(f"uvicorn failed to start on {host}:{port}: {reason}")
        time.sleep(0.005)
    return RunningServer(server, thread, sock)
