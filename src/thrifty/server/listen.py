"""Checks the server commands (``serve``, ``mock-upstream``, ``replay-upstream``) apply to their
listening flags before starting uvicorn.

Why here and not left to uvicorn: uvicorn reports a bad log level as a KeyError traceback, takes
any integer as a port (99999 fails later, inside asyncio), and reports a port in use as several
log lines and exit code 3. Each check raises ``UsageError``, which ``thrifty.cli.main`` prints as
one line with exit code 2.
"""

from __future__ import annotations

import errno
import socket

from thrifty.cli.checks import int_at_least
from thrifty.errors import UsageError

# uvicorn's names (uvicorn.config.LOG_LEVELS), spelled out so checking a flag does not import it.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def log_level(value: str, flag: str = "--log-level") -> str:
    """``value`` lower-cased when uvicorn knows it, else ``UsageError`` listing the choices."""
    level = value.strip().lower()
    if level not in LOG_LEVELS:
        raise UsageError(f"{flag}: expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


def port(value: int, flag: str = "--port") -> int:
    """``value`` when it is a TCP port; 0 is allowed and means any free port (as in the config)."""
    int_at_least(value, flag, 0, 65535)
    return value


def check_bind(host: str, port: int) -> None:
    """``UsageError`` when ``host:port`` cannot be listened on (in use, no such interface).

    A test bind with the options uvicorn uses (SO_REUSEADDR, so a port in TIME_WAIT passes as
    it would for uvicorn); the socket is closed at once. Another process may still take the port
    before uvicorn binds it: that rare case keeps uvicorn's own report."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use"
        elif isinstance(exc, socket.gaierror):
            reason = f"unknown host ({exc.strerror})"
        else:
            reason = (exc.strerror or str(exc)).lower()
        raise UsageError(f"cannot listen on {host}:{port}: {reason}") from None


def concrete_port(host: str, port: int) -> int:
    """``port``, or for 0 ("any free port") the free port the system gives now.

    Why: uvicorn picks the port only when it binds, so the start-up line would say ``:0`` and
    nobody could tell where the server listens. As with ``listen.check_bind``, another process
    may take the port before uvicorn binds it; that rare case keeps uvicorn's own report."""
    if port != 0:
        return port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
