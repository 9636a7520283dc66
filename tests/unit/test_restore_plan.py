"""The restore's plan (tasks/gateway/restore.py): the current database is dumped, as a backup of its own kind,
after the proxy stops and before anything is dropped, and the run says where. The dump and its
failure path run against PostgreSQL in tests/integration/test_backup.py."""

from __future__ import annotations

import re

from tasks.gateway import restore
from tests.unit.test_deploy_plan import plan, position


def test_the_restore_dumps_the_current_database_after_the_proxy_stops_and_before_it_drops_anything(
        build, monkeypatch, tmp_path):
    settings = build(database_mode="bundled", docker_install="skip")
    dump = tmp_path / "20261127T030000Z.dump"
    dump.write_bytes(b"PGDMP: not read, the plan only names it")
    the_plan = restore.Plan(dump, "0" * 64, "checked")
    ops = plan(settings, monkeypatch, previous=None, deploy=lambda s: restore.restore_gateway(s, the_plan))
    names = [name for name, _, _ in ops]
    restored = position(ops, "Database restored from the backup (single transaction), after a safety dump")
    assert position(ops, "LiteLLM proxy stopped for the restore") < restored, names
    match = re.search(r"safety dump of the current one to (\S+)$", ops[restored][0])
    safety = match and match.group(1)
    assert re.fullmatch(r"/opt/litellm/backups/litellm-\d{8}T\d{6}Z-before-restore\.dump", safety or ""), names
    (command,) = ops[restored][1]
    dumped = command.index(f"exec -T db pg_dump -U litellm -d litellm --format=custom > {safety}.part")
    assert dumped < command.index("DROP SCHEMA")
    # A scheduled backup prunes <stamp>.dump only; a later restore's safety dump, backup_keep of its kind.
    assert f"grep -E '^litellm-[0-9]{{8}}T[0-9]{{6}}Z-before-restore\\.dump$' | sort -r | tail -n +{settings.backup_keep + 1}" \
        in command
