"""What the rotation reads on a host: the .env's key lines (as hashes), the running proxy's key
(as a hash), the poller's samples and the proof's HTTP statuses; and the proof's verdict."""

from __future__ import annotations

import json
import shlex

from pyinfra.api import FactBase

from tasks.config import secrets as S
from tasks.lib import compose
from tasks.rotation.window import parse_poll_log
from tasks.rotation.workspace import POLL_LOG, PROOF_SCRIPT, host_python, workspace

REFUSED = (400, 401, 403)  # how LiteLLM refuses a key (400 "No connected db" when it has no database)


class ProxyKeyHash(FactBase):
    """sha256 of LITELLM_MASTER_KEY in the running proxy container's environment (LiteLLM's hash of
    the key), or None when no proxy container runs."""

    def command(self, project: str, install_dir: str) -> str:
        return (
            f"id=$({compose.compose_cmd(project, install_dir)} ps -q {compose.PROXY_SERVICE} 2>/dev/null | head -n 1); "
            'if [ -n "$id" ]; then docker inspect --format \'{{range .Config.Env}}{{println .}}{{end}}\' "$id" '
            f"| sed -n 's/^{S.MASTER_KEY}=//p' | head -n 1 | tr -d '\\n' | sha256sum | cut -d' ' -f1; fi"
        )

    def process(self, output: list[str]) -> str | None:
        return output[0].strip() if output and output[0].strip() else None


class PollSamples(FactBase):
    """The refusal-window poller's samples: [(seconds since start, accepted)]."""

    def command(self, install_dir: str) -> str:
        return f"cat {shlex.quote(workspace(install_dir) + '/' + POLL_LOG)} 2>/dev/null || true"

    def process(self, output: list[str]) -> list[tuple[float, bool]]:
        return parse_poll_log(output)


class KeyProof(FactBase):
    """HTTP from the host to its proxy with the keys in the workspace's key file: JSON of statuses."""

    def command(self, image: str, install_dir: str, base: str, expect: str, seconds: int) -> str:
        failed = json.dumps({"error": "the proof could not run (docker run of the proxy image failed)"})
        return (
            f"{host_python(image, install_dir, read_only=True)} /rotation/{PROOF_SCRIPT} "
            f"{shlex.quote(base)} {shlex.quote(expect)} {int(seconds)} 2>/dev/null | tail -n 1 | grep . "
            f"|| echo {shlex.quote(failed)}"
        )

    def process(self, output: list[str]) -> dict:
        try:
            return json.loads(output[-1])
        except (IndexError, ValueError):
            return {"error": "the proof printed no result"}


def evaluate_proof(result: dict, expect: str, probe: bool) -> str | None:
    """None when the proof holds, else what failed."""
    if "error" in result:
        return result["error"]
    accepted, refused = result.get("accepted"), result.get("refused")
    good, bad = ("new", "previous") if expect == "new" else ("previous", "new")
    if accepted != 200:
        answer = "no answer" if not accepted else f"HTTP {accepted}"
        return f"the {good} master key was not accepted ({answer}, expected HTTP 200)"
    if refused not in REFUSED:
        answer = "no answer" if not refused else f"HTTP {refused}"
        return f"the {bad} master key was not refused ({answer}, expected HTTP 400/401/403)"
    if expect == "new" and probe and result.get("probe") != 200:
        return f"a virtual key made before the rotation was refused (HTTP {result.get('probe')}, expected 200)"
    return None
