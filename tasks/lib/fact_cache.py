"""A host's state read in one command, for every operation that decides on it.

pyinfra 3 reads a fact each time an operation asks for it, one SSH command each (0.1-0.2 s on a
gateway): a converged gateway's no-op asked 75 times, most of them for the same few files, images and
services, some of them five times over. Here a runbook names the facts it will decide on up front
(`read_at_once`); they are read in one shell command, each one's command in its own subshell between
markers and parsed by its own class, so every fact keeps its own semantics; and the host's get_fact
serves them for the rest of the run while they are still true:
  - until something has changed on the host since they were read: a command or an upload run on it
    other than a fact's read, or an operation that ran one (succeeded or not). The first fact of the
    list asked for after that is read again together with the ones no stage has asked for yet, in one
    command: a run that changes something pays one command per change the stages look past, not one
    per fact (a model change: 34 commands before, see tests/unit/test_fact_cache.py for the rule);
  - never a fact given global arguments (`_sudo`, `_stdin`, ...): those are read as asked;
  - never a fact whose command failed or printed what its class could not parse: read again on its own,
    so its error is reported the way pyinfra reports it.
Checks that must look at the host as it is now (verification, key checks) are simply not named.
"""

from __future__ import annotations

import inspect
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any, Iterable

import gevent
from pyinfra import host as current_host
from pyinfra.api import FactBase, StringCommand
from pyinfra.api.host import Host
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_host
from pyinfra.facts.files import Directory, File, Sha1File
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from tasks.config.registry import run_value

# pyinfra's own sentinel for "the command a fact requires is not installed" (pyinfra/api/facts.py).
NO_COMMAND = "##PYINFRA_NOCMD##"
MARK = "##litellm-deploy-fact##"

Wanted = tuple[type[FactBase], dict[str, Any]]


def fact_key(cls: type[FactBase], kwargs: dict[str, Any]) -> tuple[type[FactBase], str]:
    """One key for one fact however it is asked for: its arguments bound to its command's signature,
    defaults filled in (as pyinfra binds them), in a stable text form."""
    bound = inspect.signature(cls().command).bind(**kwargs)
    bound.apply_defaults()
    return cls, json.dumps(bound.arguments, sort_keys=True, default=repr)


def batchable(cls: type[FactBase]) -> bool:
    return (
        isinstance(cls, type)
        and issubclass(cls, FactBase)
        and callable(getattr(cls, "command", None))
        and cls.check_preconditions is FactBase.check_preconditions
        and cls.shell_executable is None
    )


def _command_of(fact: FactBase, kwargs: dict[str, Any]) -> list:
    command = fact.command(**kwargs)
    required = fact.requires_command(**kwargs)
    if not required:
        return ["(", command, ")"]
    return ["if command -v", required, ">/dev/null 2>&1; then (", command, f"); else echo '{NO_COMMAND}'; fi"]


class FactBatch(FactBase):
    """Several facts' commands in one: each one's output between two marker lines, the second with its
    exit status. The whole command always succeeds; a fact that failed is the caller's to read again."""

    def command(self, facts: tuple[Wanted, ...], side_by_side: bool = False) -> StringCommand:
        """side_by_side: every fact's command started at once, each one's output kept in a private
        (0700) directory until all have ended, then printed in order (checks that each wait on the proxy)."""
        bits: list = []
        if not side_by_side:
            for index, (cls, kwargs) in enumerate(facts):
                bits += [
                    f"echo '{MARK} {index}';",
                    *_command_of(cls(), kwargs),
                    f'</dev/null 2>/dev/null; echo "{MARK} {index} $?";',
                ]
            return StringCommand(*bits, "true")
        bits += ['facts="$(mktemp -d)" || exit 0;']
        for index, (cls, kwargs) in enumerate(facts):
            bits += [
                "{",
                *_command_of(cls(), kwargs),
                f'</dev/null >"$facts/{index}" 2>/dev/null; echo $? >"$facts/{index}.status"; }} &',
            ]
        bits += ["wait;"]
        for index in range(len(facts)):
            bits += [
                f'echo \'{MARK} {index}\'; cat "$facts/{index}"; echo "{MARK} {index} $(cat "$facts/{index}.status")";'
            ]
        return StringCommand(*bits, 'rm -rf "$facts"; true')

    def process(self, output: list[str]) -> dict[int, tuple[int, list[str]]]:
        found: dict[int, tuple[int, list[str]]] = {}
        lines: list[str] = []
        for line in output:
            if line.startswith(MARK):
                words = line.split()
                if len(words) == 2:
                    lines = []
                elif len(words) == 3:
                    found[int(words[1])] = (int(words[2]), lines)
                continue
            lines.append(line)
        return found


def _parsed(cls: type[FactBase], kwargs: dict[str, Any], status: int, lines: list[str]) -> tuple[bool, Any]:
    """(whether the fact's value is known, the value), as pyinfra's get_fact would make it."""
    fact = cls()
    fact.command(**kwargs)  # some of pyinfra's facts keep their arguments for process() (the hash facts' path)
    if status != 0:
        return False, None
    if not lines or lines == [NO_COMMAND]:  # no output, or the program it needs is not installed
        return True, fact.default()
    try:
        return True, fact.process(lines)
    except Exception:  # the class's own error, reported when it is read on its own
        return False, None


@dataclass
class _HostCache:
    """One host's listed facts and what was read of them, for one run."""

    listed: dict[tuple, Wanted] = field(default_factory=dict)  # the runbook's list, in its order
    served: dict[tuple, Any] = field(default_factory=dict)  # the values read at `read_at`
    read_at: tuple[int, int] = (0, 0)
    asked: set[tuple] = field(default_factory=set)  # the listed facts and checks a stage has asked for
    checks: dict[tuple, Wanted] = field(default_factory=dict)  # read side by side, see read_at_once
    checked: dict[tuple, Any] = field(default_factory=dict)  # their values, each served once
    commands: int = 0  # commands and uploads run on the host while it executes, fact reads apart
    reading: int = 0  # > 0 while a fact is being read


def _cache(host: Host) -> _HostCache:
    return run_value(host.state, ("fact cache", host.name), _HostCache)


def executed_operations(state, host: Host) -> int:
    """How many operations of this run have run a command on the host, succeeded or not (an attempt
    whose errors are ignored, as an upgrade's, may have changed half)."""
    if state.current_stage != StateStage.Execute:
        return 0
    return sum(
        1
        for data in state.ops.get(host, {}).values()
        if data.operation_meta.is_complete() and data.operation_meta.executed
    )


def changes(host: Host) -> tuple[int, int]:
    """What has run on the host that may have changed it: (commands and uploads outside fact reads,
    operations that ran a command). A callback's own commands count the moment they run."""
    return _cache(host).commands, executed_operations(host.state, host)


def the_host() -> Host:
    """The Host object itself, also when given pyinfra's context proxy for it."""
    found = current_host
    return found._get_module() if hasattr(found, "_get_module") else found


def read_at_once(facts: Iterable[Wanted], host: Host | None = None, checks: Iterable[Wanted] = ()) -> None:
    """Read `facts` on `host` (the current host by default) in one command, and serve them to its
    get_fact for the rest of the run while nothing has changed on it.

    `checks`: what the run's last stages check live through the proxy (verification, the keys), in
    the order they ask. Not read now: in a run that has changed nothing on the host when the first of
    them is asked for, it is read together with the others, side by side, and each is served once
    (asked again, it is checked again); once anything has changed, each is read as asked."""
    host = host or the_host()
    cache = _cache(host)
    for cls, kwargs in facts:
        if batchable(cls):
            cache.listed.setdefault(fact_key(cls, kwargs), (cls, kwargs))
    for cls, kwargs in checks:
        if batchable(cls):
            cache.checks.setdefault(fact_key(cls, kwargs), (cls, kwargs))
    if not (cache.listed or cache.checks):
        return
    _watching(host)
    if cache.listed:
        _read(host, cache, list(cache.listed))


def _read(host: Host, cache: _HostCache, keys: list[tuple]) -> None:
    """The listed facts `keys`, as the host is now; the ones read before are no longer served."""
    cache.served, cache.read_at = {}, changes(host)  # a failed read leaves nothing stale served
    cache.served = _batch(host, cache, [cache.listed[key] for key in keys], keys)


def _batch(host: Host, cache: _HostCache, order: list[Wanted], keys: list[tuple], side_by_side: bool = False) -> dict:
    """{key: value} of the facts in `order` read in one command, those whose value is known."""
    cache.reading += 1
    try:
        results = Host.get_fact(host, FactBatch, facts=tuple(order), side_by_side=side_by_side) or {}
    finally:
        cache.reading -= 1
    values = {}
    for index, (key, (cls, kwargs)) in enumerate(zip(keys, order)):
        known, value = _parsed(cls, kwargs, *results.get(index, (1, [])))
        if known:
            values[key] = value
    return values


def read_everywhere(facts: dict[Host, tuple[list[Wanted], list[Wanted]]]) -> None:
    """read_at_once on every host at once ({host: (facts, checks)}): pyinfra runs a deploy file host
    after host while it plans, so each host's one read, made as it is planned, would add up with the
    hosts; read side by side (as pyinfra's own get_facts does), N gateways cost about what one does.
    A host whose read fails is left to its stages' own reads, which report the failure as pyinfra does."""

    def read(host: Host, wanted: list[Wanted], checks: list[Wanted]) -> None:
        with ctx_host.use(host):
            try:
                read_at_once(wanted, host, checks)
            except Exception:  # noqa: BLE001 (reported by the stages' own reads of the same facts)
                pass

    greenlets = [gevent.spawn(read, host, wanted, checks) for host, (wanted, checks) in facts.items()]
    gevent.joinall(greenlets)


def _watching(host: Host) -> None:
    """This host object (this run's State only) serving the cache and counting what may change it."""
    if "get_fact" in vars(host):
        return
    cache = _cache(host)

    def get_fact(cls, *args, **kwargs):
        key = None
        if (
            (cache.listed or cache.checks)
            and not args
            and not any(name.startswith("_") for name in kwargs)
            and batchable(cls)
        ):
            try:
                key = fact_key(cls, kwargs)
            except TypeError:
                pass
        if key in cache.checks:
            return checked(key, cls, kwargs)
        if key not in cache.listed:
            return _reading(cache, Host.get_fact, host, cls, *args, **kwargs)
        if cache.read_at != changes(host):
            try:  # this fact and those still to be asked for, as the host is now
                _read(host, cache, [key, *(k for k in cache.listed if k not in cache.asked and k != key)])
            except Exception:  # noqa: BLE001 (the fact's own read below reports it)
                pass
        cache.asked.add(key)
        if key in cache.served:
            return cache.served[key]
        return _reading(cache, Host.get_fact, host, cls, *args, **kwargs)

    def checked(key, cls, kwargs):
        unchanged = changes(host) == (0, 0)
        if unchanged and key not in cache.asked and key not in cache.checked:
            keys = [key, *(k for k in cache.checks if k not in cache.asked and k != key)]
            try:
                cache.checked = _batch(host, cache, [cache.checks[k] for k in keys], keys, side_by_side=True)
            except Exception:  # noqa: BLE001 (the fact's own read below reports it)
                cache.checked = {}
        cache.asked.add(key)
        if unchanged and key in cache.checked:
            return cache.checked.pop(key)
        return _reading(cache, Host.get_fact, host, cls, **kwargs)

    def counted(method):
        def run(*args, **kwargs):
            if not cache.reading and host.state.current_stage == StateStage.Execute:
                cache.commands += 1
            return method(host, *args, **kwargs)

        return run

    # On this host object only, in front of Host's methods (setattr, as mypy refuses an assignment to a method).
    setattr(host, "get_fact", get_fact)
    setattr(host, "run_shell_command", counted(Host.run_shell_command))
    setattr(host, "put_file", counted(Host.put_file))


def _reading(cache: _HostCache, read, *args, **kwargs):
    cache.reading += 1
    try:
        return read(*args, **kwargs)
    finally:
        cache.reading -= 1


# What pyinfra's own operations read on a host where they have nothing to do (pyinfra 3.10's
# operations/files.py and systemd.py), for the runbooks' lists.
def directory_reads(path: str) -> list[Wanted]:
    """files.directory"""
    return [(Directory, {"path": path})]


def put_reads(dest: str) -> list[Wanted]:
    """files.put: the file, its directory, its SHA-1 (compared with the local file's)."""
    return [(File, {"path": dest}), (Directory, {"path": posixpath.dirname(dest)}), (Sha1File, {"path": dest})]


def absent_reads(path: str) -> list[Wanted]:
    """files.file(present=False)"""
    return [(File, {"path": path})]


def service_reads(service: str) -> list[Wanted]:
    """systemd.service"""
    return [(SystemdStatus, {"services": [service]}), (SystemdEnabled, {"services": [service]})]
