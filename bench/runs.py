"""pyinfra runs on the bench's hosts, timed per operation and grouped into the deploy's stages."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import dataclass, field

from tests.e2e.conftest import ROOT, Deployment

# The deploy's stages as docs/architecture.md names them, each with the operations that belong to it
# (matched on pyinfra's "--> Starting operation:" names; the first match wins, the rest is "other").
STAGES: list[tuple[str, str]] = [
    ("connect and first facts", r"^connect$"),
    ("docker install", r"Docker|apt keyrings"),
    ("image transfer", r"image|archive"),
    ("files", r"files|\.env|directory|config|compose\.yml|written|Caddyfile"),
    ("start (database)", r"Postgres"),
    ("migrations", r"[Mm]igrat|schema"),
    ("bootstrap", r"[Bb]ootstrap|admin|master"),
    ("backup schedule", r"backup|systemd reloaded"),
    ("start (proxy)", r"LiteLLM proxy|proxy up"),
    ("verify", r"answer|[Vv]erif"),
    ("keys", r"[Vv]irtual keys|Teams"),
]
OPERATION = re.compile(r"--> Starting operation: (.*?)\s*$")


@dataclass
class TimedRun:
    returncode: int
    seconds: float
    output: str = field(repr=False)
    operations: list[tuple[str, float]] = field(repr=False, default_factory=list)  # (name, seconds)

    def stages(self) -> dict[str, float]:
        """Seconds per stage; what precedes the first operation (connecting, the first facts) is
        "connect and first facts"."""
        out: dict[str, float] = {}
        for name, seconds in self.operations:
            stage = next((s for s, pattern in STAGES if re.search(pattern, name)), "other")
            out[stage] = out.get(stage, 0.0) + seconds
        return out


def timed(deployment: Deployment, script: str = "deploy.py", *args: str, timeout: float = 1800) -> TimedRun:
    """Run pyinfra on the deployment's inventory as written, stamping each operation's start."""
    command, env = deployment.command(script, *args)
    t0 = time.monotonic()
    starts: list[tuple[str, float]] = [("connect", 0.0)]
    lines: list[str] = []
    with subprocess.Popen(
        command, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as proc:
        # The deadline holds even when pyinfra goes silent (a line never comes to check it on).
        deadline = threading.Timer(timeout, proc.kill)
        deadline.start()
        try:
            assert proc.stdout is not None  # stdout=PIPE
            for line in proc.stdout:
                lines.append(line)
                if m := OPERATION.search(line):
                    starts.append((m.group(1), time.monotonic() - t0))
            returncode = proc.wait()
        finally:
            deadline.cancel()
    total = time.monotonic() - t0
    ends = [t for _, t in starts[1:]] + [total]
    operations = [(name, end - start) for (name, start), end in zip(starts, ends)]
    return TimedRun(returncode, total, "".join(lines), operations)
