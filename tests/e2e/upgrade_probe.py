"""A "newer release" of the LiteLLM image that fails verification, made on a test-bed gateway from the
image it runs (tests/e2e/test_upgrade.py, and the benchmarks' upgrade-rollback figure).

One more migration (a new table, a new column, a changed row: what a real release's migrations do) and an
outbound HTTP proxy that does not exist (HTTP(S)_PROXY=127.0.0.1:9, loopback exempt), so the proxy starts
and answers its health checks but reaches no Ollama node and no upstream: verification fails. It is
tagged on the host, as a pull or an archive load would leave it. With verifies=True, the same release
without the outbound proxy: an upgrade that succeeds (tests/faults/test_faults.py).
"""

from __future__ import annotations

import shlex

PROBE_MIGRATION = "29991231000000_litellm_deploy_upgrade_probe"
# verify_timeout for a newer image that cannot verify (it reaches no model): it fails in seconds, not minutes
FAILING_VERIFY_S = 30
NEWER_MIGRATION = """CREATE TABLE "LiteLLM_FromANewerImage" (id int PRIMARY KEY);
ALTER TABLE "LiteLLM_TeamTable" ADD COLUMN from_a_newer_image text DEFAULT 'x';
UPDATE "LiteLLM_UserTable" SET spend = spend + 1;
"""
BUILD = r"""set -eu
old=$1 new=$2 name=litellm-deploy-upgrade-probe
docker rm -f "$name" >/dev/null 2>&1 || true
docker run -i --name "$name" --entrypoint sh "$old" -c '
  d=$(python3 -c "import litellm_proxy_extras, os; print(os.path.dirname(litellm_proxy_extras.__file__))")/migrations/'"$3"'
  mkdir -p "$d" && cat > "$d/migration.sql"' <<'SQL'
%(migration)s
SQL
docker commit \
  --change "ENTRYPOINT $(docker image inspect --format '{{json .Config.Entrypoint}}' "$old")" \
  --change "CMD $(docker image inspect --format '{{json .Config.Cmd}}' "$old")" \
  %(breaks_verification)s \
  "$name" "$new" >/dev/null
docker rm "$name" >/dev/null
"""


UNREACHABLE_OUTBOUND_PROXY = "--change 'ENV HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.1,localhost'"


def build(deployment, host: str, old: str, new: str, verifies: bool = False) -> None:
    """The newer image `new` from `old`, on the deployment's `host`."""
    script = BUILD % {"migration": NEWER_MIGRATION, "breaks_verification": "" if verifies else UNREACHABLE_OUTBOUND_PROXY}
    result = deployment.bed.ssh(deployment.name(host), f"sh -s -- {shlex.quote(old)} {shlex.quote(new)} "
                                f"{PROBE_MIGRATION}", input=script.encode())
    assert result.ok, result.output
    # The probe migration must be in the image, or "data identical" would prove nothing.
    deployment.ssh(host, f"docker run --rm --entrypoint sh {shlex.quote(new)} -c "
                         f"'find / -path \"*/{PROBE_MIGRATION}/migration.sql\" 2>/dev/null | grep -q .'")
