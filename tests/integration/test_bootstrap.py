"""templates/gateway/bootstrap.sql against the real LiteLLM schema, run as the deploy runs it."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections import Counter

import pytest

from tasks.config.filters import url_component
from tasks.gateway import database
from tests.integration.litellm_data import (
    check_in_place,
    managed_rows,
    run_bootstrap,
    seed,
    snapshot,
    values_for,
)
from tests.libpq_files import write_libpq_files

pytestmark = pytest.mark.integration

HOSTILE = [
    "'", "''", ";", "$$", "$tag$", "\\", "\\\\", "\\n", "\\x41", "\\101", ":'name'", ":name", "\\set x 1",
    "'); DROP TABLE \"LiteLLM_VerificationToken\"; --",
    "'); DROP TABLE \"LiteLLM_UserTable\"; --",
    "$$; DROP TABLE \"LiteLLM_UserTable\"; $$",
    "line one\nline two\r\n\tend", "ünïcödé ✓", "%s %d {0}", "`id` $(id) ${HOME}", " leading and trailing ",
]


def new_master_key() -> str:
    return "sk-" + secrets.token_urlsafe(32)


def test_three_runs_identical_rows_and_every_other_row_untouched(schema_db, litellm_keys):
    """Acceptance 2: seeded as LiteLLM would (50 keys, 5 users, 2 teams); three bootstraps give
    identical rows each time, and every other row of every table keeps its checksum."""
    hash_token, abbreviate_api_key = litellm_keys
    seed(schema_db, hash_token, abbreviate_api_key)
    values = values_for(new_master_key())
    before = snapshot(schema_db)
    assert len(before) > 50 and sum(before["LiteLLM_VerificationToken"].values()) == 50
    assert sum(before["LiteLLM_UserTable"].values()) == 5 and sum(before["LiteLLM_TeamTable"].values()) == 2

    runs = []
    for _ in range(3):
        run_bootstrap(schema_db, values)
        runs.append((snapshot(schema_db), managed_rows(schema_db, values)))

    first_tables, first_managed = runs[0]
    assert len(first_managed["users"]) == 1 and len(first_managed["keys"]) == 1
    added = {
        "LiteLLM_UserTable": first_managed["users"][0]["md5"],
        "LiteLLM_VerificationToken": first_managed["keys"][0]["md5"],
    }
    for table in before.keys() | first_tables.keys():
        expected = before.get(table, Counter()) + Counter([added[table]] if table in added else [])
        assert first_tables.get(table) == expected, f"{table}: rows other than the bootstrap's changed"
    # Runs 2 and 3: the same rows, not even rewritten (same xmin), and nothing else changed.
    assert runs[1] == runs[0]
    assert runs[2] == runs[0]


def test_stored_token_is_litellms_hash_of_the_master_key(schema_db, litellm_keys):
    """Acceptance 3: the token LiteLLM would look up, computed by the installed package."""
    hash_token, abbreviate_api_key = litellm_keys
    master_key = new_master_key()
    values = values_for(master_key, admin_user_id="admin", admin_email="ops@example.com")
    run_bootstrap(schema_db, values)

    rows = managed_rows(schema_db, values)
    (key,) = rows["keys"]
    (user,) = rows["users"]
    assert key["row"]["token"] == hash_token(master_key)
    assert key["row"]["key_name"] == abbreviate_api_key(master_key)
    assert key["row"]["key_alias"] == "master-key"
    assert key["row"]["models"] == ["all-proxy-models"]
    assert key["row"]["permissions"] == {"allow_all": True}
    assert key["row"]["user_id"] == "admin"
    assert user["row"]["user_role"] == "proxy_admin"
    assert user["row"]["user_email"] == "ops@example.com"


def test_hostile_values_are_stored_verbatim_and_inject_nothing(schema_db, litellm_keys):
    """Acceptance 4: quotes, `;`, `$$`, backslashes and `'); DROP TABLE ...` in the admin id,
    e-mail, alias and master key are data, never SQL."""
    hash_token, abbreviate_api_key = litellm_keys
    seed(schema_db, hash_token, abbreviate_api_key, keys=5, users=2, teams=1)
    master_key = "sk-" + "'); DROP TABLE \"LiteLLM_VerificationToken\"; -- $$ \\ " + "';\\$"
    values = {
        **values_for(
            master_key,
            admin_user_id="adm'in\"; $$ \\ '); DROP TABLE \"LiteLLM_UserTable\"; --",
            admin_email="o'hara+$$\\x@example.com'); DROP TABLE \"LiteLLM_UserTable\"; --\nBcc: x",
        ),
        "key_alias": "master'-key; $$ \\ '); DROP TABLE \"LiteLLM_TeamTable\"; --",
    }
    tables_before = set(snapshot(schema_db))
    for _ in range(2):
        run_bootstrap(schema_db, values)
        assert check_in_place(schema_db, values)

    rows = managed_rows(schema_db, values)
    (key,) = rows["keys"]
    (user,) = rows["users"]
    assert user["row"]["user_id"] == values["admin_user_id"]
    assert user["row"]["user_email"] == values["admin_email"]
    assert key["row"]["key_alias"] == values["key_alias"]
    assert key["row"]["user_id"] == values["admin_user_id"]
    assert key["row"]["token"] == hash_token(master_key)
    assert key["row"]["key_name"] == abbreviate_api_key(master_key) == "sk-...';\\$"
    # Nothing was dropped or added: same tables, the seeded rows are all still there.
    after = snapshot(schema_db)
    assert set(after) == tables_before
    assert sum(after["LiteLLM_VerificationToken"].values()) == 5 + 1
    assert sum(after["LiteLLM_UserTable"].values()) == 2 + 1
    assert sum(after["LiteLLM_TeamTable"].values()) == 1


def test_psql_variables_round_trip_any_text(schema_db):
    """Acceptance 4, the quoting itself: every hostile string comes back from psql unchanged."""
    variables = {f"v{i}": value for i, value in enumerate(HOSTILE)}
    select = "SELECT json_build_array(" + ", ".join(f":'v{i}'" for i in range(len(HOSTILE))) + ");\n"
    assert schema_db.json(database.psql_variables(variables) + select) == HOSTILE


def test_rotation_leaves_only_the_new_keys_link(schema_db, litellm_keys):
    """After bootstrap with key A then key B, only B's hash is linked under 'master-key'; other
    keys, look-alike aliases included, are untouched."""
    hash_token, abbreviate_api_key = litellm_keys
    seed(schema_db, hash_token, abbreviate_api_key, keys=10, users=2, teams=1)
    key_a, key_b = new_master_key(), new_master_key()
    run_bootstrap(schema_db, values_for(key_a))
    others = snapshot(schema_db)["LiteLLM_VerificationToken"]

    run_bootstrap(schema_db, values_for(key_b))
    rows = managed_rows(schema_db, values_for(key_b))
    assert [key["row"]["token"] for key in rows["keys"]] == [hash_token(key_b)]
    assert rows["keys"][0]["row"]["user_id"] == "admin"
    tokens = schema_db.json('SELECT json_agg(token) FROM "LiteLLM_VerificationToken";')
    assert hash_token(key_a) not in tokens and len(tokens) == 10 + 1
    aliases = schema_db.json('SELECT json_agg(key_alias ORDER BY key_alias) FROM "LiteLLM_VerificationToken";')
    assert "master-key " in aliases and "MASTER-KEY" in aliases
    # Exactly one row left A's set: the old link; the other ten are byte for byte the same.
    after = snapshot(schema_db)["LiteLLM_VerificationToken"]
    assert sum((others - after).values()) == 1 and sum((after - others).values()) == 1
    assert check_in_place(schema_db, values_for(key_b))
    assert not check_in_place(schema_db, values_for(key_a))


def test_bootstrap_input_carries_values_only_as_psql_variables():
    """The SQL text is the template file unchanged; values appear only in `\\set` lines."""
    values = values_for(new_master_key(), admin_email="x'@example.com")
    text = database.bootstrap_input(values)
    template = database.BOOTSTRAP_SQL.read_text(encoding="utf-8")
    assert text.endswith(template)
    head = text[: -len(template)].splitlines()
    assert head[0] == "\\encoding UTF8"
    assert head[1:] == [f"\\set {name} {database.psql_literal(value)}" for name, value in values.items()]
    assert json.dumps(values)  # plain strings only


def test_external_mode_bootstraps_through_libpq_files_made_from_a_hostile_database_url(schema_db, tmp_path):
    """Acceptance 4 for mode "external": the service and password files the controller renders from
    DATABASE_URL (tasks/config/pgservice.py; mounted into the one-shot Postgres container on a host, read by
    the local psql here), hostile user and password and all, and no process's command line ever
    shows the password."""
    user = "li'te llm@x:y"
    password = "p'a\"s$s\\w%o@r:d/?#&=+ ;$$ ünï `id` $(id) end"
    admin = schema_db.server.db("postgres")
    admin.psql(database.psql_variables({"user": user, "password": password})
               + "CREATE ROLE :\"user\" SUPERUSER LOGIN PASSWORD :'password';\n")
    try:
        url = (f"postgresql://{url_component(user)}:{url_component(password)}@127.0.0.1:{schema_db.server.port}"
               f"/{url_component(schema_db.name)}?sslmode=disable&connection_limit=5")
        env = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
        env.update(write_libpq_files(tmp_path, url))
        values = values_for(new_master_key())
        script = "SELECT current_user;\n\\! ps -eo args\n" + database.bootstrap_input(values)
        result = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-A", "-t"],
                                input=script, capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0] == user
        assert "psql -X -q" in result.stdout, "ps listed the running psql"
        for shown in (password, url_component(password)):
            assert shown not in result.stdout
        assert check_in_place(schema_db, values)
    finally:
        admin.psql(database.psql_variables({"user": user}) + "DROP ROLE :\"user\";\n")
