"""What the fault suites read from a pyinfra run, and how they break and wait on the bed's Ollama node.

Shared by tests/e2e/test_verify_faults.py and tests/e2e/test_ollama_nodes.py: in both, the gateway
GW routes to the bed's Ollama node, a fault is made, and pyinfra's output must name it.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request

GW = "gw-stateless"  # the gateway that routes to the bed's Ollama node in these suites
FAST = 20  # verify_timeout of fault cases: fail within seconds, not the default minutes (start_timeout,
# which bounds a recreated proxy's `compose up --wait`, keeps its default)


# -- reading pyinfra's output ------------------------------------------------------------------

def tail(run, chars: int = 6000) -> str:
    return run.output[-chars:]


def host_lines(run, deployment, host: str) -> list[str]:
    """Lines pyinfra printed for one host, without the '[host]' prefix."""
    prefix = re.compile(r"^\s*\[" + re.escape(deployment.name(host)) + r"\]\s?(.*)$")
    return [m.group(1) for m in map(prefix.match, run.output.splitlines()) if m]


def op_results(run, deployment, host: str) -> dict[str, str]:
    """operation name -> what pyinfra reported for `host` (Success, No changes, Error..., Skipped)."""
    results, current = {}, None
    status = re.compile(r"^\s*\[" + re.escape(deployment.name(host)) + r"\]\s+(Success|No changes|Skipped|Error.*)\s*$")
    for line in run.output.splitlines():
        started = re.match(r"--> Starting operation: (.*?)\s*$", line)
        if started:
            current = started.group(1)
        elif current and (m := status.match(line)):
            results[current] = m.group(1)
    return results


def changed(run, deployment, host: str) -> list[str]:
    return [op for op, result in op_results(run, deployment, host).items() if result == "Success"]


def verify_result(run, deployment, host: str) -> str:
    found = [r for op, r in op_results(run, deployment, host).items() if op.endswith("Gateway, Ollama nodes and upstreams answer")]
    assert len(found) == 1, f"no verify operation reported for {host}:\n{tail(run)}"
    return found[0]


def summary(run, deployment, host: str) -> list[str]:
    """The host's verification summary lines ('ok   name  from where')."""
    lines = run.output.splitlines()
    marker = f"[{deployment.name(host)}]"
    start = [i for i, line in enumerate(lines) if marker in line and line.rstrip().endswith("verification summary:")]
    assert start, f"no verification summary for {host}:\n{tail(run)}"
    out = []
    for line in lines[start[-1] + 1:]:
        if not re.match(r"^  (ok  |FAIL|SKIP) ", line):
            break
        out.append(line.strip())
    return out


def failure(run, deployment, host: str) -> str:
    """The message the failing verification printed for `host`."""
    lines = host_lines(run, deployment, host)
    start = [i for i, line in enumerate(lines) if line.startswith("verification failed on")]
    assert start, f"{host}: no 'verification failed' message:\n{tail(run)}"
    return "\n".join(lines[start[-1]:])


def assert_verification_fails(run, deployment, *needles: str) -> str:
    assert run.returncode != 0, f"expected a failing run:\n{tail(run)}"
    assert verify_result(run, deployment, GW).startswith("Error"), tail(run)
    text = failure(run, deployment, GW)
    for needle in needles:
        assert needle.lower() in text.lower(), f"{needle!r} not in the failure:\n{text}"
    return text


# -- the bed ------------------------------------------------------------------------------------

def ollama_url(deployment) -> str:
    return deployment.bed.host(deployment.name("ollama1"))["api_base"]


def ollama_tags(url: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/api/tags", timeout=5) as response:
        return [m["name"] for m in json.load(response)["models"]]


def wait_for(what: str, condition, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while True:
        try:
            if result := condition():
                return result
        except OSError:
            pass
        assert time.monotonic() < deadline, f"timed out after {seconds:.0f}s waiting for {what}"
        time.sleep(0.5)  # polling interval of a wait that has a deadline


def fast(deployment, *hosts: str, seconds: int = FAST) -> None:
    for host in hosts:
        deployment.overrides.setdefault(host, {})["verify_timeout"] = seconds
