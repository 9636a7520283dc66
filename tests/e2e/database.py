"""The bundled database of a test-bed gateway, read and written over SSH: seed rows the way LiteLLM
would write them, and fingerprint those rows (to prove them identical after a restore or rollback)."""

from __future__ import annotations

COMPOSE = "docker compose --project-name litellm --project-directory /opt/litellm"

SEED = """BEGIN;
INSERT INTO "LiteLLM_TeamTable" (team_id, team_alias, models, max_budget)
SELECT 'team-' || g, 'Team ' || g, ARRAY['chat-upstream'], 100 + g FROM generate_series(1, 50) g;
INSERT INTO "LiteLLM_UserTable" (user_id, user_email, user_role, teams, models, spend, metadata)
SELECT 'user-' || g, 'u' || g || '@example.com', 'internal_user', ARRAY['team-' || g], ARRAY[]::text[], g * 0.5,
       jsonb_build_object('seq', g) FROM generate_series(1, 50) g;
INSERT INTO "LiteLLM_VerificationToken" (token, key_name, key_alias, user_id, team_id, models, spend, metadata,
       permissions, aliases, config)
SELECT encode(sha256(('sk-seed-' || g)::bytea), 'hex'), 'sk-...' || lpad(g::text, 4, '0'), 'key-' || g,
       'user-' || g, 'team-' || g, ARRAY['chat-upstream'], g * 0.01, jsonb_build_object('note', 'it''s $$ \\'),
       '{}'::jsonb, '{}'::jsonb, '{}'::jsonb FROM generate_series(1, 50) g;
INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, api_key, spend, total_tokens, prompt_tokens, completion_tokens,
       "startTime", "endTime", model, "user", metadata)
SELECT 'req-' || g, 'acompletion', encode(sha256(('sk-seed-' || g)::bytea), 'hex'), g * 0.001, 10 * g, 6 * g, 4 * g,
       timestamp '2026-11-01' + g * interval '1 minute', timestamp '2026-11-01' + g * interval '61 seconds',
       'chat-upstream', 'user-' || g, '{}'::jsonb FROM generate_series(1, 50) g;
COMMIT;
"""

def psql(deployment, host: str, script: str) -> str:
    result = deployment.bed.ssh(deployment.name(host), f"{COMPOSE} exec -T db psql -X -q -v ON_ERROR_STOP=1 -U litellm -d litellm -At",
                                input=script.encode())
    assert result.ok, result.output
    return result.output.strip()


# The rows SEED wrote, per table: count and md5 of their sorted row md5s. Only these rows: a running
# proxy writes spend logs, spend and its own bookkeeping rows, so the whole database is not frozen while
# it serves — the seeded rows (fake token hashes, nothing the proxy touches) must be.
SEEDED = {  # table -> which of its rows SEED wrote
    "LiteLLM_TeamTable": "team_id LIKE 'team-%'",
    "LiteLLM_UserTable": "user_id LIKE 'user-%'",
    "LiteLLM_VerificationToken": "key_alias LIKE 'key-%'",
    "LiteLLM_SpendLogs": "request_id LIKE 'req-%'",
}
SEEDED_ROWS = "".join(
    f"SELECT '{table}|' || count(*) || '|' || coalesce(md5(string_agg(md5(t::text), ',' ORDER BY md5(t::text))), '') "
    f'FROM "{table}" t WHERE {where};\n' for table, where in SEEDED.items())


def seeded_rows(deployment, host: str) -> dict[str, str]:
    rows = dict(line.split("|", 1) for line in psql(deployment, host, SEEDED_ROWS).splitlines())
    assert set(rows) == set(SEEDED), rows
    return rows
