"""The upgrade's pieces that need no host: how the previous image is read, and when the rollback runs.
Its plan (order, held errors): tests/unit/test_deploy_plan.py. The whole path (attempt, rollback, data
identical, a bad tag changing nothing) is proven on the test bed: tests/e2e/test_upgrade.py."""

from tasks.gateway import upgrade


class Ran:
    """Stands for an OperationMeta after execution (only what tasks.lib.outcome asks)."""

    def __init__(self, ok: bool, stderr: tuple[str, ...] = ()):
        self.ok, self.stderr_lines = ok, list(stderr)

    def is_complete(self) -> bool:
        return True

    def did_succeed(self) -> bool:
        return self.ok


class NotRun(Ran):
    def __init__(self):
        super().__init__(True)

    def is_complete(self) -> bool:
        return False


def test_previous_image_from_the_marker_or_the_container():
    fact = upgrade.DeployedImage()
    assert fact.process(["verified ghcr.io/berriai/litellm-database:main-v1.108.7"]) == \
        ("verified", "ghcr.io/berriai/litellm-database:main-v1.108.7")
    assert fact.process(["running litellm:old"]) == ("running", "litellm:old")
    assert fact.process([]) is None
    assert fact.process(["running "]) is None  # a container without an image name: not an upgrade
    command = fact.command("litellm", "/opt/litellm")
    assert "/opt/litellm/.state/verified-image" in command and "com.docker.compose.project=litellm" in command


def test_rollback_runs_after_the_first_failure_of_the_attempt_only():
    step = upgrade.Upgrade("gw1", "img:old", "img:new", "verified", "bundled").attempt
    assert step.args() == {"_ignore_errors": True, "_if": [step.going]}
    step.add("the database migration", [Ran(True)])
    step.add("starting the proxy", [Ran(True), NotRun()])
    assert step.going() and not step.rolling_back() and step.failure() is None
    step.steps[-1] = ("starting the proxy", Ran(False, ("warn", "service litellm did not become healthy", "")))
    assert step.rolling_back()
    assert step.failure() == "starting the proxy failed (warn / service litellm did not become healthy)"


def test_an_interrupted_upgrades_record_is_read_whole_or_not_at_all():
    fact = upgrade.PendingUpgrade()
    record = ["img:old", "img:new", "/opt/litellm/backups/litellm-20261203T000000Z-before-upgrade.dump"]
    assert fact.process([*record, "present"]) == upgrade.Pending(*record, True)
    assert fact.process([*record, "missing"]).backup_present is False
    assert fact.process([]) is None
    assert fact.process(record[:2] + ["", "present"]) is None  # cut short: not a record to restore from
    assert "/opt/litellm/.state/upgrade-pending" in fact.command("/opt/litellm")


def test_a_rerun_after_an_interrupted_upgrade_restores_the_first_backup():
    """The rerun's own backup may hold the interrupted attempt's migrations: never the one restored."""
    step = upgrade.Upgrade("gw1", "img:old", "img:new", "verified", "bundled", backup_path="/b/rerun.dump")
    assert step.restore_path == "/b/rerun.dump"
    step.interrupted_backup = "/b/first.dump"
    assert step.restore_path == "/b/first.dump"


def test_the_record_is_written_whole_or_not_at_all():
    shell = upgrade.replaced_file("/opt/litellm/.state/upgrade-pending", ["img:old", "img new", "/b/x.dump"])
    assert "> /opt/litellm/.state/upgrade-pending.part && " in shell
    assert shell.endswith("mv -f /opt/litellm/.state/upgrade-pending.part /opt/litellm/.state/upgrade-pending")
    assert "'img new'" in shell
