"""The no-op benchmark's yardstick: an Ansible playbook doing the gateway's job the way the best Ansible
roles for LiteLLM do it (docs/architecture.md; the peers in ../shared/research/peers.md), on the same
hosts and the same stack as the package deployed them.

Its tasks: the distro's Docker packages present, the install directory, the three files as templates
(docker-compose.yml, litellm-config.yaml, .env 0600), `community.docker.docker_compose_v2` (state
present), and a `uri` liveliness check from the host. The templates' content is what the package
rendered on each host, byte for byte, so on a converged gateway the playbook changes nothing and both
tools do a true no-op of the same stack. (Its first run after the package's deploy recreates the proxy:
the module's `compose up` sees another config hash than the package's `up --no-deps`. That run is not
measured, and the liveliness task waits for the proxy as the peers' roles do, 2 s apart.) It does less
than the package's no-op (no TLS front, no database bootstrap check, no chat through every route, no
key check).

Ansible comes from PyPI into a virtualenv of the bench's own, next to the bed's state (never into the
package's environment); its settings are its defaults (SSH multiplexing with ControlPersist, which
keeps connections open between runs) plus pipelining, the documented speed-up.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ANSIBLE = "ansible==12.3.0"  # the community package (ansible-core, community.docker): the last for Python 3.11
FILES = {"docker-compose.yml": "0644", "litellm-config.yaml": "0644", ".env": "0600"}
RECAP = re.compile(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)

PLAYBOOK = (
    """\
- name: LiteLLM gateway (docker compose), the way the best roles deploy it
  hosts: gateways
  gather_facts: false
  tasks:
    - name: Docker Engine and Compose v2 (distro packages)
      ansible.builtin.apt:
        name: [docker.io, docker-cli, docker-compose]
        state: present
    - name: Install directory
      ansible.builtin.file: {path: /opt/litellm, state: directory, owner: root, group: root, mode: "0700"}
"""
    + "".join(
        f"""\
    - name: {name}
      ansible.builtin.template:
        src: "{{{{ inventory_hostname }}}}/{name}"
        dest: /opt/litellm/{name}
        owner: root
        group: root
        mode: "{mode}"
{"      no_log: true" + chr(10) if name == ".env" else ""}"""
        for name, mode in FILES.items()
    )
    + """\
    - name: The compose project's services up
      community.docker.docker_compose_v2:
        project_src: /opt/litellm
        project_name: litellm
        state: present
        # Not the one-shot migration job (which a role runs as a task of its own when the image changes),
        # and without starting it as the proxy's dependency: else every run re-runs it and recreates the proxy.
        services: [db, litellm, tls]
        dependencies: false
    - name: The gateway answers
      ansible.builtin.uri: {url: "http://127.0.0.1:4000/health/liveliness", status_code: 200}
      register: liveliness
      until: liveliness.status == 200
      retries: 60
      delay: 2
"""
)

CONFIG = """\
[defaults]
host_key_checking = False
forks = 10
interpreter_python = /usr/bin/python3
stdout_callback = default

[ssh_connection]
pipelining = True
"""


def ansible_playbook(state_dir: Path) -> Path:
    """ansible-playbook from the bench's own virtualenv, installed from PyPI the first time."""
    venv = state_dir / "bench-ansible"
    program = venv / "bin" / "ansible-playbook"
    if not program.exists():
        print(f"[bench] installing {ANSIBLE} from PyPI into {venv} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", ANSIBLE], check=True)
    return program


class Playbook:
    """The playbook, its inventory and templates for `hosts` ({name: bed host}) in a private directory."""

    def __init__(self, bed, hosts: list[dict], program: Path):
        self.program = program
        self.tmp = tempfile.TemporaryDirectory(prefix="litellm-deploy-bench-ansible-")  # 0700
        self.dir = Path(self.tmp.name)
        (self.dir / "playbook.yml").write_text(PLAYBOOK)
        (self.dir / "ansible.cfg").write_text(CONFIG)
        lines = ["[gateways]"]
        for h in hosts:
            lines.append(
                f"{h['name']} ansible_host={h['address']} ansible_user=root "
                f"ansible_ssh_private_key_file={h['ssh_key']} "
                "ansible_ssh_common_args='-o UserKnownHostsFile=/dev/null'"
            )
            own = self.dir / h["name"]
            own.mkdir(mode=0o700)
            for name in FILES:
                content = bed.ssh(h["name"], f"cat /opt/litellm/{shlex.quote(name)}")
                if not content.ok:
                    raise SystemExit(f"[bench] {h['name']}: /opt/litellm/{name} unreadable: {content.output[-300:]}")
                # The rendered file as a template that renders to itself (Jinja's raw block).
                template = own / name
                template.touch(mode=0o600)
                template.write_text("{% raw %}" + content.output + "{% endraw %}")
        (self.dir / "inventory.ini").write_text("\n".join(lines) + "\n")

    def run(self) -> tuple[float, str, dict[str, int]]:
        """(seconds, output, {host: tasks changed}); a failed or unreachable host stops the bench."""
        env = {**os.environ, "ANSIBLE_CONFIG": str(self.dir / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
        started = time.monotonic()
        result = subprocess.run(
            [str(self.program), "-i", "inventory.ini", "playbook.yml"],
            cwd=self.dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        seconds = time.monotonic() - started
        output = result.stdout + result.stderr
        recap = {
            host: (int(changed), int(unreachable) + int(failed))
            for host, changed, unreachable, failed in RECAP.findall(output)
        }
        if result.returncode != 0 or not recap or any(bad for _, bad in recap.values()):
            raise SystemExit(f"[bench] the Ansible playbook failed:\n{output[-4000:]}")
        return seconds, output, {host: changed for host, (changed, _) in recap.items()}

    def close(self) -> None:
        self.tmp.cleanup()
