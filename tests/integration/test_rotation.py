"""Master-key rotation's database side against the real LiteLLM schema, run the way the rotation
runs it: the backup (tasks.gateway.backup's shell with the external-mode pg_dump script), the proof's
virtual key (tasks.rotation.sql), the link move and its rollback (tasks.gateway.database.bootstrap), the
restore of the backup into a scratch database, and a stored credential through all of it."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from tasks.config import secrets as S
from tasks.gateway import backup, database
from tasks.rotation import sql
from tests.integration.conftest import create_database, drop_database
from tests.integration.litellm_data import direct_command, managed_rows, run_bootstrap, seed, snapshot, values_for
from tests.libpq_files import write_libpq_files

pytestmark = pytest.mark.integration


def client_env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith("PG")}


def take_backup(db, tmp_path: Path, path: Path, url: str | None = None, damage: str = "") -> subprocess.CompletedProcess:
    """tasks.gateway.backup's script, with the dump of mode "external" (run here with the local pg_dump
    instead of inside the Postgres image), reaching the database through libpq's files rendered
    from DATABASE_URL, as the gateway host has them."""
    libpq = write_libpq_files(tmp_path, url or db.url)
    dump = (" ".join(f"{name}={shlex.quote(value)}" for name, value in libpq.items()) + " "
            f"pg_dump --format=custom{damage}")
    script = backup.backup_script(dump, "pg_restore --file=/dev/null", str(path))
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=client_env())


def restore(db, path: Path):
    """A scratch database holding the backup (the caller drops it)."""
    scratch = create_database(db.server)
    result = subprocess.run(
        ["pg_restore", "--no-owner", "-h", "127.0.0.1", "-p", str(db.server.port), "-U", db.server.superuser,
         "-d", scratch.name, str(path)], capture_output=True, text=True, env=db.env())
    assert result.returncode == 0, result.stderr
    return scratch


def psql_stdin(db, script: str, *args: str) -> subprocess.CompletedProcess:
    """Run `script` the way the rotation does: tasks.gateway.database's psql command, values on stdin."""
    return subprocess.run(direct_command(db, *args), shell=True, input=script, capture_output=True, text=True,
                          env=db.env())


CREDENTIAL_INSERT = """INSERT INTO "LiteLLM_CredentialsTable"
  (credential_id, credential_name, credential_values, created_by, updated_by)
VALUES (:'id', 'upstream', jsonb_build_object('api_key', :'ciphertext'), 'admin', 'admin');
"""
CREDENTIAL_SELECT = """SELECT json_build_object('v', credential_values->>'api_key')
  FROM "LiteLLM_CredentialsTable" WHERE credential_name = 'upstream';"""


def test_rotation_moves_the_link_only_and_the_backup_restores_every_row(schema_db, litellm_keys, tmp_path, monkeypatch):
    """Acceptance 2 and 3: old hash row gone, new hash linked, every other row unchanged; the backup
    is 0600 and restores with identical rows; a credential encrypted with the salt key by LiteLLM's
    helper before the rotation decrypts after it, from the live database and from the backup."""
    from litellm.proxy.common_utils.encrypt_decrypt_utils import decrypt_value_helper, encrypt_value_helper

    hash_token, abbreviate_api_key = litellm_keys
    seed(schema_db, hash_token, abbreviate_api_key, keys=30, users=4, teams=2)
    old, new = S.new_master_key(), S.new_master_key()
    run_bootstrap(schema_db, values_for(old))  # as deployed
    salt = S.new_master_key()
    monkeypatch.setenv("LITELLM_SALT_KEY", salt)
    secret = "upstream key: it's \\ $$ ✓"
    ciphertext = encrypt_value_helper(secret)
    schema_db.psql(database.psql_variables({"id": str(uuid.uuid4()), "ciphertext": ciphertext}) + CREDENTIAL_INSERT)
    before = snapshot(schema_db)

    # 1. Backup.
    path = tmp_path / "opt" / "backups" / "litellm-20261127T000000Z-before-rotation.dump"
    result = take_backup(schema_db, tmp_path, path)
    assert result.returncode == 0, result.stderr
    assert f"database backup written: {path}" in result.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]

    # 2. The proof's virtual key, 3. the link move (one transaction), 4. the virtual key removed.
    probe = sql.probe_key_for(new)
    assert psql_stdin(schema_db, sql.probe_sql(True, probe)).returncode == 0
    run_bootstrap(schema_db, values_for(new))
    rows = schema_db.json(f"""SELECT json_agg(json_build_object('token', token, 'user_id', user_id, 'models', models,
                                  'hours', round(extract(epoch FROM expires - now()) / 3600)) ORDER BY key_alias)
                             FROM "LiteLLM_VerificationToken" WHERE key_alias IN ('master-key', '{sql.PROBE_ALIAS}');""")
    assert rows == [{"token": hash_token(probe), "user_id": None, "models": [sql.PROBE_MODEL], "hours": 2},
                    {"token": hash_token(new), "user_id": "admin", "models": ["all-proxy-models"], "hours": None}]
    assert psql_stdin(schema_db, sql.probe_sql(False, probe)).returncode == 0

    after = snapshot(schema_db)
    tokens_before, tokens_after = before.pop("LiteLLM_VerificationToken"), after.pop("LiteLLM_VerificationToken")
    assert after == before, "a row outside LiteLLM_VerificationToken changed"
    (gone,) = (tokens_before - tokens_after).elements()
    (came,) = (tokens_after - tokens_before).elements()
    tokens = schema_db.json('SELECT json_agg(token) FROM "LiteLLM_VerificationToken";')
    assert hash_token(old) not in tokens and hash_token(new) in tokens and hash_token(probe) not in tokens
    (master,) = managed_rows(schema_db, values_for(new))["keys"]
    assert master["md5"] == came and master["row"]["token"] == hash_token(new)

    # The backup restores into a scratch database with the rows from before the rotation, all of them.
    scratch = restore(schema_db, path)
    try:
        restored = snapshot(scratch)
        assert restored == {**before, "LiteLLM_VerificationToken": tokens_before}
        assert {t: sum(c.values()) for t, c in restored.items()} == \
               {t: sum(c.values()) for t, c in {**before, "LiteLLM_VerificationToken": tokens_before}.items()}
        assert gone in tokens_before and gone in restored["LiteLLM_VerificationToken"]
        from_backup = scratch.json(CREDENTIAL_SELECT)["v"]
    finally:
        drop_database(scratch)

    # The salt key is untouched by the rotation, so LiteLLM's helper still decrypts.
    live = schema_db.json(CREDENTIAL_SELECT)["v"]
    assert live == from_backup == ciphertext
    assert decrypt_value_helper(live, "upstream") == secret


def test_rollback_links_the_previous_key_again(schema_db, litellm_keys):
    hash_token, abbreviate_api_key = litellm_keys
    seed(schema_db, hash_token, abbreviate_api_key, keys=10, users=2, teams=1)
    old, new = S.new_master_key(), S.new_master_key()
    run_bootstrap(schema_db, values_for(old))
    before = snapshot(schema_db)
    run_bootstrap(schema_db, values_for(new))
    run_bootstrap(schema_db, values_for(old))  # the rollback's bootstrap
    (master,) = managed_rows(schema_db, values_for(old))["keys"]
    assert master["row"]["token"] == hash_token(old) and master["row"]["user_id"] == "admin"
    tokens = schema_db.json('SELECT json_agg(token) FROM "LiteLLM_VerificationToken";')
    assert hash_token(new) not in tokens
    after = snapshot(schema_db)
    tokens_before, tokens_after = before.pop("LiteLLM_VerificationToken"), after.pop("LiteLLM_VerificationToken")
    assert after == before
    # Only the master row was re-made (a fresh created_at); all other keys are byte for byte the same.
    assert sum((tokens_before - tokens_after).values()) == 1 and sum((tokens_after - tokens_before).values()) == 1


def test_the_link_move_is_one_transaction(schema_db, litellm_keys):
    """If removing the old key's row fails, the new key's row does not appear either."""
    hash_token, _ = litellm_keys
    old, new = S.new_master_key(), S.new_master_key()
    run_bootstrap(schema_db, values_for(old))
    schema_db.psql("""CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                      $$ BEGIN RAISE EXCEPTION 'injected: delete refused'; END $$;
                      CREATE TRIGGER refuse BEFORE DELETE ON "LiteLLM_VerificationToken"
                      FOR EACH ROW EXECUTE FUNCTION refuse();""")
    result = psql_stdin(schema_db, database.bootstrap_input(values_for(new)))
    assert result.returncode != 0 and "injected: delete refused" in result.stderr
    tokens = schema_db.json('SELECT json_agg(token) FROM "LiteLLM_VerificationToken";')
    assert tokens == [hash_token(old)]


def test_probe_key_insert_is_idempotent_replaces_stale_ones_and_delete_removes_it(schema_db, litellm_keys):
    hash_token, abbreviate_api_key = litellm_keys
    seed(schema_db, hash_token, abbreviate_api_key, keys=5, users=1, teams=1)
    before = snapshot(schema_db)
    stale, probe = sql.probe_key_for(S.new_master_key()), sql.probe_key_for(S.new_master_key())
    assert psql_stdin(schema_db, sql.probe_sql(True, stale)).returncode == 0  # an interrupted earlier rotation
    for _ in range(2):
        assert psql_stdin(schema_db, sql.probe_sql(True, probe)).returncode == 0
    probes = f"""SELECT coalesce(json_agg(token), '[]') FROM "LiteLLM_VerificationToken" WHERE key_alias = '{sql.PROBE_ALIAS}';"""
    assert schema_db.json(probes) == [hash_token(probe)]
    assert psql_stdin(schema_db, sql.probe_sql(False, probe)).returncode == 0
    assert schema_db.json(probes) == []
    assert snapshot(schema_db) == before


def test_a_truncated_dump_is_caught_by_the_read_back(schema_db, litellm_keys, tmp_path):
    hash_token, abbreviate_api_key = litellm_keys
    seed(schema_db, hash_token, abbreviate_api_key, keys=30, users=4, teams=2)
    path = tmp_path / "backups" / "x.dump"
    result = take_backup(schema_db, tmp_path, path, damage=" | head -c 20000")
    assert result.returncode != 0
    assert "database backup failed: pg_restore cannot read the dump back" in result.stderr
    assert list(path.parent.iterdir()) == []


def test_a_failed_backup_leaves_no_file(schema_db, tmp_path):
    path = tmp_path / "backups" / "x.dump"
    url = schema_db.url.rsplit("/", 1)[0] + "/no_such_database"
    result = take_backup(schema_db, tmp_path, path, url=url)
    assert result.returncode != 0
    assert "database backup failed: pg_dump did not complete" in result.stderr
    assert list(path.parent.iterdir()) == []

