"""Where a secret could escape, and the scans that look there (tests/faults/test_leaks.py).

A finding names the secret (its name in the secrets file, never its value) and the place. Values are
looked for as they are and in their .env form (tasks/filters.dotenv_quote). Only values of at least
MIN_SECRET_LENGTH characters are looked for: every generated secret is much longer, and a short one
would match by chance.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
from pathlib import Path

from tasks.config import secrets as S
from tasks.config.filters import dotenv_quote

MIN_SECRET_LENGTH = 12
SAMPLE_EVERY_S = 0.2
# 15 minutes of samples at most: a sampler stops by itself. A bare gateway's deploy takes 2-3 minutes;
# 5 minutes once ran out on a loaded machine before the proxy started, so its schema check went unseen.
MAX_SAMPLES = 4500
HOST_SAMPLES = "/root/leak-scan-ps"  # root's, 0600 (umask 077): it holds whatever ps showed
HOST_PATTERNS = "/root/leak-scan-patterns"
HOST_STOP = "/root/leak-scan-stop"
HOST_RUNNING = "/root/leak-scan-running"
# On a gateway host, the files that hold secrets by design: the stack's .env, the declared virtual keys
# for the key agent (tasks/key_converge.py), and the engine's records of each container's environment
# (Docker's config.v2.json, what `docker inspect` shows as Config.Env, and containerd's copy of the spec).
HOST_ALLOWED = ("/opt/litellm/.env", "/opt/litellm/virtual-keys.json", "/var/lib/docker/containers/*/config.v2.json",
                "/var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db")
# Not scanned on a host: the kernel's and devices' views (a process's environment is the container's).
HOST_SKIPPED_DIRS = ("proc", "sys", "dev", "run")


class Secrets:
    """Every secret value the secrets file has held during the scan, with its name (an old master key
    keeps its name after a rotation)."""

    def __init__(self, path: Path):
        self.path = path
        self.names: dict[str, str] = {}  # value -> name

    def refresh(self) -> None:
        for name, value in S.read_secrets(self.path).items():
            if value and len(value) >= MIN_SECRET_LENGTH:
                self.names.setdefault(value, name)

    def forms(self) -> dict[str, str]:
        """form -> secret name: each value, and its dotenv-quoted form where that differs."""
        found = dict(self.names)
        for value, name in self.names.items():
            found.setdefault(dotenv_quote(value), name)
        return found

    def lines_holding(self, text: str, limit: int = 10) -> list[str]:
        """The lines of `text` holding a secret, each value replaced by <its name>: where it was, safely."""
        forms = sorted(self.forms().items(), key=lambda item: -len(item[0]))
        found = []
        for line in dict.fromkeys(text.splitlines()):
            if any(form in line for form, _ in forms):
                for form, name in forms:
                    line = line.replace(form, f"<{name}>")
                found.append(line[:500])
        return found[:limit]


class ControllerSampler:
    """`ps -eo args` on the controller every SAMPLE_EVERY_S while a run goes, bounded by MAX_SAMPLES."""

    def __init__(self):
        self.samples: list[str] = []
        self._seen: dict[str, None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)
        self.samples = ["\n".join(self._seen) + "\n"]

    def _run(self):
        for _ in range(MAX_SAMPLES):
            if self._stop.is_set():
                return
            shown = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
            self._seen.update(dict.fromkeys(shown))  # each line once, in the order first seen
            self._stop.wait(SAMPLE_EVERY_S)


HOST_SAMPLER = (f"umask 077; rm -f {HOST_STOP} {HOST_SAMPLES}; touch {HOST_RUNNING}; n=0; "
                f"while [ $n -lt {MAX_SAMPLES} ] && [ ! -e {HOST_STOP} ]; do "
                f"ps -eo args >> {HOST_SAMPLES}; n=$((n+1)); sleep {SAMPLE_EVERY_S}; done; rm -f {HOST_RUNNING}")


class HostSampler:
    """The same on a bed host, as root, into a root-only file read back when the run is over."""

    def __init__(self, bed, host: str):
        self.bed, self.host, self.samples = bed, host, ""

    def __enter__(self):
        result = self.bed.ssh(self.host, f"nohup sh -c {shlex.quote(HOST_SAMPLER)} >/dev/null 2>&1 &")
        assert result.ok, result.output
        return self

    def __exit__(self, *exc):
        # The loop sees the stop file within one interval; reading after a short bounded wait for it.
        script = f"touch {HOST_STOP}; for i in $(seq 50); do [ -e {HOST_RUNNING} ] || break; sleep 0.1; done; " \
                 f"sort -u {HOST_SAMPLES}; rm -f {HOST_SAMPLES} {HOST_STOP}"  # each line once: ps repeats itself
        result = self.bed.ssh(self.host, script)
        assert result.ok, result.output
        self.samples = result.output


def inspect_without_env(bed, host: str) -> str:
    """`docker inspect` of every container on the host, the containers' environment taken out."""
    result = bed.ssh(host, "docker inspect $(docker ps -aq)")
    assert result.ok, result.output
    containers = json.loads(result.output)
    for c in containers:
        c.get("Config", {}).pop("Env", None)
    return json.dumps(containers, indent=1)  # a line per field: a finding names its field


def host_files_holding(bed, host: str, secrets: Secrets) -> dict[str, list[str]]:
    """path -> names of the secrets it holds, for every file on the host (binary ones too) outside the
    skipped top-level directories. The patterns go to a root-only file the scan skips and removes."""
    forms = secrets.forms()
    skipped = "|".join(HOST_SKIPPED_DIRS)
    script = (f"umask 077; cat > {HOST_PATTERNS}; "
              f"find / -mindepth 1 -maxdepth 1 -type d | grep -vxE '/({skipped})' | xargs grep -raoF -f {HOST_PATTERNS} "
              f"--exclude={Path(HOST_PATTERNS).name} | sort -u; rm -f {HOST_PATTERNS}")
    result = bed.ssh(host, script, input=("\n".join(forms) + "\n").encode(), timeout=900)
    found: dict[str, set[str]] = {}
    for line in result.output.splitlines():  # path:matched text (the path has no colon on these hosts)
        path, _, match = line.partition(":")
        if path.startswith("/") and match in forms:
            found.setdefault(path, set()).add(forms[match])
    return {path: sorted(names) for path, names in found.items()}


def readable_by_others(bed, host: str, paths: list[str]) -> list[str]:
    """The paths a user other than root can read on the host (the file's mode and every directory above
    it), tried as `nobody`."""
    script = "".join(f"runuser -u nobody -- test -r {shlex.quote(p)} && echo {shlex.quote(p)}; " for p in paths)
    return bed.ssh(host, script + "true").output.split() if paths else []


def controller_files_holding(roots: list[Path], secrets: Secrets, skipped: tuple[str, ...]) -> dict[str, list[str]]:
    """path -> names of the secrets it holds, under `roots` (directories named in `skipped` left out)."""
    forms = secrets.forms()
    found = {}
    for root in roots:
        for path in root.rglob("*"):
            if any(part in skipped for part in path.parts) or not path.is_file() or path.is_symlink():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            names = sorted({name for form, name in forms.items() if form.encode() in data})
            if names:
                found[str(path)] = names
    return found


# One TCP reset for the first request to the proxy whose first packet holds the text, and none after:
# the string match picks the request, the limit (one match an hour, burst 1) lets it match once.
# REJECT with a reset, not DROP: a dropped segment is only retransmitted, and the request then succeeds.
RESET_RULE = ("INPUT -p tcp --dport 4000 -m string --algo bm --string {text} "
              "-m limit --limit 1/hour --limit-burst 1 -j REJECT --reject-with tcp-reset")
PROXY_PID = ("docker inspect -f '{{.State.Pid}}' "
             "$(docker ps -q --filter label=com.docker.compose.service=litellm)")


class OneRequestReset:
    """Inside the gateway's proxy container's network namespace (nsenter on the bed host, where the
    engine's PIDs are visible): the first request whose request line starts with `text` is reset; `count`
    is how many requests the rule reset, read when the block ends, the rule then removed."""

    def __init__(self, bed, host: str, text: str):
        self.bed, self.host, self.count = bed, host, None
        self.rule = RESET_RULE.format(text=shlex.quote(text))

    def _in_proxy(self, command: str) -> str:
        result = self.bed.ssh(self.host, f"pid=$({PROXY_PID}) && nsenter -t \"$pid\" -n {command}")
        assert result.ok, result.output
        return result.output

    def __enter__(self):
        self._in_proxy(f"iptables -I {self.rule}")
        return self

    def __exit__(self, *exc):
        listed = self._in_proxy("iptables -L INPUT -v -n -x")
        self._in_proxy(f"iptables -D {self.rule}")
        rows = [line.split() for line in listed.splitlines() if "reject-with tcp-reset" in line]
        assert len(rows) == 1, listed
        self.count = int(rows[0][0])
