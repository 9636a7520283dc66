"""The litellm-deploy test bed: fresh Debian 13 hosts in local Docker containers.

Run from the repository root with the project's virtualenv:

    .venv/bin/python -m tests.testbed up gw1 ollama1:ollama up1:upstream
    .venv/bin/python -m tests.testbed ls [--json]
    .venv/bin/python -m tests.testbed inventory [--out PATH]     # default .testbed/inventory.py
    pyinfra .testbed/inventory.py deploy.py                       # deploy onto the bed's hosts
    .venv/bin/python -m tests.testbed ssh gw1 [COMMAND...]        # a shell on a host
    .venv/bin/python -m tests.testbed restart gw1                 # reboot a host
    .venv/bin/python -m tests.testbed down [NAME ...]             # all hosts when no names
    .venv/bin/python -m tests.testbed images [--images local|official]
    .venv/bin/python -m tests.testbed archives                    # docker save | gzip -1, for `docker load`
    .venv/bin/python -m tests.testbed prepare                     # images, archives and the provisioned seed

Roles (NAME[:ROLE]; `up` replaces a host of the same name with a fresh one):
  host      (default) Debian 13 "trixie", systemd as PID 1, sshd (root, the bed's key), python3, sudo.
            Reaches Debian's apt mirror, so the deploy installs docker.io + docker-compose itself;
            /var/lib/docker is a volume of its own, so the inner Docker engine really runs containers.
  ollama    a host that also runs an Ollama-API-compatible stand-in (ollama.service, port 11434):
            Ollama itself cannot be installed offline. Models: --models m1,m2 (or $TESTBED_OLLAMA_MODELS;
            file /etc/ollama-standin/models.json on the host, read on every request).
  upstream  the real LiteLLM proxy (`litellm --config ... --port 4000`) whose models answer with
            LiteLLM's own mock_response; --upstream-models a,b (or $TESTBED_UPSTREAM_MODELS; default
            upstream-mock). Its master key (sk-...) is generated per `up`: see `ls` api_key_file (0600).

State (SSH key, state.json, upstream keys, archives, default inventory) lives in .testbed/ (gitignored;
$TESTBED_STATE_DIR overrides). Every Docker resource carries the label litellm-deploy.testbed=1.
Images are built here (no registry needed: debootstrap + Debian packages + PyPI) and cached; a recipe
change (tests/testbed/images/<name>/) rebuilds. The provisioned hosts' seed (provision.py) is kept like
the images, by `down` too. Stage timings go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .bed import Testbed, TestbedError
from .images import DEPLOYED, ImageError


def _split(v: str | None) -> list[str] | None:
    return [x.strip() for x in v.split(",") if x.strip()] if v else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.testbed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-dir", help="state directory (default .testbed/ in the repository)")
    p.add_argument("-v", "--verbose", action="store_true", help="show image build output")
    sub = p.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", help="create fresh hosts NAME[:ROLE] (roles: host, ollama, upstream)")
    up.add_argument("specs", nargs="+", metavar="NAME[:ROLE]")
    up.add_argument("--models", help="Ollama stand-in models, comma-separated")
    up.add_argument("--upstream-models", help="upstream LiteLLM model names, comma-separated")
    up.add_argument("--images", choices=["local", "official"], default="local")
    up.add_argument("--timeout", type=float, default=180, help="seconds each host may take to be ready")
    up.add_argument("--sudo", action="append", default=[], metavar="NAME=nopasswd|password",
                    help="the deploy logs in to NAME as a non-root sudoer (repeatable)")

    ls = sub.add_parser("ls", help="list hosts")
    ls.add_argument("--json", action="store_true")

    down = sub.add_parser("down", help="remove hosts (all when no names), their volumes, the network")
    down.add_argument("names", nargs="*")

    inv = sub.add_parser("inventory", help="write a pyinfra inventory for the current hosts")
    inv.add_argument("--out", help="path (default .testbed/inventory.py); '-' prints it")

    img = sub.add_parser("images", help="build (or check) the images and print their references")
    img.add_argument("--images", choices=["local", "official"], default="local")
    img.add_argument("--json", action="store_true")

    arc = sub.add_parser("archives", help="docker save | gzip -1 the LiteLLM and Postgres images")
    arc.add_argument("--images", choices=["local", "official"], default="local")
    arc.add_argument("--json", action="store_true")

    prep = sub.add_parser("prepare", help="make what hosts are made from: the images, their archives, the seed")
    prep.add_argument("--images", choices=["local", "official"], default="local")

    ssh = sub.add_parser("ssh", help="ssh into a host (or run a command there)")
    ssh.add_argument("name")
    ssh.add_argument("command", nargs=argparse.REMAINDER)

    rs = sub.add_parser("restart", help="reboot hosts and wait until they are back")
    rs.add_argument("names", nargs="+")

    a = p.parse_args(argv)
    try:
        bed = Testbed(state_dir=a.state_dir, images=getattr(a, "images", "local"), verbose=a.verbose)
        if a.cmd == "up":
            hosts = bed.up(a.specs, ollama_models=_split(a.models), upstream_models=_split(a.upstream_models),
                           timeout=a.timeout, sudo=_sudo_kinds(a.sudo))
            names = {spec.partition(":")[0] for spec in a.specs}
            _print_hosts([h for h in hosts if h["name"] in names])
            print(f"\nnext: python -m tests.testbed inventory   (writes {bed.state_dir / 'inventory.py'})")
        elif a.cmd == "ls":
            hosts = bed.hosts()
            print(json.dumps(hosts, indent=2)) if a.json else _print_hosts(hosts)
        elif a.cmd == "down":
            gone = bed.down(a.names or None)
            print("removed: " + (" ".join(gone) if gone else "(nothing)"))
        elif a.cmd == "inventory":
            if a.out == "-":
                sys.stdout.write(bed.inventory_text())
            else:
                print(bed.write_inventory(a.out))
        elif a.cmd == "images":
            refs = bed.build_images()
            if a.json:
                print(json.dumps(refs, indent=2))
            else:
                for role, ref in refs.items():
                    print(f"{role:9} {ref}")
        elif a.cmd == "archives":
            arcs = bed.archives(DEPLOYED)
            refs = {name: bed.image(name) for name in DEPLOYED}
            if a.json:
                print(json.dumps({k: {"image": refs[k], "path": str(p)} for k, p in arcs.items()}, indent=2))
            else:
                for role, path in arcs.items():
                    print(f"{role:9} {refs[role]:40} {path}")
        elif a.cmd == "prepare":
            bed.prepare()
        elif a.cmd == "ssh":
            cmd = bed.ssh_command(a.name) + a.command
            os.execvp(cmd[0], cmd)
        elif a.cmd == "restart":
            for name in a.names:
                bed.restart(name)
            _print_hosts([h for h in bed.hosts() if h["name"] in a.names])
    except (TestbedError, ImageError) as e:
        print(f"testbed: error: {e}", file=sys.stderr)
        return 1
    return 0


def _sudo_kinds(options: list[str]) -> dict[str, str]:
    kinds = {}
    for option in options:
        name, sep, kind = option.partition("=")
        if not sep:
            raise TestbedError(f"--sudo {option!r}: write NAME=nopasswd or NAME=password")
        kinds[name] = kind
    return kinds


def _print_hosts(hosts: list[dict]) -> None:
    if not hosts:
        print("(no test bed hosts)")
        return
    print(f"{'NAME':12} {'ROLE':9} {'STATUS':8} {'ADDRESS':15} ACCESS")
    for h in hosts:
        if h["role"] == "upstream":
            access = f"{h['api_base']}  key: {h['api_key_file']}"
        else:
            access = f"ssh -i {h['ssh_key']} root@{h['address']}"
            if h.get("sudo"):
                access += f"  deploy: {h['deploy_user']} (sudo {h['sudo']})"
            if h["role"] == "ollama":
                access += f"  api: {h['api_base']}"
        print(f"{h['name']:12} {h['role']:9} {h['status']:8} {h['address'] or '-':15} {access}")


if __name__ == "__main__":
    sys.exit(main())
