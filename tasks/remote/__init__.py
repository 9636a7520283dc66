"""Everything that runs on a host or inside a container rather than on the controller, stdlib only:

  probe      the verification's HTTP checks (also run on the controller, as a module)
  key_agent  teams and virtual keys through the proxy's API, inside the proxy container
  poller     the master-key rotation's refusal-window poller, on the gateway host
  proof      the rotation's proof that the new key is accepted and the old one refused

They share one HTTP helper (http.py). A host has only python3 and the standard library, so each is
sent as one self-contained source: program(name) inlines the helper where the program imports it.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
HELPER_IMPORT = "from tasks.remote.http import "


def program(name: str) -> str:
    """The source of tasks/remote/<name>.py to run with python3 anywhere: its import of the HTTP helper
    replaced by the helper itself."""
    source = (HERE / f"{name}.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(HELPER_IMPORT)]
    if len(imports) != 1:
        raise ValueError(f"tasks/remote/{name}.py: expected one line starting {HELPER_IMPORT!r}, found {len(imports)}")
    helper = (HERE / "http.py").read_text()
    return source.replace(imports[0] + "\n", f"# --- tasks/remote/http.py, inlined ---\n{helper}# ---\n", 1)
