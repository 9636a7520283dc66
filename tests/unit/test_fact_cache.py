"""A gateway's host state read in one command (tasks/lib/fact_cache.py, issue 35): the batch's command
and parsing, and the runbook's list of facts (tasks/deploy_gateway.py facts_decided_on) held to what
its stages really read on a converged host, through the deploy plan's harness (test_deploy_plan.py).
That the batch serves a real no-op, and how many commands the no-op sends: tests/e2e/test_db_gateway.py."""

from __future__ import annotations

import hashlib
import os
import subprocess
from datetime import datetime, timedelta

import pytest
from pyinfra.api import FactBase
from pyinfra.api.host import Host
from pyinfra.facts.files import Directory, File, Md5File, Sha256File
from pyinfra.facts.server import TmpDir

from tasks.gateway import tls, verify
from tasks.lib import compose, docker, fact_cache
from tasks.lib.fact_cache import FactBatch, batchable, fact_key
from tests.unit import test_deploy_plan as deploy_plan
from tests.unit.conftest import IMAGE
from tests.unit.test_deploy_plan import archives  # noqa: F401 (a fixture)


def run_batch(facts) -> dict:
    command = FactBatch().command(facts=tuple(facts)).get_raw_value()
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return FactBatch().process(result.stdout.splitlines())


def test_each_fact_of_a_batch_keeps_its_own_output_status_and_parser(tmp_path):
    present = tmp_path / "present"
    present.write_text("x")
    facts = [(File, {"path": str(present)}), (File, {"path": str(tmp_path / "absent")}),
             (docker.ComposeVersion, {}), (Directory, {"path": str(tmp_path)}), (Sha256File, {"path": str(present)})]
    found = run_batch(facts)
    assert sorted(found) == [0, 1, 2, 3, 4] and all(status == 0 for status, _ in found.values())
    known, value = fact_cache._parsed(File, facts[0][1], *found[0])
    assert known and value["size"] == 1
    assert fact_cache._parsed(File, facts[1][1], *found[1]) == (True, None)  # absent: the fact's default
    mode = int(oct(tmp_path.stat().st_mode & 0o777)[2:])
    assert fact_cache._parsed(Directory, facts[3][1], *found[3])[1]["mode"] == mode
    # A fact that keeps its arguments for parsing (pyinfra's hash facts) gets them.
    assert fact_cache._parsed(Sha256File, facts[4][1], *found[4]) == (True, hashlib.sha256(b"x").hexdigest())


def test_a_failed_fact_is_left_to_be_read_on_its_own_and_a_missing_program_gives_the_default():
    class Fails(docker.EngineVersion):
        def command(self) -> str:
            return "echo half; exit 3"

    class NeedsMissing(docker.DockerPackageStates):
        def requires_command(self) -> str:
            return "litellm-deploy-no-such-program"

    found = run_batch([(Fails, {}), (NeedsMissing, {})])
    assert found[0] == (3, ["half"]) and fact_cache._parsed(Fails, {}, *found[0]) == (False, None)
    assert fact_cache._parsed(NeedsMissing, {}, *found[1]) == (True, {})


def test_a_fact_is_one_key_however_it_is_asked_for():
    assert fact_key(File, {"path": "/a"}) == fact_key(File, {"path": "/a"}) != fact_key(File, {"path": "/b"})
    from pyinfra.facts.systemd import SystemdStatus
    assert fact_key(SystemdStatus, {"services": ["docker.service"]}) == \
        fact_key(SystemdStatus, {"user_mode": False, "machine": None, "user_name": None,
                                 "services": ["docker.service"]})


# Read only where the canned host differs from a converged one: files.put hashing on (the canned SHA-1
# is no file's), its temp directory, an archive the canned host holds in another size.
CHANGE_ONLY = (Md5File, Sha256File, TmpDir)
# Read by the verification, which runs its checks only when the deploy executes (not in this harness).
EXECUTE_ONLY = (verify.NewestBackup,)


@pytest.mark.parametrize("extra", [
    {}, {"tls": "self-signed", "virtual_keys": [{"alias": "demo", "models": "all"}]}, {"database_mode": "none"},
    {"docker_install": "distro", "proxy_workers": "auto"}, {"image_source": "pull"}])
def test_the_list_is_what_the_stages_read_on_a_converged_gateway(build, monkeypatch, archives, extra):  # noqa: F811
    extra = {"docker_install": "skip", "image_source": "archives", "image_archives": archives, **extra}
    settings = build(postgres_image=deploy_plan.POSTGRES, **extra)
    local = {os.path.basename(a): os.stat(a).st_size for a in archives}
    later = datetime.now() + timedelta(days=1)

    def file(path, **_):
        return {"mode": 600, "user": "root", "group": "root", "mtime": later,
                "size": local.get(os.path.basename(path), 10)}

    read, listed = [], []
    monkeypatch.setattr(fact_cache, "read_everywhere", lambda facts: [listed.extend(f) for f, _ in facts.values()])
    canned = {File: file, Directory: lambda **_: {"mode": 700, "user": "root", "group": "root"},
              compose.ImageId: lambda image, **_: f"sha256:{image}"}
    real_setattr = monkeypatch.setattr

    def recording(target, name, value, *args):
        if target is Host and name == "get_fact":
            def get_fact(self, cls, *a, **kwargs):
                read.append((cls, kwargs))
                return value(self, cls, *a, **kwargs)
            return real_setattr(target, name, get_fact, *args)
        return real_setattr(target, name, value, *args)

    monkeypatch.setattr = recording
    deploy_plan.plan(settings, monkeypatch, previous=IMAGE, facts=canned)
    listed_keys = {fact_key(cls, kwargs) for cls, kwargs in listed}
    read_keys = {fact_key(cls, kwargs) for cls, kwargs in read
                 if batchable(cls) and not any(name.startswith("_") for name in kwargs)}
    unlisted = [key for key in read_keys - listed_keys if not issubclass(key[0], CHANGE_ONLY)]
    assert unlisted == [], "read by the stages, not in facts_decided_on"
    unread = [key for key in listed_keys - read_keys if not issubclass(key[0], EXECUTE_ONLY)]
    assert unread == [], "in facts_decided_on, read by no stage"


class FakeMeta:
    def __init__(self, commands: int):
        self.executed = commands > 0

    def is_complete(self) -> bool:
        return True


class Word(FactBase):
    """A fact for the rule below: its value is what its command prints."""

    def command(self, word):
        return f"echo {word}"

    def process(self, output):
        return output[0]


def test_served_until_something_changes_then_read_again_with_what_is_still_to_be_asked(monkeypatch):
    """The serving rule, step by step, on a host whose reads are recorded: a batch after a change holds
    the fact asked for and those no stage has asked for yet; a fact's own read is no change."""
    from types import SimpleNamespace

    from pyinfra.api import State
    from pyinfra.api.state import StateStage

    reads, changes_seen = [], []

    def get_fact(self, cls, *a, **kw):
        self.run_shell_command("the fact's command")  # as pyinfra reads a fact: not a change
        if cls is FactBatch:
            names = [arguments["word"] for _, arguments in kw["facts"]]
            reads.append(names)
            return {i: (0, [f"{name}@{len(changes_seen)}"]) for i, name in enumerate(names)}
        reads.append(f"alone {kw['word']}")
        return f"{kw['word']} alone"

    monkeypatch.setattr(Host, "get_fact", get_fact)
    monkeypatch.setattr(Host, "run_shell_command", lambda self, command, **kw: (True, None))
    monkeypatch.setattr(Host, "put_file", lambda self, source, dest, **kw: True)
    state = State()

    class FakeHost(SimpleNamespace):
        __hash__ = object.__hash__

    host = FakeHost(name="gw1", state=state)
    state.ops = {host: {}}
    state.current_stage = StateStage.Prepare
    fact_cache.read_at_once([(Word, {"word": n}) for n in "abcd"], host)
    assert reads == [["a", "b", "c", "d"]]
    host.run_shell_command("while planned: not counted")
    assert host.get_fact(Word, word="a") == "a@0" and len(reads) == 1
    assert host.get_fact(Word, word="z") == "z alone"  # not listed
    assert host.get_fact(Word, word="a", _sudo=True) == "a alone"  # global arguments: read as asked
    state.current_stage = StateStage.Execute
    state.ops[host]["op1"] = SimpleNamespace(operation_meta=FakeMeta(commands=0))
    assert host.get_fact(Word, word="b") == "b@0"
    reads.clear()
    changes_seen.append(host.run_shell_command("a callback's own command"))
    assert host.get_fact(Word, word="c") == "c@1" and reads == [["c", "d"]]  # a and b were asked already
    assert host.get_fact(Word, word="d") == "d@1" and reads == [["c", "d"]]
    assert host.get_fact(Word, word="a") == "a alone"  # asked before the change: read on its own
    reads.clear()
    # An operation that ran a command, even one that failed with its errors ignored (an upgrade's attempt).
    state.ops[host]["op2"] = SimpleNamespace(operation_meta=FakeMeta(commands=1))
    changes_seen.append("op2")
    assert host.get_fact(Word, word="d") == "d@2" and reads == [["d"]]
    reads.clear()
    host.put_file("a file", "/x")  # an upload
    changes_seen.append("upload")
    assert host.get_fact(Word, word="b") == "b@3" and reads == [["b"]]


class Meeting(FactBase):
    """Says `mine` is there, then waits (bounded) for `theirs`: two of them end well only side by side."""

    def command(self, place, mine, theirs):
        return (f"touch {place}/{mine}; i=0; while [ ! -e {place}/{theirs} ] && [ $i -lt 20 ]; do sleep 0.1; "
                f"i=$((i+1)); done; [ -e {place}/{theirs} ] && echo met {mine}")

    def process(self, output):
        return output[0]


def test_side_by_side_the_facts_run_at_once_and_each_keeps_its_own_output_and_status(tmp_path):
    def pair(where):
        where.mkdir()
        return tuple((Meeting, {"place": str(where), "mine": a, "theirs": b}) for a, b in (("a", "b"), ("b", "a")))

    command = FactBatch().command(facts=pair(tmp_path / "side"), side_by_side=True).get_raw_value()
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert FactBatch().process(result.stdout.splitlines()) == {0: (0, ["met a"]), 1: (0, ["met b"])}
    one_after_the_other = run_batch(pair(tmp_path / "serial"))  # the first gives up waiting: it ran alone
    assert one_after_the_other[0][0] != 0 and one_after_the_other[1] == (0, ["met b"])


def test_checks_are_read_side_by_side_when_the_first_is_asked_in_a_run_that_changed_nothing(monkeypatch):
    from types import SimpleNamespace

    from pyinfra.api import State
    from pyinfra.api.state import StateStage

    reads = []

    def get_fact(self, cls, *a, **kw):
        if cls is FactBatch:
            words = [arguments["word"] for _, arguments in kw["facts"]]
            reads.append((words, kw["side_by_side"]))
            return {i: (0, [f"{word} together"]) for i, word in enumerate(words)}
        reads.append(kw["word"])
        return f"{kw['word']} alone"

    monkeypatch.setattr(Host, "get_fact", get_fact)
    monkeypatch.setattr(Host, "run_shell_command", lambda self, command, **kw: (True, None))

    class FakeHost(SimpleNamespace):
        __hash__ = object.__hash__

    def host_with(checks):
        state = State()
        host = FakeHost(name="gw1", state=state)
        state.ops = {host: {}}
        state.current_stage = StateStage.Prepare
        fact_cache.read_at_once([], host, checks=[(Word, {"word": w}) for w in checks])
        state.current_stage = StateStage.Execute
        return host

    host = host_with("xyz")
    assert reads == []  # nothing read while planned
    assert host.get_fact(Word, word="y") == "y together" and reads == [(["y", "x", "z"], True)]
    assert host.get_fact(Word, word="x") == "x together" and host.get_fact(Word, word="z") == "z together"
    assert host.get_fact(Word, word="x") == "x alone"  # asked again: checked again
    reads.clear()
    host = host_with("xyz")
    host.run_shell_command("a change before the checks")
    assert [host.get_fact(Word, word=w) for w in "xyz"] == ["x alone", "y alone", "z alone"]
    assert reads == ["x", "y", "z"]
    reads.clear()
    host = host_with("xyz")
    assert host.get_fact(Word, word="x") == "x together"
    host.run_shell_command("a change between two checks (the keys applied)")
    assert host.get_fact(Word, word="y") == "y alone" and reads == [(["x", "y", "z"], True), "y"]


def test_the_checks_listed_are_the_verification_the_front_and_the_keys_of_the_demo(build):
    from tasks import deploy_gateway, key_converge

    plain = build()
    assert [fact for fact, _ in deploy_gateway.checks_made(plain)] == [verify.ContainerChecks]
    demo = build(tls="self-signed", virtual_keys=[{"alias": "demo", "models": "all"}])
    assert key_converge.key_checks(demo), "the demo's key has a value to check with"
    # Not the key checks: before the keys converge, a key about to change fails them, each retrying until
    # verify_timeout (the virtual-keys suite's changing runs took minutes longer).
    assert [fact for fact, _ in deploy_gateway.checks_made(demo)] == [
        verify.ContainerChecks, tls.HostChecks, key_converge.DeclaredAccess]
