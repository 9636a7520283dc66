"""Backup and restore (issue 7) against a real PostgreSQL and the real LiteLLM schema.

The host script of tasks.gateway.backup and the restore command of tasks.gateway.restore run here exactly as on a
gateway, with one difference: pg_dump / pg_restore talk to the suite's server over TCP instead of
through `docker compose exec -T db` (the part the e2e tier covers)."""

from __future__ import annotations

import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from tasks.gateway import backup, restore
from tests.integration import litellm_data
from tests.integration.conftest import create_database, drop_database

pytestmark = pytest.mark.integration

SPEND = """INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, api_key, spend, total_tokens, prompt_tokens,
       completion_tokens, "startTime", "endTime", model, "user", metadata, team_id)
SELECT 'req-' || g, 'acompletion', md5(g::text), g * 0.001, g * 10, g * 6, g * 4,
       timestamp '2026-11-01' + g * interval '1 minute', timestamp '2026-11-01' + g * interval '1 minute 2 seconds',
       'gpt-4o', 'user' || (g % 5), jsonb_build_object('seq', g), NULL
  FROM generate_series(1, 50) g;
"""


def target(db) -> str:
    return f"-h 127.0.0.1 -p {db.server.port} -U {shlex.quote(db.server.superuser)} -d {shlex.quote(db.name)}"


def run(db, command: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command, "litellm-backup", *args], capture_output=True, text=True, env=db.env())


def restore_into(db, dump: Path) -> subprocess.CompletedProcess:
    """tasks.gateway.restore's command, with psql talking to `db` over TCP."""
    return run(db, restore.restore_command("pg_restore", f"psql {target(db)}", str(dump), f"{dump}.restore.sql"))


def take(db, directory: Path, stamp: str, keep: int = 7) -> subprocess.CompletedProcess:
    script = backup.host_script(f"pg_dump {target(db)} --format=custom", "pg_restore --file=/dev/null",
                                str(directory), keep)
    return run(db, script, stamp)


@pytest.fixture
def seeded(schema_db, litellm_keys):
    litellm_data.seed(schema_db, *litellm_keys, keys=50, users=50, teams=50)
    schema_db.psql(SPEND)
    counts = schema_db.psql('SELECT (SELECT count(*) FROM "LiteLLM_VerificationToken") || \' \' || '
                            '(SELECT count(*) FROM "LiteLLM_UserTable") || \' \' || (SELECT count(*) FROM "LiteLLM_TeamTable")'
                            ' || \' \' || (SELECT count(*) FROM "LiteLLM_SpendLogs")').stdout.split()
    assert counts == ["50", "50", "50", "50"]
    return schema_db


@pytest.fixture
def scratch(pg_server):
    db = create_database(pg_server)
    yield db
    drop_database(db)


def test_backup_is_private_checksummed_and_restores_every_row(seeded, scratch, tmp_path):
    directory = tmp_path / "backups"
    result = take(seeded, directory, "20261127T030000Z")
    assert result.returncode == 0, result.stderr
    dump = directory / "20261127T030000Z.dump"
    assert f"database backup written: {dump} sha256 {backup.sha256_of(dump)}" in result.stdout
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(f"{dump}.sha256").stat().st_mode) == 0o600
    assert backup.recorded_sum(Path(f"{dump}.sha256")) == backup.sha256_of(dump)
    assert subprocess.run(["sha256sum", "-c", f"{dump.name}.sha256"], cwd=directory, capture_output=True).returncode == 0
    assert not list(directory.glob("*.part"))
    # The controller accepts it, and the restore command brings back every row of every table.
    problems, _ = restore.controller_check(dump)
    assert problems == []
    done = restore_into(scratch, dump)
    assert done.returncode == 0, done.stderr
    assert litellm_data.snapshot(scratch) == litellm_data.snapshot(seeded)


def test_restore_over_a_freshly_migrated_and_bootstrapped_database(seeded, pg_server, litellm_schema, tmp_path):
    """Reprovision: the new host's deploy has migrated and bootstrapped an empty database; the restore
    replaces it with the backup's rows exactly (--clean --if-exists over existing tables)."""
    directory = tmp_path / "backups"
    assert take(seeded, directory, "20261127T030000Z").returncode == 0
    fresh = create_database(pg_server, template=litellm_schema[0].name)
    try:
        litellm_data.run_bootstrap(fresh, litellm_data.values_for("sk-" + "n" * 40))
        done = restore_into(fresh, directory / "20261127T030000Z.dump")
        assert done.returncode == 0, done.stderr
        assert litellm_data.snapshot(fresh) == litellm_data.snapshot(seeded)
    finally:
        drop_database(fresh)


# What a newer image's migrations might do: a new table, a new column, a changed row, a ledger entry.
NEWER_MIGRATION = """CREATE TABLE "LiteLLM_FromANewerImage" (id int PRIMARY KEY);
ALTER TABLE "LiteLLM_TeamTable" ADD COLUMN from_a_newer_image text DEFAULT 'x';
UPDATE "LiteLLM_UserTable" SET spend = spend + 1;
INSERT INTO "_prisma_migrations" (id, checksum, migration_name, started_at, finished_at, applied_steps_count)
VALUES ('00000000-0000-4000-8000-000000000000', repeat('0', 64), '29991231000000_newer', now(), now(), 1);
"""


def test_restore_undoes_a_newer_images_migrations(seeded, tmp_path):
    """An upgrade rolled back: the backup taken before it replaces the whole schema, so the newer
    image's table and column are gone too (a --clean restore would keep them, and the next
    upgrade's migration would then fail on them)."""
    directory = tmp_path / "backups"
    assert take(seeded, directory, "20261127T030000Z").returncode == 0
    before = litellm_data.snapshot(seeded)
    seeded.psql(NEWER_MIGRATION)
    assert litellm_data.snapshot(seeded) != before
    done = restore_into(seeded, directory / "20261127T030000Z.dump")
    assert done.returncode == 0, done.stderr
    assert litellm_data.snapshot(seeded) == before
    leftovers = seeded.psql("SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' AND "
                            "(table_name = 'LiteLLM_FromANewerImage' OR column_name = 'from_a_newer_image')")
    assert leftovers.stdout.split() == ["0"]
    assert not list(directory.glob("*.sql")), "the SQL scratch file holds data and must not stay"


def test_retention_keeps_exactly_n_on_host_and_controller(seeded, tmp_path):
    directory = tmp_path / "backups"
    rotation = directory / "litellm-20261101T000000Z-before-rotation.dump"
    directory.mkdir(mode=0o700)
    rotation.write_bytes(b"kept: not part of the retention")
    stamps = [f"202611{day:02d}T030000Z" for day in range(1, 7)]
    for stamp in stamps:
        result = take(seeded, directory, stamp, keep=3)
        assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in directory.glob("*.dump")) == sorted([rotation.name] + [f"{s}.dump" for s in stamps[-3:]])
    assert sorted(p.name for p in directory.glob("*.sha256")) == [f"{s}.dump.sha256" for s in stamps[-3:]]
    # The controller's side: the same rule in Python.
    local = tmp_path / "controller"
    local.mkdir()
    for stamp in stamps:
        (local / f"{stamp}.dump").write_bytes(b"x")
        (local / f"{stamp}.dump.sha256").write_text("0" * 64 + "\n")
    removed = backup.prune(local, 2)
    assert [p.name for p in removed] == [f"{s}.dump" for s in stamps[:4]]
    assert [p.name for p in backup.dumps_in(local)] == [f"{s}.dump" for s in stamps[-2:]]
    assert len(list(local.glob("*.sha256"))) == 2


def test_a_failed_dump_leaves_no_file(seeded, tmp_path):
    directory = tmp_path / "backups"
    script = backup.host_script("false", "pg_restore --file=/dev/null", str(directory), 3)
    result = run(seeded, script, "20261127T030000Z")
    assert result.returncode != 0
    assert "database backup failed: pg_dump did not complete" in result.stderr
    assert list(directory.iterdir()) == []


@pytest.mark.parametrize("damage", ["flipped byte", "truncated, checksum re-recorded", "no checksum", "not a dump"])
def test_a_damaged_backup_is_refused_and_the_database_untouched(seeded, scratch, tmp_path, damage):
    directory = tmp_path / "backups"
    assert take(seeded, directory, "20261127T030000Z").returncode == 0
    dump = directory / "20261127T030000Z.dump"
    sums = Path(f"{dump}.sha256")
    data = dump.read_bytes()
    if damage == "flipped byte":
        dump.write_bytes(data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:])
        expected = "checksum mismatch"
    elif damage == "truncated, checksum re-recorded":
        dump.write_bytes(data[: len(data) * 2 // 3])
        sums.write_text(f"{backup.sha256_of(dump)}  {dump.name}\n")
        expected = "pg_restore cannot read it"
    elif damage == "no checksum":
        sums.unlink()
        expected = "no recorded checksum"
    else:
        dump.write_bytes(b"-- plain SQL, not custom format\n" + data)
        sums.write_text(f"{backup.sha256_of(dump)}  {dump.name}\n")
        expected = "not a pg_dump custom-format archive"
    before = litellm_data.snapshot(seeded)
    problems, _ = restore.controller_check(dump)
    assert len(problems) == 1 and expected in problems[0], problems
    if damage == "truncated, checksum re-recorded":
        # The host's own check (what the gateway runs before stopping anything) refuses it too...
        check = subprocess.run(["sh", "-c", f"pg_restore --file=/dev/null < {shlex.quote(str(dump))}"],
                               capture_output=True, text=True)
        assert check.returncode != 0
        # ...and even the restore itself, forced, rolls back as one transaction.
        forced = restore_into(seeded, dump)
        assert forced.returncode != 0 and "restore failed: pg_restore cannot read the backup whole" in forced.stderr
    assert litellm_data.snapshot(seeded) == before


# --- the safety dump a restore takes of the current database before it drops anything -------------


def restore_with_safety_dump(db, dump: Path, safety: Path, pg_dump: str, marker: Path) -> subprocess.CompletedProcess:
    """tasks.gateway.restore's command with its safety dump, psql and pg_dump talking to `db` over TCP;
    `marker` is created where the deploy would start the proxy again."""
    first = restore.safety_dump_command(pg_dump, "pg_restore --file=/dev/null", str(safety), keep=2,
                                        restart=f"touch {shlex.quote(str(marker))}")
    return run(db, restore.restore_command("pg_restore", f"psql {target(db)}", str(dump), f"{dump}.restore.sql",
                                           safety=first))


def test_a_restore_first_dumps_the_current_database_where_only_the_next_restores_prune_it(seeded, scratch, tmp_path):
    directory = tmp_path / "backups"
    assert take(seeded, directory, "20261127T030000Z").returncode == 0
    backup_state = litellm_data.snapshot(seeded)
    seeded.psql(NEWER_MIGRATION)  # what the restore is about to replace
    current = litellm_data.snapshot(seeded)
    safety = directory / "litellm-20261128T120000Z-before-restore.dump"
    done = restore_with_safety_dump(seeded, directory / "20261127T030000Z.dump", safety,
                                    f"pg_dump {target(seeded)} --format=custom", tmp_path / "proxy-started")
    assert done.returncode == 0, done.stderr
    assert litellm_data.snapshot(seeded) == backup_state
    assert not (tmp_path / "proxy-started").exists()
    # Private, checksummed like a backup (restore.py takes it back from the controller), holding what was replaced.
    assert stat.S_IMODE(safety.stat().st_mode) == 0o600 and stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert restore.controller_check(safety)[0] == []
    assert restore_into(scratch, safety).returncode == 0
    assert litellm_data.snapshot(scratch) == current
    # A scheduled backup prunes its own kind only: the safety dump stays for the user to find.
    for stamp in ("20261129T030000Z", "20261130T030000Z"):
        assert take(seeded, directory, stamp, keep=1).returncode == 0
    assert safety.exists() and Path(f"{safety}.sha256").exists()


def test_a_failed_safety_dump_drops_nothing_and_starts_the_proxy_again(seeded, tmp_path):
    directory = tmp_path / "backups"
    assert take(seeded, directory, "20261127T030000Z").returncode == 0
    seeded.psql(NEWER_MIGRATION)
    current = litellm_data.snapshot(seeded)
    safety = directory / "litellm-20261128T120000Z-before-restore.dump"
    done = restore_with_safety_dump(seeded, directory / "20261127T030000Z.dump", safety, "false",
                                    tmp_path / "proxy-started")
    assert done.returncode != 0
    assert "restore not started: the safety dump of the current database failed" in done.stderr, done.stderr
    assert "nothing was dropped" in done.stderr
    assert litellm_data.snapshot(seeded) == current
    assert (tmp_path / "proxy-started").exists()
    assert not safety.exists() and not list(directory.glob("*.part"))
