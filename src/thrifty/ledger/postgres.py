"""The PostgreSQL ledger store, shared by many gateway instances (needs the `postgres` extra)."""

from __future__ import annotations

from typing import Any

from thrifty.errors import StorageError
from thrifty.ledger.store import SQLStore
from thrifty.redact import redact


class PostgresStore(SQLStore):
    placeholder = "%s"

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self._dsn = dsn

    def _connect(self) -> Any:
        try:
            import psycopg
        except ImportError:
            raise StorageError("the PostgreSQL ledger needs the 'postgres' extra: pip install 'thrifty[postgres]'") from None
        try:
            return psycopg.connect(self._dsn)
        except Exception as exc:
            # The DSN may hold a password: never echo it.
            raise StorageError(f"cannot connect to the PostgreSQL ledger: {redact(str(exc))}") from None
