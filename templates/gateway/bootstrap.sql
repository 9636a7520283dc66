-- Bootstrap of a LiteLLM database: the admin user and the master key's link to it.
--
-- Idempotent: a second run finds nothing to change and writes nothing (rows that already say the
-- same are not updated, so even updated_at stays). It never deletes anything except an older
-- master key's row under the same alias, which is what makes key rotation leave one link.
--
-- Every value arrives as a psql variable, set before this file runs (tasks/database.py sends
-- `\set name 'value'` lines on psql's stdin) and used only as `:'name'`, which psql turns into a
-- properly quoted literal. No value is ever spliced into this text.
--   admin_user_id  LiteLLM user id of the admin (LiteLLM_UserTable.user_id)
--   admin_email    that user's e-mail; '' leaves whatever is stored unchanged
--   key_hash       sha256 hex of the master key: LiteLLM stores a key's hash as its token
--   key_name       LiteLLM's display form of the key ("sk-..." + its last 4 characters)
--   key_alias      alias that marks the master key's row ("master-key")
\set ON_ERROR_STOP on

-- One transaction: the admin user and the key that points at it appear (or change) together.
BEGIN;

-- user_role is what makes the user an admin; models [] means "all models" for a user, as LiteLLM
-- itself creates users. Only the columns this deploy owns are written.
INSERT INTO "LiteLLM_UserTable" AS u (user_id, user_role, user_email, models)
VALUES (:'admin_user_id', 'proxy_admin', NULLIF(:'admin_email', ''), ARRAY[]::text[])
ON CONFLICT (user_id) DO UPDATE
   SET user_role = EXCLUDED.user_role,
       user_email = COALESCE(EXCLUDED.user_email, u.user_email),
       updated_at = CURRENT_TIMESTAMP
 WHERE u.user_role IS DISTINCT FROM EXCLUDED.user_role
    OR u.user_email IS DISTINCT FROM COALESCE(EXCLUDED.user_email, u.user_email);

-- The master key as LiteLLM would store a key it generated: token = hash, key_name abbreviated,
-- every model of the proxy, linked to the admin user. Columns not named here keep their
-- defaults (spend 0, '{}' JSON, ...); NOT NULL columns without a default: only `token`.
INSERT INTO "LiteLLM_VerificationToken" AS k (token, key_name, key_alias, models, permissions, user_id)
VALUES (:'key_hash', :'key_name', :'key_alias', ARRAY['all-proxy-models']::text[],
        '{"allow_all": true}'::jsonb, :'admin_user_id')
ON CONFLICT (token) DO UPDATE
   SET key_name = EXCLUDED.key_name,
       key_alias = EXCLUDED.key_alias,
       models = EXCLUDED.models,
       permissions = EXCLUDED.permissions,
       user_id = EXCLUDED.user_id,
       updated_at = CURRENT_TIMESTAMP
 WHERE (k.key_name, k.key_alias, k.models, k.permissions, k.user_id)
       IS DISTINCT FROM
       (EXCLUDED.key_name, EXCLUDED.key_alias, EXCLUDED.models, EXCLUDED.permissions, EXCLUDED.user_id);

-- Rotation: LiteLLM looks any key that is not the current master key up by its hash, so a
-- previous master key's row would keep the old key working as a virtual key with every model,
-- owned by the admin. This is the only deletion the bootstrap ever makes.
DELETE FROM "LiteLLM_VerificationToken"
 WHERE key_alias = :'key_alias' AND token <> :'key_hash';

COMMIT;
