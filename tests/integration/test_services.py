"""Prove that the services `make test` provides are real, not mocks.

If one of these fails, every test built on the same fixture is suspect, so
they are deliberately minimal: one round-trip per service.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest


@pytest.mark.redis
def test_redis_round_trip(redis_url: str) -> None:
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        key = f"thrifty-test:{uuid.uuid4().hex}"
        assert client.set(key, "héllo", ex=60)
        assert client.get(key) == "héllo".encode()
        assert client.delete(key) == 1
        assert client.get(key) is None
    finally:
        client.close()


@pytest.mark.postgres
def test_postgres_round_trip(postgres_dsn: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    table = f"thrifty_probe_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, connect_timeout=10) as conn:
        # The transaction is rolled back on exit-with-error; drop explicitly
        # on success so repeated runs against a long-lived server stay clean.
        conn.execute(f"CREATE TABLE {table} (id serial PRIMARY KEY, note text NOT NULL)")
        conn.execute(f"INSERT INTO {table} (note) VALUES (%s), (%s)", ("alpha", "βeta"))
        rows = conn.execute(f"SELECT id, note FROM {table} ORDER BY id").fetchall()
        assert rows == [(1, "alpha"), (2, "βeta")]
        row = conn.execute("SHOW server_version").fetchone()
        assert row is not None and row[0]
        conn.execute(f"DROP TABLE {table}")


# Flags that let Chromium run headless as root on a machine without network:
# without the background-networking ones it keeps trying to reach Google.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.browser
def test_chromium_version(chromium_path: str) -> None:
    out = subprocess.run(
        [chromium_path, *CHROMIUM_FLAGS, "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "chromium" in out.stdout.lower()


@pytest.mark.browser
def test_chromium_renders_page(chromium_path: str, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    html = f"<html><body><p id=m>{marker}</p><script>document.title = 'ok-' + (40 + 2)</script></body></html>"
    page = "data:text/html," + quote(html)
    out = subprocess.run(
        [chromium_path, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    # The marker proves the page was parsed; the title proves JavaScript ran.
    assert marker in out.stdout
    assert "<title>ok-42</title>" in out.stdout
