"""The verify summary's backup lines (issue 7: the age of the newest backup is visible)."""

from tasks.gateway import verify


def test_newest_backup_parsed_from_the_hosts_listing():
    fact = verify.NewestBackup()
    assert fact.process(["1764300000.5 20261128T030000Z.dump", "now 1764303600"]) == ("20261128T030000Z.dump", 3599.5)
    assert fact.process(["now 1764303600"]) is None


def test_backup_note_says_age_and_flags_stale():
    assert verify.backup_note("on the host", None, 100) == "newest backup on the host: none yet"
    assert verify.backup_note("on the host", ("a.dump", 3 * 3600), 2 * 86400) == \
        "newest backup on the host: a.dump, 3 h old"
    stale = verify.backup_note("on the host", ("a.dump", 3 * 86400), 2 * 86400)
    assert stale.startswith("newest backup on the host: a.dump, 3 days old") and "STALE" in stale


def test_age_units():
    assert [verify.age(s) for s in (59, 600, 7199, 7200, 47 * 3600, 49 * 3600)] == \
        ["0 min", "10 min", "119 min", "2 h", "47 h", "2 days"]


def test_summary_lists_checks_then_notes():
    text = verify.summary([("the controller", {"name": "n", "ok": True})], ["newest backup on the host: none yet"])
    assert text.splitlines() == ["verification summary:", "  ok   n  from the controller",
                                 "  newest backup on the host: none yet"]


def test_newest_backup_command_finds_the_newest_dump_and_skips_restore_copies(tmp_path):
    import os
    import subprocess
    import time

    now = time.time()
    for name, hours_ago in (("20261126T030000Z.dump", 48), ("litellm-20261127T120000Z-before-upgrade.dump", 5),
                            ("restore-0123456789abcdef.dump", 1), ("20261127T030000Z.dump.sha256", 0)):
        path = tmp_path / name
        path.write_bytes(b"x")
        os.utime(path, (now - hours_ago * 3600, now - hours_ago * 3600))
    fact = verify.NewestBackup()
    out = subprocess.run(["sh", "-c", fact.command(str(tmp_path))], capture_output=True, text=True, check=True)
    name, seconds = fact.process(out.stdout.splitlines())
    assert name == "litellm-20261127T120000Z-before-upgrade.dump" and 5 * 3600 - 5 < seconds < 5 * 3600 + 60
    empty = subprocess.run(["sh", "-c", fact.command(str(tmp_path / "missing"))], capture_output=True, text=True)
    assert fact.process(empty.stdout.splitlines()) is None
