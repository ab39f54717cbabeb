"""Virtual keys: hashed storage, shown once, revocation, route limits, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from thrifty.cli.main import build_app
from thrifty.errors import InvalidRequestError, NotFoundError
from thrifty.ledger.store import SQLiteStore
from thrifty.ops.keys import KeyStore, hash_key


def test_key_is_stored_only_as_a_salted_hash(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "l.db"))
    keys = KeyStore(store)
    key, secret = keys.create("team-a", budget_usd=5, period="day", rpm=10, tpm=1000, routes=["auto", "route:*"])
    assert secret.startswith("thr-") and len(secret) > 40
    dump = "\n".join(str(r) for r in store.query("SELECT * FROM virtual_keys"))
    assert secret not in dump
    (stored_hash,) = store.query("SELECT key_hash FROM virtual_keys")[0]
    assert stored_hash == hash_key(secret, keys.salt())
    # The salt is per install: a plain sha256 of the key does not match the stored hash.
    import hashlib

    assert stored_hash != hashlib.sha256(secret.encode()).hexdigest()
    found = keys.find(secret)
    assert found is not None and found.key_id == key.key_id and found.routes == ("auto", "route:*")
    assert keys.find(secret + "x") is None
    assert "key" not in key.public() and "key_hash" not in key.public()


def test_salt_is_shared_by_every_store_on_the_database(tmp_path: Path) -> None:
    path = str(tmp_path / "l.db")
    _, secret = KeyStore(SQLiteStore(path)).create("a")
    assert KeyStore(SQLiteStore(path)).find(secret) is not None
    assert KeyStore(SQLiteStore(path), salt="other").find(secret) is None


def test_revoke_and_route_globs(tmp_path: Path) -> None:
    keys = KeyStore(SQLiteStore(str(tmp_path / "l.db")))
    key, secret = keys.create("b", routes=["cheap", "route:support-*"])
    assert key.allows("cheap") and key.allows("route:support-faq")
    assert not key.allows("big") and not key.allows("route:sales")
    revoked = keys.revoke(key.key_id)
    assert revoked.revoked_at is not None and not revoked.active
    found = keys.find(secret)
    assert found is not None and not found.active
    assert [k.key_id for k in keys.list(include_revoked=False)] == []
    with pytest.raises(NotFoundError):
        keys.revoke("key_missing")


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [({"period": "week"}, "period"), ({"budget_usd": 0}, "budget_usd"), ({"rpm": 0}, "rpm"), ({"tpm": -5}, "tpm")],
)
def test_invalid_limits_are_refused(tmp_path: Path, kwargs: dict[str, object], param: str) -> None:
    keys = KeyStore(SQLiteStore(str(tmp_path / "l.db")))
    with pytest.raises(InvalidRequestError) as err:
        keys.create("x", **kwargs)  # type: ignore[arg-type]
    assert err.value.param == param


def test_cli_create_list_revoke(tmp_path: Path) -> None:
    cfg = tmp_path / "thrifty.yaml"
    cfg.write_text(yaml.safe_dump({"ledger": {"path": "ledger.db"}}))
    runner = CliRunner()
    app = build_app()
    res = runner.invoke(app, ["keys", "create", "--config", str(cfg), "--name", "ci", "--budget-usd", "2.5",
                              "--period", "day", "--rpm", "60", "--tpm", "10000", "--routes", "auto,cheap"])
    assert res.exit_code == 0, res.output
    secret = res.stdout.strip().splitlines()[0]
    assert secret.startswith("thr-")
    res = runner.invoke(app, ["keys", "list", "--config", str(cfg), "--json"])
    listed = json.loads(res.stdout)
    assert listed[0]["name"] == "ci" and listed[0]["budget_usd"] == 2.5 and listed[0]["routes"] == ["auto", "cheap"]
    assert secret not in res.stdout
    res = runner.invoke(app, ["keys", "revoke", listed[0]["key_id"], "--config", str(cfg)])
    assert res.exit_code == 0 and "revoked" in res.stdout
    res = runner.invoke(app, ["keys", "list", "--config", str(cfg)])
    assert "no keys yet" in res.stdout
    res = runner.invoke(app, ["keys", "list", "--config", str(cfg), "--all"])
    assert "revoked" in res.stdout
    res = runner.invoke(app, ["keys", "create", "--config", str(cfg), "--name", "x", "--period", "week"])
    assert res.exit_code != 0
