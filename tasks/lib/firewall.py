"""A container port published on a host, reachable only from a list of source addresses.

Docker publishes ports with DNAT, so their packets are forwarded, not delivered locally: INPUT rules
never see them. Docker's own place for such rules is the `DOCKER-USER` chain, which FORWARD jumps to
before Docker's rules. Each restricted service gets a chain of its own (`chain(name)`: `LD-`, the
name's first characters, a digest of the whole name; iptables takes 28 characters, and names cut to
fit were shared by two services of one long compose_project):

    -A DOCKER-USER -p tcp -m conntrack --ctorigdstport <port> --ctdir ORIGINAL \
       -m comment --comment litellm-deploy:<name>:<digest> -j LD-<name prefix>-<name digest>
    -A LD-<name prefix>-<name digest> -s <source>/32 -j RETURN      (one per allowed source)
    -A LD-<name prefix>-<name digest> -j DROP

`--ctorigdstport` matches the port as published (before DNAT); `--ctdir ORIGINAL` only the client's
direction, so answers of allowed connections pass. One script writes exactly that (used by the deploy
and at boot by a systemd unit ordered before docker.service and part of it: dockerd publishes the
ports of its restart-policy containers before it reports ready, and keeps the DOCKER-USER rules it
finds, so the rules come first, at boot and at an engine restart). It also removes the service's
jumps and chain as an earlier version named them (`LD-<name>` cut at 28 characters), so an upgrade
leaves no old DROP or RETURN; a chain another service still jumps to stays until that one's script
runs. The deploy runs it only when the jump's comment does not carry the digest of the wanted rule
set, so a re-run reports no change. Used by the db and redis hosts (tasks/state_hosts.py)
and by the gateways behind load balancers (their proxy port, from the load balancers only).

A `destination` narrows the jump to connections made to that address (`--ctorigdst`, before DNAT).
A gateway needs it: its proxy container itself dials port 4000 elsewhere (an upstream LiteLLM), and
those connections cross FORWARD too, with the same original port; without the address they would
meet the DROP. The db and redis hosts have none (their services dial nothing on their own port).

IPv4 only (iptables): the settings refuse IPv6 addresses for the hosts whose ports this guards
(tasks/config/topology.py, tasks/balancer.py), and the rules refuse them as a last guard.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import FactBase, deploy, operation
from pyinfra.operations import files, systemd

from tasks.lib.render import environment

DOCKER_USER = "DOCKER-USER"
SCRIPT_DIR = "/usr/local/sbin"
UNIT_DIR = "/etc/systemd/system"
CHAIN_LIMIT = 28  # iptables' limit on chain names
CHAIN_PREFIX = "LD-"
NAME_DIGEST = 10  # hex characters of the whole name's digest: what keeps two chains apart


def chain(name: str) -> str:
    """The service's own chain: readable by its first characters, distinct by the digest of all of them."""
    tag = hashlib.sha256(name.encode()).hexdigest()[:NAME_DIGEST]
    readable = name[: CHAIN_LIMIT - len(CHAIN_PREFIX) - 1 - NAME_DIGEST]
    return f"{CHAIN_PREFIX}{readable}-{tag}"


def legacy_chain(name: str) -> str:
    """The chain an earlier version gave the service (cut to fit, so shared by long names)."""
    return f"{CHAIN_PREFIX}{name}"[:CHAIN_LIMIT]


def is_ipv6(address: object) -> bool:
    """True for an IPv6 address or network: iptables rules would leave it unfiltered."""
    try:
        return ipaddress.ip_network(str(address), strict=False).version == 6
    except ValueError:
        return False


def _ipv4(address: str, network: bool = True):
    value = ipaddress.ip_network(address, strict=False) if network else ipaddress.ip_address(address)
    if value.version != 4:
        raise ValueError(
            f"firewall: {address} is IPv6; the rules are iptables (IPv4) only — fix: use the "
            "host's IPv4 address (the settings refuse IPv6 before this)"
        )
    return value


def _source(address: str) -> str:
    return str(_ipv4(address))


def digest(name: str, port: int, sources: list[str] | tuple[str, ...], destination: str = "") -> str:
    text = f"{name} {port} {' '.join(sorted(_source(s) for s in sources))}"
    if destination:  # only when given: the db and redis hosts' marks stay what they were
        text += f" to {_address(destination)}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _address(address: str) -> str:
    return str(_ipv4(address, network=False))


def mark(name: str, port: int, sources, destination: str = "") -> str:
    return f"{_mark_prefix(name)}{digest(name, port, sources, destination)}"


def rules(name: str, port: int, sources, destination: str = "") -> list[str]:
    """The wanted rules, as iptables arguments, in order (the jump first)."""
    own = chain(name)
    to = f"--ctorigdst {_address(destination)} " if destination else ""
    return [
        f"-I {DOCKER_USER} 1 -p tcp -m conntrack {to}--ctorigdstport {int(port)} --ctdir ORIGINAL "
        f"-m comment --comment {mark(name, port, sources, destination)} -j {own}",
        *(f"-A {own} -s {_source(s)} -j RETURN" for s in sorted(set(sources))),
        f"-A {own} -j DROP",
    ]


def _jumps_deleted(name: str) -> list[str]:
    """Shell lines deleting every jump from DOCKER-USER to the service's chain or carrying its mark
    (whichever chain it goes to: an earlier version's too)."""
    pattern = f"-e ' -j {chain(name)}$' -e {shlex.quote(_mark_prefix(name))}"
    return [
        f"iptables -w -S {DOCKER_USER} | grep {pattern} | sed 's/^-A/-D/' | while read -r rule; do",
        '  eval "iptables -w $rule"',
        "done",
    ]


def _legacy_chain_deleted(name: str) -> list[str]:
    """Shell lines deleting the chain an earlier version named for the service, once nothing jumps
    to it (two long names shared one: it stays until the other service's own chain replaces it)."""
    old = legacy_chain(name)
    if old == chain(name):
        return []
    return [
        f"if iptables -w -S {old} >/dev/null 2>&1 && ! iptables -w -S {DOCKER_USER} | grep -q -e ' -j {old}$'; then",
        f"  iptables -w -F {old} && iptables -w -X {old}",
        "fi",
    ]


def _mark_prefix(name: str) -> str:
    return f"litellm-deploy:{name}:"


def removal(name: str) -> str:
    """Shell lines deleting the service's rules: its jumps, its chain, an earlier version's chain."""
    own = chain(name)
    return "\n".join(
        [
            *_jumps_deleted(name),
            f"if iptables -w -S {own} >/dev/null 2>&1; then iptables -w -F {own} && iptables -w -X {own}; fi",
            *_legacy_chain_deleted(name),
        ]
    )


def script(name: str, port: int, sources, destination: str = "") -> str:
    """The shell script that (re)applies the rules; safe to run any number of times."""
    own = chain(name)
    wanted = rules(name, port, sources, destination)
    to = f" on {_address(destination)}" if destination else ""
    lines = [
        "#!/bin/sh",
        f"# Written by litellm-deploy: published port {int(port)}{to} ({name}) only from {', '.join(sorted(set(sources)))}.",
        "# Re-applied at boot and whenever docker starts (the unit of the same name). Do not edit.",
        "set -e",
        # Before dockerd at boot: the chain is not there yet; dockerd keeps it and what it holds.
        f"iptables -w -N {DOCKER_USER} 2>/dev/null || true",
        f"iptables -w -N {own} 2>/dev/null || iptables -w -F {own}",
        *(f"iptables -w {rule}" for rule in wanted[1:]),
        # Earlier jumps of the service (another port or rule set, an earlier version's chain) go;
        # one jump, at the top, stays.
        *_jumps_deleted(name),
        f"iptables -w {wanted[0]}",
        *_legacy_chain_deleted(name),
        "",
    ]
    return "\n".join(lines)


def unit(name: str, script_path: str) -> str:
    """The systemd unit that runs the service's script before docker starts (templates/systemd/litellm-firewall.service.j2)."""
    return environment().get_template("systemd/litellm-firewall.service.j2").render(name=name, script_path=script_path)


class FirewallApplied(FactBase):
    """True when DOCKER-USER jumps to the service's chain with the wanted rule set's mark and the
    chain holds as many rules as wanted (a jump with that mark to an earlier version's chain is not it)."""

    def command(self, chain_name: str, wanted_mark: str, count: int) -> str:
        return (
            f"if iptables -w -S {DOCKER_USER} 2>/dev/null | grep -F -e {shlex.quote(wanted_mark)} "
            f"| grep -q -e ' -j {chain_name}$' "
            f"&& [ \"$(iptables -w -S {chain_name} 2>/dev/null | grep -c '^-A')\" = {int(count)} ]; "
            "then echo applied; else echo missing; fi"
        )

    def process(self, output: list[str]) -> bool:
        return bool(output) and output[-1].strip() == "applied"


@operation()
def rules_applied(service: str, port: int, sources: list[str], script_path: str, destination: str = ""):
    """`service`, not `name`: pyinfra takes `name=` for the operation's own name."""
    wanted = mark(service, port, sources, destination)
    if host.get_fact(FirewallApplied, chain_name=chain(service), wanted_mark=wanted, count=len(set(sources)) + 1):
        host.noop(f"port {port} ({service}) already reachable only from {', '.join(sorted(set(sources)))}")
        return
    yield shlex.quote(script_path)


@deploy("Firewall of a published port")
def port_only_from(service: str, port: int, sources: list[str] | tuple[str, ...], destination: str = "") -> None:
    """Published `port` of `service` reachable only from `sources` (IP addresses or networks); with
    `destination`, only the port as published on that address."""
    path, unit_name, unit_path = paths(service)
    files.put(
        name=f"Firewall script for {service}",
        src=StringIO(script(service, port, sources, destination)),
        dest=path,
        user="root",
        group="root",
        mode="700",
    )
    unit_file = files.put(
        name=f"Firewall unit {unit_name}",
        src=StringIO(unit(service, path)),
        dest=unit_path,
        user="root",
        group="root",
        mode="644",
    )
    systemd.daemon_reload(name=f"systemd reloaded for {unit_name}", _if=unit_file.did_change)
    systemd.service(
        name=f"{unit_name} enabled (re-applies the rules after docker starts)", service=unit_name, enabled=True
    )
    rules_applied(
        name=f"Port {port} ({service}) reachable only from {', '.join(sorted(set(sources)))}",
        service=service,
        port=port,
        sources=list(sources),
        script_path=path,
        destination=destination,
    )


class FirewallPresent(FactBase):
    """True when anything of a service's firewall is on the host: its unit, its script, its chain or a
    jump with its mark (an earlier version's chain is reached through one)."""

    def command(self, chain_name: str, unit_path: str, script_path: str, mark_prefix: str) -> str:
        return (
            f"if [ -e {shlex.quote(unit_path)} ] || [ -e {shlex.quote(script_path)} ] || "
            f"iptables -w -S {chain_name} >/dev/null 2>&1 || "
            f"iptables -w -S {DOCKER_USER} 2>/dev/null | grep -q -F -e {shlex.quote(mark_prefix)}; "
            "then echo present; else echo absent; fi"
        )

    def process(self, output: list[str]) -> bool:
        return bool(output) and output[-1].strip() == "present"


def paths(service: str) -> tuple[str, str, str]:
    """(script, unit name, unit file) of a service's firewall."""
    unit_name = f"litellm-firewall-{service}.service"
    return f"{SCRIPT_DIR}/litellm-firewall-{service}", unit_name, f"{UNIT_DIR}/{unit_name}"


def presence_fact(service: str) -> tuple[type[FactBase], dict]:
    """The fact rules_absent decides on, and its arguments."""
    script_path, _, unit_path = paths(service)
    return FirewallPresent, {
        "chain_name": chain(service),
        "unit_path": unit_path,
        "script_path": script_path,
        "mark_prefix": _mark_prefix(service),
    }


@operation()
def rules_absent(service: str):
    """No firewall for `service` (a gateway no longer behind load balancers publishes its proxy to
    everyone again): the unit disabled and gone, the jumps and the chain deleted."""
    script_path, unit_name, unit_path = paths(service)
    fact, arguments = presence_fact(service)
    if not host.get_fact(fact, **arguments):
        host.noop(f"no firewall for {service}")
        return
    yield f"systemctl disable {shlex.quote(unit_name)} >/dev/null 2>&1 || true"
    yield f"rm -f {shlex.quote(unit_path)} {shlex.quote(script_path)} && systemctl daemon-reload"
    yield removal(service)
