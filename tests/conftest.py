"""Suite-wide hygiene: the developer's environment does not leak into tests, and no test reaches
the network (the standards: no internet, no API keys; real servers only on 127.0.0.1)."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

pytest_plugins = ["fixtures.services", "fixtures.shopbot", "fixtures.batch_jobs"]

# Settings of the developer's shell the product or its clients read on their own (the openai
# SDK reads OPENAI_*, httpx the proxy variables): a test that needs one sets it itself.
# THRIFTY_DATA_DIR and THRIFTY_TEST_* / THRIFTY_REQUIRE_SERVICES are the suite's inputs and stay.
_DEVELOPER_ENV = (
    "THRIFTY_CONFIG", "THRIFTY_KEY_SALT", "THRIFTY_ADMIN_KEY", "THRIFTY_REDIS_URL", "THRIFTY_LEDGER_DSN",
    "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID",
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
)


def pytest_configure(config: pytest.Config) -> None:
    for name in _DEVELOPER_ENV:
        os.environ.pop(name, None)


_blocked: list[str] = []


def _loopback(host: Any) -> bool:
    if not isinstance(host, str):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost would need DNS: the network


def _guard(method: Any) -> Any:
    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            _blocked.append(f"{address[0]}:{address[1]}")
            raise OSError(f"tests must not use the network (connect to {address[0]}:{address[1]})")
        return method(self, address)

    return connect


@pytest.fixture(scope="session", autouse=True)
def _no_network() -> Iterator[None]:
    """Refuse connections off the loopback interface, in this process (subprocesses are on their
    own). asyncio, httpx, aiohttp, redis and psycopg all connect through ``socket.connect``."""
    mp = pytest.MonkeyPatch()
    mp.setattr(socket.socket, "connect", _guard(socket.socket.connect))
    mp.setattr(socket.socket, "connect_ex", _guard(socket.socket.connect_ex))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _network_attempts_fail_the_test() -> Iterator[None]:
    """A refused connection fails its test even when the code under test swallowed the error
    (a silent fallback would otherwise pass here and depend on the network elsewhere)."""
    del _blocked[:]
    yield
    if _blocked:
        attempts = ", ".join(sorted(set(_blocked)))
        del _blocked[:]
        pytest.fail(f"the test tried to reach the network: {attempts}", pytrace=False)


def _fail_a_missing_extra(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under THRIFTY_REQUIRE_SERVICES=1 (CI, `make test`, which installs every extra) a test
    skipped because a module is missing (``pytest.importorskip``) fails instead: an extra
    dropped from the install would otherwise turn its tests into silent skips."""
    if not report.skipped or os.environ.get("THRIFTY_REQUIRE_SERVICES", "").strip() != "1":
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if "could not import" in reason or "is not installed" in reason:
        report.outcome = "failed"
        report.longrepr = f"{reason} (THRIFTY_REQUIRE_SERVICES=1: every extra must be installed; run `make test`)"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    _fail_a_missing_extra(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    report = yield
    _fail_a_missing_extra(report)
    return report
