"""Faults while the DB-backed gateway takes writes: no acknowledged virtual key is lost, and spend rows
are lost only within the bound LiteLLM documents for its batch writer.

One gateway (flt-gw-db: bundled Postgres, the package's default) routes to the bed's upstream LiteLLM
(flt-up1). For each fault a bounded writer (tests/faults/writer.py) makes virtual keys and chat requests
through the gateway's published port; the fault is injected while it runs; the writer goes on until the
gateway acknowledges writes again; then a converge, and the checks:
  - every acknowledged key is in LiteLLM_VerificationToken (as LiteLLM stores it, its SHA-256) and
    authenticates over HTTP;
  - every acknowledged chat has its LiteLLM_SpendLogs row, except ones acknowledged at most
    SPEND_LOSS_BOUND_S before the fault or while the gateway was not healthy again: LiteLLM queues spend
    rows in the proxy's memory and writes them every proxy_batch_write_at seconds (default 10,
    litellm/constants.py PROXY_BATCH_WRITE_AT), so a killed proxy, or a database that cannot take a
    batch, drops what was queued. What was lost is measured and printed, never assumed.
Before them, on the fresh host, a deploy interrupted at the start of each stage converges on the reruns;
after them, a backup onto a full disk fails cleanly and the next one works, and an upgrade interrupted
between its backup and its verification is finished, or rolled back to the data from before it, by the rerun.
Each fault prints a summary line (pytest's terminal summary, "fault tier").
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass

import pytest

from tasks.gateway.database import hash_key
from tests.e2e import gateway_http as api
from tests.e2e import upgrade_probe
from tests.e2e.conftest import ROOT, make_deployment
from tests.e2e.database import COMPOSE, psql
from tests.faults.writer import Writer
from tests.testbed import wait_until

pytestmark = pytest.mark.e2e

PREFIX = "flt-"
HOST = "gw-db"
MODEL = "chat-upstream"
BATCH_WRITE_S = 10  # LiteLLM's proxy_batch_write_at default
SPEND_LOSS_BOUND_S = BATCH_WRITE_S + 5  # a batch's interval, plus the writer's lag in seeing an answer
# Before the fault, writes for longer than the bound: rows acknowledged well before it must all be kept.
WARM_UP_S = SPEND_LOSS_BOUND_S + 10
WRITES_AFTER = 10  # acknowledged again after the fault: the gateway takes writes once more
HEALTHY_TIMEOUT = 240  # a rebooted host brings Docker, Postgres and the proxy up again within this
# For the queued spend rows of a live proxy to reach the table, counted from the last acknowledged chat:
# a row still missing then is lost (counted from the poll's start, a lossy fault waited the whole bound
# again after the converge had already outlasted it).
SPEND_FLUSH_TIMEOUT = 3 * BATCH_WRITE_S


@dataclass
class Outcome:
    fault: str
    keys_acked: int
    keys_lost: list[str]
    chats_acked: int
    chats_lost: list[str]
    lost_outside_bound: list[str]
    healthy_after_s: float
    refused: int  # writes not acknowledged (refused or failed): in practice, those during the fault
    lost_window: tuple[float, float] | None  # when the lost rows were acknowledged, in s from the fault

    def line(self) -> str:
        since = "" if self.lost_window is None else \
            ", acknowledged {:+.1f} s to {:+.1f} s from the fault".format(*self.lost_window)
        return (f"{self.fault}: keys acknowledged {self.keys_acked}, lost {len(self.keys_lost)}; "
                f"spend rows acknowledged {self.chats_acked}, lost {len(self.chats_lost)}{since} "
                f"(outside the {SPEND_LOSS_BOUND_S} s batch bound: {len(self.lost_outside_bound)}); "
                f"{self.refused} writes refused; healthy again after {self.healthy_after_s:.1f} s")


@pytest.fixture(scope="module")
def deployment(bed, tmp_path_factory):
    deployment = make_deployment(bed, tmp_path_factory, prefix=PREFIX, hosts=(HOST, "up1"))
    deployment.overrides[HOST] = {"backup_local_dir": str(deployment.workdir / "backups")}
    yield deployment
    deployment.down()


@pytest.fixture(scope="module")
def gateway(deployment):
    run = deployment.pyinfra(limit=HOST)
    assert run.returncode == 0, run.output[-6000:]
    return deployment.base_url(HOST)


def service_container(deployment, service: str) -> str:
    return deployment.ssh(HOST, f"{COMPOSE} ps -q {service}").strip()


def present_tokens(deployment, keys: list[str]) -> set[str]:
    rows = set(psql(deployment, HOST, 'SELECT token FROM "LiteLLM_VerificationToken";').splitlines())
    return {k for k in keys if hash_key(k) in rows}


def present_spend_rows(deployment, ids: list[str]) -> set[str]:
    rows = set(psql(deployment, HOST, 'SELECT request_id FROM "LiteLLM_SpendLogs";').splitlines())
    return {i for i in ids if i in rows}


def survive(deployment, gateway: str, fault: str, inject, record_property) -> Outcome:
    """The writer running, `inject()` the fault, the gateway healthy and writing again, a converge, then
    what the database holds of every acknowledged write."""
    writer = Writer(gateway, deployment.master_key(), MODEL, max_seconds=WARM_UP_S + HEALTHY_TIMEOUT + 180).start()
    try:
        wait_until(f"chats acknowledged for {WARM_UP_S} s", lambda: writer.chats and time.time() - writer.chats[0].at > WARM_UP_S,
                   timeout=WARM_UP_S + 120)
        fault_at = time.time()
        inject()
        api.wait_ready(gateway, timeout=HEALTHY_TIMEOUT)
        healthy_at = time.time()
        writer.wait_for_acks(WRITES_AFTER, timeout=120)
    finally:
        writer.stop()
    run = deployment.pyinfra(limit=HOST)
    assert run.returncode == 0, f"the converge after {fault} failed:\n{run.output[-6000:]}"

    keys = [a.value for a in writer.keys]
    kept = present_tokens(deployment, keys)
    keys_lost = [k for k in keys if k not in kept]
    refused = [k for k in kept if api.models_seen(gateway, k)[0] != 200]
    assert not refused, f"{len(refused)} stored keys no longer authenticate after {fault}"

    ids = [a.value for a in writer.chats]
    deadline = time.monotonic() + max(0.0, max(a.at for a in writer.chats) + SPEND_FLUSH_TIMEOUT - time.time())
    while (present := present_spend_rows(deployment, ids)) != set(ids) and time.monotonic() < deadline:
        time.sleep(1)  # polling a table the proxy writes in batches, within a deadline
    lost = [a for a in writer.chats if a.value not in present]
    outside = [a.value for a in lost if not fault_at - SPEND_LOSS_BOUND_S <= a.at <= healthy_at + SPEND_LOSS_BOUND_S]
    window = (min(a.at for a in lost) - fault_at, max(a.at for a in lost) - fault_at) if lost else None
    outcome = Outcome(fault, len(keys), keys_lost, len(ids), [a.value for a in lost], outside, healthy_at - fault_at,
                      writer.failures, window)
    record_property("fault", outcome.line())
    print(outcome.line())
    return outcome


def assert_survived(outcome: Outcome) -> None:
    assert outcome.keys_lost == [], f"{outcome.fault}: acknowledged keys lost: {len(outcome.keys_lost)}"
    assert outcome.lost_outside_bound == [], \
        f"{outcome.fault}: spend rows lost outside LiteLLM's batch bound: {outcome.lost_outside_bound[:5]}"


# A fresh host's deploy interrupted at the start of each stage, each rerun interrupted at the next one:
# (stage, the operation at whose start it is interrupted, how). "kill": the controller's pyinfra killed
# (its SSH connection dies with it); "cut": the host's SSH sessions killed, pyinfra left to notice.
INTERRUPTIONS = (
    ("image transfer", "Upload image archive", "kill"),  # archives (the bed); a pulling host has none
    ("image load", "Load images from the archives", "kill"),
    ("files", "Write ", "kill"),
    ("database start", "Postgres up and healthy", "cut"),
    ("migrations", "Database schema migrated", "kill"),
    ("bootstrap", "LiteLLM admin user and master-key link", "kill"),
    ("proxy start", "LiteLLM proxy up and healthy", "kill"),
)
CUT_SSH = "pkill -KILL -f '^sshd: root@'"  # the sessions, not the listener


def interrupted_deploy(deployment, operation: str, how: str) -> tuple[bool, str]:
    """deploy.py, interrupted when it starts `operation` on the host: (whether it got there, its output)."""
    deployment.write_inventory()
    command, env = deployment.command("deploy.py")
    process = subprocess.Popen(command, cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines, reached = [], False
    try:
        for line in process.stdout:
            lines.append(line)
            if not reached and line.startswith("--> Starting operation:") and operation in line:
                reached = True
                if how == "kill":
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    assert deployment.bed.exec(deployment.name(HOST), CUT_SSH).rc in (0, 1)
        process.wait(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = "".join(lines)
    assert reached or process.returncode == 0, f"the deploy failed before {operation!r}:\n{output[-6000:]}"
    return reached, output


def test_1_a_deploy_interrupted_at_each_stage_converges_on_the_rerun(deployment, record_property):
    """Reruns only, no manual step: each one gets past where the last was interrupted, the last converges,
    and the one after it changes nothing."""
    interrupted = []
    for stage, operation, how in INTERRUPTIONS:
        reached, output = interrupted_deploy(deployment, operation, how)
        if reached:
            interrupted.append(stage)
            (deployment.workdir / f"interrupted-{stage.replace(' ', '-')}.log").write_text(output)
    assert {"files", "migrations", "bootstrap", "proxy start"} <= set(interrupted), interrupted
    run = deployment.pyinfra(limit=HOST)
    assert run.returncode == 0, f"the rerun after the interruptions failed:\n{run.output[-6000:]}"
    again = deployment.pyinfra(limit=HOST)
    assert again.returncode == 0 and deployment.changed(again, HOST) == [], again.output[-6000:]
    line = f"deploy interrupted at {', '.join(interrupted)}: converged on the rerun, the next run changed nothing"
    record_property("fault", line)
    print(line)


def test_2_healthy_gateway_keeps_every_acknowledged_write(deployment, gateway, record_property):
    """The control: with no fault, nothing may be missing (the checks can tell kept from lost)."""
    outcome = survive(deployment, gateway, "no fault", lambda: None, record_property)
    assert outcome.keys_acked and outcome.chats_acked
    assert outcome.keys_lost == [] and outcome.chats_lost == [], outcome.line()


def crash(deployment, service: str) -> None:
    """SIGKILL to the service's main process from the host, as an OOM kill or a crash ends it (`docker
    kill` would count as a stop by hand, which the restart policy then leaves down)."""
    deployment.ssh(HOST, f"kill -KILL $(docker inspect --format '{{{{.State.Pid}}}}' $({COMPOSE} ps -q {service}))")


def test_3_proxy_killed(deployment, gateway, record_property):
    outcome = survive(deployment, gateway, "proxy killed", lambda: crash(deployment, "litellm"), record_property)
    assert_survived(outcome)


def test_4_postgres_killed(deployment, gateway, record_property):
    outcome = survive(deployment, gateway, "Postgres killed", lambda: crash(deployment, "db"), record_property)
    assert_survived(outcome)


BACKUP_DIR = "/opt/litellm/backups"  # backup_dir's default
FULL_DISK = f"mount -t tmpfs -o size=64k,mode=0700 litellm-deploy-full-disk {BACKUP_DIR}"  # far below a dump


def started_at(deployment, service: str) -> str:
    return deployment.ssh(HOST, f"docker inspect --format '{{{{.State.StartedAt}}}}' {service_container(deployment, service)}")


def test_5_a_backup_on_a_full_disk_fails_cleanly_and_the_next_one_works_once_space_is_back(
        deployment, gateway, record_property):
    """The backup directory's filesystem full (a 64 KiB tmpfs over it: filling the bed host's own disk
    would fill the machine's): the backup fails naming the cause, leaves no partial dump, and neither
    the proxy nor Postgres is touched; with the space back, the next backup works."""
    key = api.generate_key(gateway, deployment.master_key(), models=[MODEL])
    before = {service: started_at(deployment, service) for service in ("litellm", "db")}
    deployment.ssh(HOST, f"mkdir -p {BACKUP_DIR} && {FULL_DISK}")
    try:
        full = deployment.pyinfra("backup.py", limit=HOST)
        left = deployment.ssh(HOST, f"ls -A {BACKUP_DIR}").split()
    finally:
        deployment.ssh(HOST, f"umount {BACKUP_DIR}")
    assert full.returncode != 0 and "database backup failed" in full.output, full.output[-4000:]
    assert left == [], f"a failed backup left files behind: {left}"
    assert {service: started_at(deployment, service) for service in before} == before
    assert api.models_seen(gateway, key) == (200, [MODEL])
    back = deployment.pyinfra("backup.py", limit=HOST)
    assert back.returncode == 0, back.output[-4000:]
    dumps = deployment.ssh(HOST, f"ls {BACKUP_DIR}").split()
    assert any(name.endswith(".dump") for name in dumps), dumps
    line = "backup on a full disk: failed naming the cause, nothing left behind, proxy and Postgres untouched; " \
           "the next backup, with space, succeeded"
    record_property("fault", line)
    print(line)


def test_6_gateway_host_rebooted(deployment, gateway, record_property):
    def reboot():
        deployment.bed.restart(deployment.name(HOST))

    assert_survived(survive(deployment, gateway, "gateway host rebooted", reboot, record_property))


UPGRADE_INTERRUPTED_AT = "LiteLLM proxy up and healthy"  # after the backup and the new image's migrations
PENDING_RECORD = "/opt/litellm/.state/upgrade-pending"


def pending_record_left(deployment) -> bool:
    return deployment.ssh(HOST, f"test -e {PENDING_RECORD} && echo left || echo cleared").strip() == "left"


def probe_table_present(deployment) -> bool:
    """Whether the newer image's migration has run (tests/e2e/upgrade_probe.py)."""
    return psql(deployment, HOST, "SELECT to_regclass('\"LiteLLM_FromANewerImage\"') IS NOT NULL;") == "t"


def test_7_an_upgrade_interrupted_between_backup_and_verify(deployment, gateway, record_property):
    """Killed once the backup is taken and the new image's migrations have run. An image that fails
    verification: the rerun rolls back to the backup from before the interrupted attempt (its own backup
    holds that attempt's migrations). An image that verifies, with the writer running: the rerun
    finishes the upgrade and keeps every acknowledged write. A second rerun changes nothing."""
    old = deployment.bed.litellm_image()
    failing, working = f"{old}-upgrade-probe", f"{old}-upgrade-works"
    upgrade_probe.build(deployment, HOST, old, failing)
    upgrade_probe.build(deployment, HOST, old, working, verifies=True)
    data = deployment.overrides[HOST]
    key = api.generate_key(gateway, deployment.master_key(), models=[MODEL])

    data.update(litellm_image=failing, verify_timeout=upgrade_probe.FAILING_VERIFY_S)
    reached, output = interrupted_deploy(deployment, UPGRADE_INTERRUPTED_AT, "kill")
    assert reached, output[-6000:]
    assert probe_table_present(deployment), "interrupted before the new image's migrations: it proves little"
    rerun = deployment.pyinfra(limit=HOST)
    data.pop("verify_timeout")
    assert rerun.returncode != 0 and "taken before the interrupted attempt" in rerun.output, rerun.output[-6000:]
    assert not probe_table_present(deployment), "the rollback restored a backup holding the newer migrations"
    assert not pending_record_left(deployment)
    assert api.models_seen(gateway, key) == (200, [MODEL])
    line = ("upgrade interrupted between backup and verify, an image that fails verification: the rerun rolled "
            "back to the data from before the interrupted attempt, a key made before it authenticates")
    record_property("fault", line)
    print(line)

    def interrupted_then_rerun():
        data["litellm_image"] = working
        assert interrupted_deploy(deployment, UPGRADE_INTERRUPTED_AT, "kill")[0]
        run = deployment.pyinfra(limit=HOST)
        assert run.returncode == 0, f"the rerun after the interrupted upgrade failed:\n{run.output[-6000:]}"

    outcome = survive(deployment, gateway, "upgrade interrupted between backup and verify, then rerun",
                      interrupted_then_rerun, record_property)
    assert_survived(outcome)
    assert probe_table_present(deployment)
    proxy_image = f"docker inspect --format '{{{{.Config.Image}}}}' {service_container(deployment, 'litellm')}"
    assert deployment.ssh(HOST, proxy_image).strip() == working
    again = deployment.pyinfra(limit=HOST)
    assert again.returncode == 0 and deployment.changed(again, HOST) == [], again.output[-6000:]
    assert not pending_record_left(deployment)
