"""The PostgreSQL ledger store, shared by many gateway instances (needs the `postgres` extra)."""

from __future__ import annotations

from typing import Any

from thrifty.errors import StorageError
from thrifty.ledger.store import SQLStore
from thrifty.redact import scrub

# Arbitrary constant naming thrifty's migration lock (pg_advisory_lock takes a bigint).
_MIGRATION_LOCK = 7_146_329_001
# Said at start-up (open_store, a ConfigError) and, should the driver vanish later, on connecting.
DRIVER_MISSING = "the PostgreSQL ledger needs the 'postgres' extra: pip install 'thrifty[postgres]'"
_TCP_DEFAULTS = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
                 "tcp_user_timeout": 60_000}


class PostgresStore(SQLStore):
    max_params = 65535  # the protocol's limit on bound parameters (a batch is one statement per table)
    placeholder = "%s"
    day_sql = "CAST(FLOOR(ts / 86400) AS BIGINT)"

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self._dsn = dsn

    def _connect(self) -> Any:
        try:
            import psycopg
        except ImportError:
            raise StorageError(DRIVER_MISSING) from None
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        try:
            given = conninfo_to_dict(self._dsn)
            # Defaults the DSN may override: TCP keepalives and a TCP user timeout, so that a
            # connection whose peer vanished (a failover to another host, a partition) errors out
            # in about a minute and is replaced, instead of hanging until the old host answers.
            conninfo = make_conninfo(self._dsn, **{k: v for k, v in _TCP_DEFAULTS.items() if k not in given})
            return psycopg.connect(conninfo, connect_timeout=10, application_name="thrifty")
        except Exception as exc:
            # The DSN may hold a password, and libpq quotes parts of a malformed DSN (the whole
            # URL, or the password alone) in its message: never echo it.
            raise StorageError(f"cannot connect to the PostgreSQL ledger: {scrub(str(exc), self._dsn)}") from None

    def migrate(self) -> list[str]:
        """Migrate under a cluster-wide advisory lock: instances starting together take turns."""
        cur = self._conn.cursor()
        cur.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            return super().migrate()
        finally:
            try:
                self._conn.rollback()
                cur.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
                self._conn.commit()
            except Exception:
                self._drop_connection()  # closing the session releases the lock too

    def _is_disconnect(self, exc: Exception) -> bool:
        import psycopg

        closed = self._conn is None or bool(getattr(self._conn, "closed", False))
        return closed or isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
