"""Issue 15, defect 1: every runbook over a non-root SSH user with sudo, as on a cloud image.

Own hosts (sudo-*): two bundled-database gateways the deploy reaches as the bed's SUDO_USER, never
as root — sudo-gw-nopasswd with password-less sudo, sudo-gw-password with a sudo password (generated
per `up`) given through pyinfra's own `_sudo_password` — and the upstream LiteLLM their one model uses.
sudo-gw-password is a bare host: the whole fresh install (Docker from apt, the image archives carried
through the sudo user into root's directory) runs under the harder kind of sudo. sudo-gw-nopasswd boots
provisioned (tests/testbed/provision.py): every later stage, and every runbook, still runs through sudo.
In order: the main converge, a second converge that changes nothing, a master-key rotation, a
backup run, verify.py and a restore, all over the sudo user, all green.

All the while a watcher on each gateway (a loop run as root, started before the first converge,
stopping by itself) asks `nobody` — any user but root — which files it can read that were written
during the suite, and flags any that holds a secret of this suite (every one is known before the
first run: the secrets file is filled beforehand), a pg_dump archive, or a name of the kind
(*.env, *.dump, *.upload, *.part). After the last run the whole root filesystem is checked the same way.
"""

from __future__ import annotations

import shlex
import time

import pytest

from tasks.config import secrets as S
from tasks.gateway import backup
from tests.e2e import gateway_http as api
from tests.e2e.conftest import UPSTREAM_MODEL, Deployment
from tests.testbed import wait_until
from tests.testbed.bed import SUDO_USER

pytestmark = pytest.mark.e2e

GATEWAYS = {"gw-nopasswd": "nopasswd", "gw-password": "password"}
MODELS = ["chat-upstream"]
SCAN_SECONDS = 45 * 60  # the watcher's own deadline: it never outlives a stuck suite by much
# Each filesystem a file may be written to (-xdev keeps out /proc, /sys and Docker's volume); /tmp
# is a tmpfs of its own on Debian 13.
ROOTS = "/ /tmp /var/tmp /dev/shm /run"
WATCH = "/root/sudo-scan"  # root-only: the watcher's script, patterns, findings

# Run as root on the host (python3 is on every bed host); argv: epoch of the suite's start, epoch
# to stop at. Each round, exactly as before: `nobody` lists every file it can read that was written
# since the start; a name of the kind is flagged, and every such file whose content may hold a
# secret is grepped for the patterns. A file found clean is not grepped again while its inode,
# ctime and size stay the same (a write or chmod moves ctime); only a file whose ctime was a second
# or more before the round began is taken as settled, so a write in the same clock tick as the grep
# cannot hide. Grepping the unchanged apt lists and .debs every round (~270 MB) took ~1 CPU-second a
# round, a third of a core per watcher for the whole suite (each host is its own cgroup: nice did
# not shield the other suites), and a round came every ~3.4 s on a loaded machine. Without it a
# round (the walk itself) costs ~0.12 CPU-seconds: with a 1 s pause rounds still come every
# ~1.2 s, more often than before, at a tenth of the CPU.
WATCHER = r"""
import os, re, subprocess, sys, time
start, stop = int(sys.argv[1]), int(sys.argv[2])
os.chdir("/root")
roots = "@ROOTS@".split()
names = re.compile(r"(\.env|\.dump|\.upload|\.part)$")
find = ["runuser", "-u", "nobody", "--", "find", *roots, "-xdev", "-newermt", f"@{start}",
        "-type", "f", "-readable", "-printf", r"%i %C@ %s %p\0"]
clean = set()  # (path, inode, ctime, size) of files grepped without a match
while time.time() < stop and not os.path.exists("sudo-scan.stop"):
    began = time.time()
    listed = subprocess.run(find, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
    found, unseen = [], {}
    for entry in listed.split(b"\0"):
        if not entry:
            continue
        inode, ctime, size, path = entry.split(b" ", 3)
        if names.search(path.decode(errors="replace")):
            found.append(path)
        key = (path, inode, ctime, size)
        if key not in clean:
            unseen[path] = key
    paths = list(unseen)
    for batch in (paths[i:i + 200] for i in range(0, len(paths), 200)):
        grep = subprocess.run(["grep", "-l", "-F", "-f", "sudo-scan.patterns", "--", *batch],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        hits = set(grep.stdout.splitlines())
        found += sorted(hits)
        if grep.returncode in (0, 1):  # every file read (2: an error, maybe one unread: none settled)
            clean.update(unseen[path] for path in batch if path not in hits and float(unseen[path][2]) < began - 1)
    with open("sudo-scan.found", "ab") as out:
        out.write(b"".join(path + b"\n" for path in found))
    with open("sudo-scan.rounds", "a") as out:
        out.write(".\n")
    time.sleep(1)
open("sudo-scan.done", "w").close()
""".replace("@ROOTS@", ROOTS)

# After the runs: every file nobody can read, whenever it was written, for the secret values (the
# dump signature is left out here: tools such as pg_dump or libmagic's database carry it).
FULL_SCAN = (
    f"grep -vx PGDMP {WATCH}.patterns > {WATCH}.values && "
    f"runuser -u nobody -- find {ROOTS} -xdev -type f -readable -print0 2>/dev/null "
    f"| xargs -0 -r grep -l -F -f {WATCH}.values -- 2>/dev/null; true"
)


class SudoDeployment(Deployment):
    """Two bundled gateways reached as SUDO_USER, and the upstream LiteLLM."""

    @property
    def hosts(self) -> list[str]:
        return [self.name(h) for h in (*GATEWAYS, "up1")]

    def up(self) -> None:
        self.bed.build_images()
        self.bed.down(self.hosts)
        self.bed.up([self.name(g) for g in GATEWAYS] + [self.name("up1") + ":upstream"],
                    upstream_models=[UPSTREAM_MODEL], sudo={self.name(g): kind for g, kind in GATEWAYS.items()},
                    provisioned=(self.name("gw-nopasswd"),))
        # Every secret of the suite exists before the first run, so the watchers know what to look for.
        values = {name: make() for name, make in S.GENERATED.items()}
        self.pending = S.GENERATED[S.MASTER_KEY]()  # the key rotate.py will roll out (test_3)
        values["UPSTREAM_LITELLM_API_KEY"] = self.bed.upstream_key(self.name("up1"))
        S.rewrite_secrets(self.secrets, values)
        self.secrets.chmod(0o600)

    def models(self) -> list[dict]:
        upstream = self.bed.host(self.name("up1"))
        return [{"name": "chat-upstream", "model": f"openai/{UPSTREAM_MODEL}", "api_base": upstream["api_base"],
                 "api_key_env": "UPSTREAM_LITELLM_API_KEY"}]


@pytest.fixture(scope="module")
def deployment(bed, tmp_path_factory):
    deployment = SudoDeployment(bed, tmp_path_factory.mktemp("e2e-sudo"), prefix="sudo-")
    deployment.up()
    for gateway in GATEWAYS:
        # start_timeout: two DB-backed proxies start at once beside the other suites on 2 cores.
        deployment.overrides[gateway] = {"database_mode": "bundled", "start_timeout": 360,
                                         "backup_local_dir": str(deployment.workdir / "backups")}
    yield deployment
    for gateway in GATEWAYS:  # the watchers stop by themselves at their deadline; sooner is kinder
        bed.ssh(deployment.name(gateway), f"touch {WATCH}.stop")
    deployment.down()


def secret_values(deployment) -> list[str]:
    return [value for value in S.read_secrets(deployment.secrets).values() if value]


@pytest.fixture(scope="module")
def watchers(deployment):
    """A watcher on each gateway, running from before the first converge to the last test (niced:
    the proxies it watches must still start in time on a loaded machine)."""
    sudo_password = open(deployment.bed.host(deployment.name("gw-password"))["sudo_password_file"]).read().strip()
    patterns = "\n".join([*secret_values(deployment), deployment.pending, sudo_password, "PGDMP"]) + "\n"
    start = int(time.time()) - 5
    for gateway in GATEWAYS:
        host = deployment.name(gateway)
        # Over stdin, into root-only files: never on a command line.
        setup = deployment.bed.ssh(host, f"umask 077 && cat > {WATCH}.patterns", input=patterns.encode())
        assert setup.ok, setup.output
        setup = deployment.bed.ssh(host, f"umask 077 && cat > {WATCH}.py", input=WATCHER.encode())
        assert setup.ok, setup.output
        started = deployment.bed.ssh(
            host, f"rm -f {WATCH}.stop {WATCH}.done {WATCH}.found {WATCH}.rounds; "
                  f"nohup nice -n 19 python3 {WATCH}.py {start} {start + SCAN_SECONDS} >/dev/null 2>&1 &")
        assert started.ok, started.output
    return start


def findings(deployment, gateway: str) -> list[str]:
    out = deployment.ssh(gateway, f"sort -u {WATCH}.found 2>/dev/null; true")
    return out.split("\n") if out.strip() else []


def rounds(deployment, gateway: str) -> int:
    return int(deployment.ssh(gateway, f"cat {WATCH}.rounds 2>/dev/null | wc -l").strip())


def succeeded(run, what: str):
    assert run.returncode == 0, f"{what} failed:\n{run.output[-6000:]}"
    return run


def test_0_the_watchers_see_a_readable_secret(deployment, watchers):
    """The control: a secret left readable for a moment is found, so a quiet watcher means something."""
    gateway = "gw-nopasswd"
    planted = "/tmp/planted-by-the-suite"
    secret = secret_values(deployment)[0]
    deployment.bed.ssh(deployment.name(gateway), f"umask 022 && cat > {planted}", input=secret.encode())
    try:
        wait_until("the watcher to find the planted file", lambda: planted in findings(deployment, gateway), 60)
    finally:
        deployment.ssh(gateway, f"rm -f {planted}")
    deployment.ssh(gateway, f"sed -i '\\#^{planted}$#d' {WATCH}.found")
    assert findings(deployment, gateway) == []


def test_1_converge_as_the_sudo_user(deployment, watchers):
    run = succeeded(deployment.pyinfra(), "deploy.py over the sudo user")
    for gateway, kind in GATEWAYS.items():
        host = deployment.bed.host(deployment.name(gateway))
        assert host["sudo"] == kind and host["deploy_user"] == SUDO_USER
        assert "Database schema migrated" in " ".join(deployment.changed(run, gateway)), run.output[-3000:]
        status, readiness = api.request(deployment.base_url(gateway), "GET", "/health/readiness")
        assert status == 200 and readiness["db"] == "connected", readiness
        assert api.models_seen(deployment.base_url(gateway), deployment.master_key())[0] == 200
        # What the deploy wrote is root's: the SSH user neither owns nor can read it.
        listing = deployment.ssh(gateway, "stat -c '%U %a %n' /opt/litellm /opt/litellm/.env")
        assert listing.split("\n")[:2] == ["root 700 /opt/litellm", "root 600 /opt/litellm/.env"], listing
        denied = deployment.bed.ssh_as(deployment.name(gateway), SUDO_USER, "cat /opt/litellm/.env")
        assert not denied.ok, f"{SUDO_USER} read the .env without sudo"
    # The inventory logged in as the sudo user, sudo password included, never as root.
    inventory = deployment.inventory.read_text()
    assert f"'ssh_user': {SUDO_USER!r}" in inventory and "'ssh_user': 'root'" not in inventory
    password_file = deployment.bed.host(deployment.name("gw-password"))["sudo_password_file"]
    assert open(password_file).read().strip() not in inventory + run.output


def test_2_second_converge_changes_nothing(deployment, watchers):
    run = succeeded(deployment.pyinfra(), "second deploy.py")
    for gateway in GATEWAYS:
        assert deployment.changed(run, gateway) == [], run.output[-4000:]


def test_3_rotation_as_the_sudo_user(deployment, watchers):
    old, pending = deployment.master_key(), deployment.pending
    S.rewrite_secrets(deployment.secrets, {S.MASTER_KEY_NEXT: pending})
    run = succeeded(deployment.pyinfra("rotate.py"), "rotate.py")
    values = S.read_secrets(deployment.secrets)
    assert values[S.MASTER_KEY] == pending and S.MASTER_KEY_NEXT not in values
    for gateway in GATEWAYS:
        base = deployment.base_url(gateway)
        assert api.models_seen(base, pending)[0] == 200
        assert api.models_seen(base, old)[0] in api.REFUSED
    assert old not in run.output and pending not in run.output


def test_4_backup_as_the_sudo_user(deployment, watchers):
    succeeded(deployment.pyinfra("backup.py"), "backup.py")
    for gateway in GATEWAYS:
        local = deployment.workdir / "backups" / deployment.name(gateway)
        dumps = [p for p in sorted(local.glob("*.dump")) if backup.DUMP_NAME.match(p.name)]
        assert len(dumps) == 1 and dumps[0].read_bytes().startswith(b"PGDMP")
        on_host = deployment.ssh(gateway, f"sha256sum /opt/litellm/backups/{shlex.quote(dumps[0].name)}").split()[0]
        assert (local / f"{dumps[0].name}.sha256").read_text().split()[0] == on_host


def test_5_verify_and_restore_as_the_sudo_user(deployment, watchers):
    run = succeeded(deployment.pyinfra("verify.py"), "verify.py")
    assert all(deployment.changed(run, gateway) == [] for gateway in GATEWAYS), run.output[-4000:]
    # The dump travels back up through the SSH user with a sudo password.
    gateway = "gw-password"
    run = succeeded(deployment.pyinfra("restore.py", "--data", "restore_from=latest", limit=gateway), "restore.py")
    changed = deployment.changed(run, gateway)
    assert any("Database restored from the backup" in name for name in changed), run.output[-4000:]
    readiness = api.wait_ready(deployment.base_url(gateway))
    assert readiness["db"] == "connected", readiness
    assert api.models_seen(deployment.base_url(gateway), deployment.master_key()) == (200, MODELS)


def test_6_nothing_secret_was_readable_by_another_user(deployment, watchers):
    for gateway in GATEWAYS:
        host = deployment.name(gateway)
        before = rounds(deployment, gateway)
        # One more whole round after the last run, then the watcher stops.
        wait_until(f"a last watcher round on {host}", lambda: rounds(deployment, gateway) > before, 60)
        deployment.ssh(gateway, f"touch {WATCH}.stop")
        wait_until(f"the watcher on {host} to stop", lambda: deployment.bed.ssh(host, f"test -e {WATCH}.done").ok, 60)
        assert rounds(deployment, gateway) > 20, "the watcher hardly ran"
        assert findings(deployment, gateway) == []
        assert deployment.ssh(gateway, FULL_SCAN).strip() == ""
        # And the SSH user's own temp directories are gone.
        leftovers = deployment.ssh(gateway, "find /tmp -mindepth 1 -maxdepth 1 -user " + SUDO_USER
                                   + " ! -name 'pyinfra-sudo-askpass*'")
        assert leftovers.strip() == "", leftovers
