"""The proof's virtual key: derived from the new key, and the SQL that adds or removes it."""

from __future__ import annotations

import base64
import hashlib
import hmac

from tasks.gateway import database

PROBE_ALIAS = "litellm-deploy-rotation-probe"
PROBE_MODEL = "litellm-deploy-rotation-probe"  # a model no gateway serves: the probe key can call nothing


def probe_key_for(new_key: str) -> str:
    """The proof's virtual key: derived from the new key, so a re-run uses the same one, and
    revealing nothing about it (HMAC)."""
    digest = hmac.new(new_key.encode(), b"litellm-deploy rotation probe", hashlib.sha256).digest()
    return "sk-" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


# The proof's virtual key. Rows of earlier, interrupted rotations (same alias and marker model, another
# token) are removed first; nothing else in the table is touched.
PROBE_INSERT = f"""\\set ON_ERROR_STOP on
BEGIN;
DELETE FROM "LiteLLM_VerificationToken"
 WHERE key_alias = '{PROBE_ALIAS}' AND models = ARRAY['{PROBE_MODEL}']::text[] AND token <> :'probe_hash';
INSERT INTO "LiteLLM_VerificationToken" (token, key_name, key_alias, models, expires)
VALUES (:'probe_hash', :'probe_name', '{PROBE_ALIAS}', ARRAY['{PROBE_MODEL}']::text[],
        CURRENT_TIMESTAMP + interval '2 hours')
ON CONFLICT (token) DO NOTHING;
COMMIT;
"""
PROBE_DELETE = f"""\\set ON_ERROR_STOP on
DELETE FROM "LiteLLM_VerificationToken"
 WHERE key_alias = '{PROBE_ALIAS}' AND models = ARRAY['{PROBE_MODEL}']::text[];
"""


def probe_sql(present: bool, probe_key: str) -> str:
    """psql's stdin that adds (or removes) the proof's virtual key: no user, no model, 2 hours."""
    variables = {"probe_hash": database.hash_key(probe_key), "probe_name": database.abbreviate_key(probe_key)}
    return database.PRELUDE + database.psql_variables(variables) + (PROBE_INSERT if present else PROBE_DELETE)
