"""A container port published on a host, reachable only from a list of source addresses.

Docker publishes ports with DNAT, so their packets are forwarded, not delivered locally: INPUT rules
never see them. Docker's own place for such rules is the `DOCKER-USER` chain, which FORWARD jumps to
before Docker's rules. Each restricted service gets a chain of its own (`LD-<name>`):

    -A DOCKER-USER -p tcp -m conntrack --ctorigdstport <port> --ctdir ORIGINAL \
       -m comment --comment litellm-deploy:<name>:<digest> -j LD-<name>
    -A LD-<name> -s <source>/32 -j RETURN      (one per allowed source)
    -A LD-<name> -j DROP

`--ctorigdstport` matches the port as published (before DNAT); `--ctdir ORIGINAL` only the client's
direction, so answers of allowed connections pass. One script writes exactly that (used by the deploy
and at boot by a systemd unit ordered after docker.service and part of it, so a restarted engine gets
the rules again); the deploy runs it only when the jump's comment does not carry the digest of the
wanted rule set, so a re-run reports no change. Used by the db and redis hosts (tasks/state_hosts.py)
and, later, by the load balancers.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import FactBase, deploy, operation
from pyinfra.operations import files, systemd

DOCKER_USER = "DOCKER-USER"
SCRIPT_DIR = "/usr/local/sbin"
UNIT_DIR = "/etc/systemd/system"


def chain(name: str) -> str:
    return f"LD-{name}"[:28]  # iptables' limit on chain names


def _source(address: str) -> str:
    network = ipaddress.ip_network(address, strict=False)
    return str(network)


def digest(name: str, port: int, sources: list[str] | tuple[str, ...]) -> str:
    text = f"{name} {port} {' '.join(sorted(_source(s) for s in sources))}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def mark(name: str, port: int, sources) -> str:
    return f"litellm-deploy:{name}:{digest(name, port, sources)}"


def rules(name: str, port: int, sources) -> list[str]:
    """The wanted rules, as iptables arguments, in order (the jump first)."""
    own = chain(name)
    return [
        f"-I {DOCKER_USER} 1 -p tcp -m conntrack --ctorigdstport {int(port)} --ctdir ORIGINAL "
        f"-m comment --comment {mark(name, port, sources)} -j {own}",
        *(f"-A {own} -s {_source(s)} -j RETURN" for s in sorted(set(sources))),
        f"-A {own} -j DROP",
    ]


def script(name: str, port: int, sources) -> str:
    """The shell script that (re)applies the rules; safe to run any number of times."""
    own = chain(name)
    lines = [
        "#!/bin/sh",
        f"# Written by litellm-deploy: published port {int(port)} ({name}) only from {', '.join(sorted(set(sources)))}.",
        "# Re-applied at boot and whenever docker starts (the unit of the same name). Do not edit.",
        "set -e",
        f"iptables -w -N {DOCKER_USER} 2>/dev/null || true",
        f"iptables -w -N {own} 2>/dev/null || iptables -w -F {own}",
        *(f"iptables -w {rule}" for rule in rules(name, port, sources)[1:]),
        # Earlier jumps to the chain (another port or rule set) go; one jump, at the top, stays.
        f"iptables -w -S {DOCKER_USER} | grep -e ' -j {own}$' | sed 's/^-A/-D/' | while read -r rule; do",
        "  eval \"iptables -w $rule\"",
        "done",
        f"iptables -w {rules(name, port, sources)[0]}",
        "",
    ]
    return "\n".join(lines)


def unit(name: str, script_path: str) -> str:
    return "\n".join([
        "# Written by litellm-deploy: the firewall rules of a published port, re-applied after docker starts.",
        "[Unit]",
        f"Description=litellm-deploy firewall for {name}",
        "After=docker.service",
        "PartOf=docker.service",
        "",
        "[Service]",
        "Type=oneshot",
        "RemainAfterExit=yes",
        f"ExecStart={script_path}",
        "",
        "[Install]",
        "WantedBy=multi-user.target docker.service",
        "",
    ])


class FirewallApplied(FactBase):
    """True when DOCKER-USER jumps to the service's chain with the wanted rule set's mark and the
    chain holds as many rules as wanted."""

    def command(self, chain_name: str, wanted_mark: str, count: int) -> str:
        return (f"if iptables -w -S {DOCKER_USER} 2>/dev/null | grep -q -e {shlex.quote(wanted_mark)} "
                f"&& [ \"$(iptables -w -S {chain_name} 2>/dev/null | grep -c '^-A')\" = {int(count)} ]; "
                "then echo applied; else echo missing; fi")

    def process(self, output: list[str]) -> bool:
        return bool(output) and output[-1].strip() == "applied"


@operation()
def rules_applied(service: str, port: int, sources: list[str], script_path: str):
    """`service`, not `name`: pyinfra takes `name=` for the operation's own name."""
    wanted = mark(service, port, sources)
    if host.get_fact(FirewallApplied, chain_name=chain(service), wanted_mark=wanted, count=len(set(sources)) + 1):
        host.noop(f"port {port} ({service}) already reachable only from {', '.join(sorted(set(sources)))}")
        return
    yield shlex.quote(script_path)


@deploy("Firewall of a published port")
def port_only_from(service: str, port: int, sources: list[str] | tuple[str, ...]) -> None:
    """Published `port` of `service` reachable only from `sources` (IP addresses or networks)."""
    path = f"{SCRIPT_DIR}/litellm-firewall-{service}"
    unit_name = f"litellm-firewall-{service}.service"
    files.put(name=f"Firewall script for {service}", src=StringIO(script(service, port, sources)), dest=path,
              user="root", group="root", mode="700")
    unit_file = files.put(name=f"Firewall unit {unit_name}", src=StringIO(unit(service, path)),
                          dest=f"{UNIT_DIR}/{unit_name}", user="root", group="root", mode="644")
    systemd.daemon_reload(name=f"systemd reloaded for {unit_name}", _if=unit_file.did_change)
    systemd.service(name=f"{unit_name} enabled (re-applies the rules after docker starts)", service=unit_name,
                    enabled=True)
    rules_applied(name=f"Port {port} ({service}) reachable only from {', '.join(sorted(set(sources)))}",
                  service=service, port=port, sources=list(sources), script_path=path)
