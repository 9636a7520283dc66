"""Data as LiteLLM itself would write it, whole-database snapshots, and the bootstrap run the way
the deploy runs it (tasks.gateway.database's psql command, values on stdin)."""

from __future__ import annotations

import json
import secrets
import shlex
import subprocess
import uuid
from collections import Counter

from tasks.gateway import database
from tests.integration.postgres import Db

# One line per row ("table|md5"), plus "table|" for every table so that empty ones are seen too.
SNAPSHOT = """SELECT format('SELECT %L, md5(t::text) FROM %I t UNION ALL SELECT %L, %L',
              c.relname, c.relname, c.relname, '')
  FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
 ORDER BY c.relname \\gexec
"""

MANAGED = """SELECT json_build_object(
  'users', (SELECT coalesce(json_agg(json_build_object('row', row_to_json(u), 'xmin', u.xmin::text,
                                                       'md5', md5(u::text))), '[]')
              FROM "LiteLLM_UserTable" u WHERE user_id = :'admin_user_id'),
  'keys', (SELECT coalesce(json_agg(json_build_object('row', row_to_json(k), 'xmin', k.xmin::text,
                                                      'md5', md5(k::text))
                  ORDER BY k.token), '[]')
              FROM "LiteLLM_VerificationToken" k WHERE key_alias = :'key_alias'));
"""

SEED = """BEGIN;
INSERT INTO "LiteLLM_TeamTable" (team_id, team_alias, admins, members, members_with_roles, metadata, models, max_budget)
SELECT team_id, team_alias, admins, members, members_with_roles, metadata, models, max_budget
  FROM jsonb_to_recordset(:'teams'::jsonb) AS r(team_id text, team_alias text, admins text[], members text[],
       members_with_roles jsonb, metadata jsonb, models text[], max_budget float8);
INSERT INTO "LiteLLM_UserTable" (user_id, user_email, user_role, teams, models, spend, metadata, max_budget)
SELECT user_id, user_email, user_role, teams, models, spend, metadata, max_budget
  FROM jsonb_to_recordset(:'users'::jsonb) AS r(user_id text, user_email text, user_role text, teams text[],
       models text[], spend float8, metadata jsonb, max_budget float8);
INSERT INTO "LiteLLM_VerificationToken" (token, key_name, key_alias, user_id, team_id, models, spend, metadata,
       permissions, aliases, config, max_budget, budget_duration, created_by, updated_by)
SELECT token, key_name, key_alias, user_id, team_id, models, spend, metadata, permissions, aliases, config,
       max_budget, budget_duration, created_by, updated_by
  FROM jsonb_to_recordset(:'keys'::jsonb) AS r(token text, key_name text, key_alias text, user_id text, team_id text,
       models text[], spend float8, metadata jsonb, permissions jsonb, aliases jsonb, config jsonb,
       max_budget float8, budget_duration text, created_by text, updated_by text);
COMMIT;
"""


def seed(db: Db, hash_token, abbreviate_api_key, keys: int = 50, users: int = 5, teams: int = 2) -> list[str]:
    """Users, teams and virtual keys shaped as LiteLLM's /user/new, /team/new and /key/generate
    store them (key = "sk-" + token_urlsafe(16), token = its hash). Returns the raw keys."""
    user_ids = [str(uuid.uuid4()) for _ in range(users)]
    team_rows = [
        {"team_id": str(uuid.uuid4()), "team_alias": f"team-{t}", "admins": [user_ids[t]], "members": user_ids,
         "members_with_roles": [{"role": "admin", "user_id": user_ids[t]}], "metadata": {},
         "models": ["gpt-4o", "llama3"], "max_budget": 100.0 + t}
        for t in range(teams)
    ]
    user_rows = [
        {"user_id": user_id, "user_email": f"user{u}@example.com", "user_role": "internal_user",
         "teams": [team_rows[u % teams]["team_id"]], "models": [], "spend": u * 0.5, "metadata": {"seq": u},
         "max_budget": None}
        for u, user_id in enumerate(user_ids)
    ]
    raw_keys = ["sk-" + secrets.token_urlsafe(16) for _ in range(keys)]
    # Look-alike aliases a careless DELETE would catch; the bootstrap must leave them alone.
    aliases = [f"key-{k}" for k in range(keys)]
    aliases[0], aliases[1] = "master-key ", "MASTER-KEY"
    key_rows = [
        {"token": hash_token(key), "key_name": abbreviate_api_key(key), "key_alias": aliases[k],
         "user_id": user_ids[k % users], "team_id": team_rows[k % teams]["team_id"] if k % 3 else None,
         "models": ["gpt-4o"] if k % 2 else [], "spend": k * 0.01, "metadata": {"seq": k, "note": "it's \\ $$"},
         "permissions": {}, "aliases": {}, "config": {}, "max_budget": 10.0 if k % 5 == 0 else None,
         "budget_duration": "30d" if k % 5 == 0 else None, "created_by": user_ids[0], "updated_by": user_ids[0]}
        for k, key in enumerate(raw_keys)
    ]
    db.psql(database.psql_variables({
        "teams": json.dumps(team_rows), "users": json.dumps(user_rows), "keys": json.dumps(key_rows),
    }) + SEED)
    return raw_keys


def snapshot(db: Db) -> dict[str, Counter]:
    """table -> multiset of md5(row text), for every table of the schema."""
    tables: dict[str, Counter] = {}
    for line in db.psql(SNAPSHOT).stdout.splitlines():
        if line:
            table, _, digest = line.partition("|")
            rows = tables.setdefault(table, Counter())
            if digest:
                rows[digest] += 1
    assert len(tables) > 50, "snapshot should see the whole LiteLLM schema"
    return tables


def managed_rows(db: Db, values: dict[str, str]) -> dict:
    """The rows the bootstrap owns, whole (as JSON), with their xmin: a changed xmin means the
    row was written again even if every value stayed the same."""
    variables = {key: values[key] for key in ("admin_user_id", "key_alias")}
    return db.json(database.psql_variables(variables) + MANAGED)


def values_for(master_key: str, admin_user_id: str = "admin", admin_email: str = "admin@example.com") -> dict[str, str]:
    return database.bootstrap_values(
        admin_user_id, admin_email, database.hash_key(master_key), database.abbreviate_key(master_key)
    )


def direct_command(db: Db, *psql_args: str) -> str:
    """psql on this machine for the suite's database, with the flags tasks.gateway.database.psql gives it
    on a gateway; the bootstrap's operation and fact take it as their `psql` (the password comes
    from PGPASSFILE, Db.env)."""
    return " ".join(shlex.quote(arg) for arg in (*db.argv(), *psql_args))


def run_bootstrap(db: Db, values: dict[str, str]) -> subprocess.CompletedProcess:
    """The bootstrap exactly as the operation runs it: same command, same stdin."""
    result = subprocess.run(
        direct_command(db), shell=True, input=database.bootstrap_input(values),
        capture_output=True, text=True, env=db.env(),
    )
    assert result.returncode == 0, result.stderr
    return result


def check_in_place(db: Db, values: dict[str, str]) -> bool:
    """BootstrapState's query, run directly (the fact's command and stdin)."""
    result = subprocess.run(
        direct_command(db, "-A", "-t"), shell=True, input=database.check_input(values).getvalue(),
        capture_output=True, text=True, env=db.env(),
    )
    assert result.returncode == 0, result.stderr
    return database.BootstrapState().process(result.stdout.splitlines())
