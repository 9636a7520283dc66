"""The bundled database of a test-bed gateway, read and written over SSH: seed rows the way LiteLLM
would write them, and snapshot every table (to prove data identical after a restore or rollback)."""

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

# table|md5 of its sorted row md5s, for every table of the schema.
SNAPSHOT = """SELECT format('SELECT %L || ''|'' || coalesce(md5(string_agg(md5(t::text), '','' ORDER BY md5(t::text))), '''') FROM %I t',
              c.relname, c.relname)
  FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') ORDER BY c.relname \\gexec
"""


def psql(deployment, host: str, script: str) -> str:
    result = deployment.bed.ssh(deployment.name(host), f"{COMPOSE} exec -T db psql -X -q -v ON_ERROR_STOP=1 -U litellm -d litellm -At",
                                input=script.encode())
    assert result.ok, result.output
    return result.output.strip()


def snapshot(deployment, host: str) -> dict[str, str]:
    rows = dict(line.split("|", 1) for line in psql(deployment, host, SNAPSHOT).splitlines() if "|" in line)
    assert len(rows) > 50, rows
    return rows
