"""Tests of the test bed itself.

- The Ollama API stand-in, in-process on loopback (no Docker): its wire format, and LiteLLM's own
  `ollama_chat/` and `ollama/` providers completing through it (streaming and not).
- `e2e`: a compact run of the real thing: up a host + an Ollama node + an upstream LiteLLM, SSH in
  with the bed's key, systemd running, the stand-in's tags, a chat completion through the upstream
  (LiteLLM's mock_response), the inventory file, a reboot, down. Host names are this test's own
  (tbt-*), so it never touches hosts that someone else has up.
"""

from __future__ import annotations

import ipaddress
import json
import os
import runpy
import threading
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.testbed import ollama_standin
from tests.testbed.bed import DEPLOYED, LABEL, NAME_LABEL, TestbedError, wait_until


def _post(url: str, body: dict, headers: dict | None = None, timeout: float = 30):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    return urllib.request.urlopen(req, timeout=timeout)


# -- the stand-in, in-process --------------------------------------------------------------------
@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    models = tmp_path_factory.mktemp("standin") / "models.json"
    models.write_text(json.dumps(["m1", "qwen2.5:0.5b"]))
    mp = pytest.MonkeyPatch()
    mp.setenv("OLLAMA_STANDIN_MODELS_FILE", str(models))
    mp.delenv("OLLAMA_STANDIN_MODELS", raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), ollama_standin.Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    mp.undo()


def test_standin_wire_format(standin):
    assert urllib.request.urlopen(standin + "/").read() == b"Ollama is running"
    assert "version" in json.load(urllib.request.urlopen(standin + "/api/version"))
    tags = json.load(urllib.request.urlopen(standin + "/api/tags"))
    assert [m["name"] for m in tags["models"]] == ["m1:latest", "qwen2.5:0.5b"]

    chat = json.load(_post(standin + "/api/chat", {"model": "m1", "stream": False,
                                                   "messages": [{"role": "user", "content": "hi"}]}))
    assert chat["done"] is True and chat["message"]["role"] == "assistant"
    assert "m1" in chat["message"]["content"] and chat["eval_count"] > 0

    # Ollama streams by default: NDJSON, the last object has done=true.
    lines = _post(standin + "/api/generate", {"model": "qwen2.5:0.5b", "prompt": "hello"}).read().splitlines()
    objs = [json.loads(x) for x in lines]
    assert [o["done"] for o in objs][-1] is True and not any(o["done"] for o in objs[:-1])
    assert "qwen2.5:0.5b" in "".join(o["response"] for o in objs)

    with pytest.raises(urllib.error.HTTPError) as e:
        _post(standin + "/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert e.value.code == 404 and json.load(e.value) == {"error": "model 'nope' not found"}


def test_litellm_completes_through_standin(standin):
    # LiteLLM's bundled cost map: no fetch from the internet at import (this machine has none).
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm = pytest.importorskip("litellm")
    msgs = [{"role": "user", "content": "ping"}]
    r = litellm.completion(model="ollama_chat/m1", api_base=standin, messages=msgs)
    assert "m1" in r.choices[0].message.content and r.usage.total_tokens > 0
    chunks = litellm.completion(model="ollama_chat/m1", api_base=standin, messages=msgs, stream=True)
    assert "ping" in "".join(c.choices[0].delta.content or "" for c in chunks)
    r = litellm.completion(model="ollama/qwen2.5:0.5b", api_base=standin, messages=msgs)
    assert "qwen2.5:0.5b" in r.choices[0].message.content
    with pytest.raises(litellm.NotFoundError):
        litellm.completion(model="ollama_chat/absent", api_base=standin, messages=msgs)


def test_building_an_unknown_image_is_refused_before_anything_is_built():
    from tests.testbed.images import ImageError, Images

    with pytest.raises(ImageError, match="no local image named upstream"):
        Images(client=object()).build(["host", "upstream"])  # the client is never used


# -- the real bed ----------------------------------------------------------------------------------
NAMES = ["tbt-gw", "tbt-ollama", "tbt-up"]


@pytest.fixture(scope="module")
def bed():
    docker = pytest.importorskip("docker")
    try:
        docker.from_env().ping()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no Docker engine: {e}")
    from tests.testbed import Testbed

    testbed = Testbed()
    testbed.up(["tbt-gw", "tbt-ollama:ollama", "tbt-up:upstream"], ollama_models=["m1"],
               upstream_models=["tb-mock"])
    yield testbed
    testbed.down(NAMES)


@pytest.mark.e2e
def test_bed_end_to_end(bed, tmp_path):
    hosts = {h["name"]: h for h in bed.hosts() if h["name"] in NAMES}
    assert {n: h["role"] for n, h in hosts.items()} == {"tbt-gw": "host", "tbt-ollama": "ollama",
                                                         "tbt-up": "upstream"}

    # A real SSH login as root with the bed's key; systemd is PID 1 and fully up.
    r = bed.ssh("tbt-gw", "systemctl is-system-running; ps -p 1 -o comm=; python3 -c 'print(42)'; sudo -n true")
    assert r.ok, r.output
    assert r.output.split() == ["running", "systemd", "42"]

    # The Ollama stand-in, as the gateway will see it.
    ollama = hosts["tbt-ollama"]
    tags = json.load(urllib.request.urlopen(ollama["api_base"] + "/api/tags", timeout=10))
    assert [m["name"] for m in tags["models"]] == ["m1:latest"]
    assert bed.ssh("tbt-ollama", "systemctl is-active ollama").output.strip() == "active"

    # The upstream LiteLLM: a real chat completion answered by mock_response, and its key matters.
    up = hosts["tbt-up"]
    key = bed.upstream_key("tbt-up")
    assert key.startswith("sk-") and len(key) > 40
    body = {"model": "tb-mock", "messages": [{"role": "user", "content": "hi"}]}
    reply = json.load(_post(up["api_base"] + "/v1/chat/completions", body, {"Authorization": f"Bearer {key}"}))
    assert "tb-mock" in reply["choices"][0]["message"]["content"]
    with pytest.raises(urllib.error.HTTPError) as e:
        _post(up["api_base"] + "/v1/chat/completions", body, {"Authorization": "Bearer sk-wrong"})
    assert e.value.code in (400, 401)

    # The inventory: exactly one group, the gateways with their addresses; the Ollama stand-in is
    # their data (ollama_nodes), not a host pyinfra would log into.
    # names=: this test's hosts only (other suites' hosts may be up on the same bed at the same time).
    path = bed.write_inventory(tmp_path / "inventory.py", extra_data={"tbt-gw": {"role_note": "gw"}}, names=NAMES)
    ns = {k: v for k, v in runpy.run_path(str(path)).items() if not k.startswith("__")}
    assert sorted(k for k, v in ns.items() if isinstance(v, (list, tuple))) == ["litellm_hosts"]
    gw = dict(ns["litellm_hosts"])["tbt-gw"]
    assert gw["ssh_hostname"] == hosts["tbt-gw"]["address"] and gw["role_note"] == "gw"
    assert gw["ssh_user"] == "root" and gw["ssh_key"] == str(bed.key_path)
    assert gw["ollama_nodes"] == {"tbt-ollama": {"url": ollama["api_base"]}}

    # A reboot: systemd and sshd come back.
    bed.restart("tbt-gw")
    assert bed.ssh("tbt-gw", "systemctl is-system-running").output.strip() == "running"


@pytest.mark.e2e
def test_a_stopped_host_keeps_its_address_while_another_host_comes_up(bed):
    """Docker's bridge hands a freed dynamic address to the next container; a suite rebooting its db host
    while another suite starts hosts lost the address that way. Bed addresses are fixed at `up`."""
    before = bed.host("tbt-ollama")["address"]
    c = bed._container("tbt-ollama")
    c.stop(timeout=30)
    try:
        bed.up(["tbt-new"])
        assert bed.host("tbt-new")["address"] != before
    finally:
        c.start()
        bed.down(["tbt-new"])

    def address():
        if not (addr := bed._address(c)):  # why not, named at the deadline (once a CI failure without a cause)
            state = c.attrs["State"]
            raise AssertionError(f"no address; {state['Status']}, exit code {state['ExitCode']}, {state['Error']!r}")
        return addr

    assert wait_until("tbt-ollama running with an address", address, timeout=60) == before


@pytest.mark.e2e
def test_a_host_removed_while_addresses_are_chosen_does_not_fail_up(bed, monkeypatch):
    """Another suite's background `down` removes its hosts without the hosts lock; `up` listing the bed's
    containers just before one is removed must skip it (containers.list raised NotFound: a CI failure).
    The removed host's entry, listed while it existed, is added to every listing `up` takes."""
    bed.up(["tbt-gone"])
    listed = bed.client.api.containers
    gone = [s for s in listed(all=True, filters={"label": f"{LABEL}=1"})
            if (s.get("Labels") or {}).get(NAME_LABEL) == "tbt-gone"]
    assert gone
    bed.down(["tbt-gone"])
    monkeypatch.setattr(bed.client.api, "containers", lambda **kw: listed(**kw) + gone)
    try:
        bed.up(["tbt-after"])
        assert bed.host("tbt-after")["address"]
    finally:
        monkeypatch.undo()
        bed.down(["tbt-after"])


@pytest.mark.e2e
def test_bed_down_removes_everything_of_its_hosts(bed):
    bed.down(["tbt-up"])
    assert "tbt-up" not in [h["name"] for h in bed.hosts()]
    assert not bed.client.containers.list(all=True, filters={"label": "litellm-deploy.testbed.name=tbt-up"})
    assert not bed.upstream_key_file("tbt-up").exists()


@pytest.mark.e2e
def test_bed_down_in_the_background_kills_at_once_and_removes_by_settle(bed):
    bed.up(["tbt-bg"])
    label = {"label": "litellm-deploy.testbed.name=tbt-bg"}
    assert bed.down(["tbt-bg"], background=True) == ["tbt-bg"]
    assert not bed.client.containers.list(filters=label)  # none running, at once
    bed.settle()
    assert "tbt-bg" not in [h["name"] for h in bed.hosts()]
    assert not bed.client.containers.list(all=True, filters=label) and not bed.client.volumes.list(filters=label)


@pytest.mark.e2e
def test_provisioned_hosts_boot_with_docker_the_images_and_the_archives_each_with_its_own_identity(bed):
    """What lets a suite skip the install and the image transfer (tests/testbed/provision.py): the engine
    runs at boot with every deployed image, the archives lie where the deploy uploads them, 0600, with the
    controller's size and time; and two hosts from the seed are two machines (machine id, SSH host keys)."""
    from tests.testbed.provision import ARCHIVE_DIR

    names = ["tbt-prov1", "tbt-prov2"]
    bed.up(names, provisioned=tuple(names))
    try:
        archives = bed.archives(DEPLOYED)
        expected = {path.name: path.stat() for path in archives.values()}
        images = bed.ssh("tbt-prov1", "docker image ls --format '{{.Repository}}:{{.Tag}}'").output.split()
        assert sorted(images) == sorted(bed.image(k) for k in DEPLOYED)
        listing = bed.ssh("tbt-prov1", f"stat -c '%n %a %U %s %Y' {ARCHIVE_DIR}/* {ARCHIVE_DIR}").output.split("\n")
        seen = {Path(line.split()[0]).name: line.split()[1:] for line in listing if line}
        assert seen.pop("images")[:2] == ["700", "root"]
        assert seen == {
            n: ["600", "root", str(st.st_size), str(int(st.st_mtime))] for n, st in expected.items()}
        bridge = bed.ssh("tbt-prov1", "docker network inspect bridge --format '{{(index .IPAM.Config 0).Subnet}}'")
        bed_subnet = bed._network().attrs["IPAM"]["Config"][0]["Subnet"]
        assert not ipaddress.ip_network(bridge.output.strip()).overlaps(ipaddress.ip_network(bed_subnet))
        identity = "cat /etc/machine-id; cat /etc/ssh/ssh_host_ed25519_key.pub"
        assert bed.ssh("tbt-prov1", identity).output != bed.ssh("tbt-prov2", identity).output
    finally:
        bed.down(names, background=True)
    with pytest.raises(TestbedError, match="only plain hosts"):
        bed.up(["tbt-prov-node:ollama"], provisioned=("tbt-prov-node",))


# -- the LiteLLM image ----------------------------------------------------------------------------
IMAGE_FACTS = r"""
cd /app && pwd
cat /app/docker/prod_entrypoint.sh | tail -n 1
test -f litellm/proxy/prisma_migration.py && echo migration-entry-point
python3 -c 'import prisma, litellm; print("prisma", prisma.__version__)'
echo "schema-update $DISABLE_SCHEMA_UPDATE"
"$PRISMA_QUERY_ENGINE_BINARY" --version
"$PRISMA_SCHEMA_ENGINE_BINARY" migrate >/dev/null 2>&1 || echo "schema-engine refuses"
python3 -c 'from prisma.client import BINARY_PATHS; print("client engine", sorted(set(BINARY_PATHS.query_engine.values())))'
"""


@pytest.mark.e2e
def test_litellm_image_keeps_the_official_contract_and_its_query_engine_stand_in():
    """What the deploy relies on (entrypoint, /app, python3, the migration entry point) as in the official
    image, and the DB-backed parts: Prisma Client Python generated against the stand-in engine."""
    docker = pytest.importorskip("docker")
    from tests.testbed import Images

    images = Images(docker.from_env(timeout=600))
    ref = images.litellm()
    config = images.client.images.get(ref).attrs["Config"]
    assert (config["Entrypoint"], config["WorkingDir"]) == (["/app/docker/prod_entrypoint.sh"], "/app")
    out = images.client.containers.run(ref, entrypoint=["sh", "-c", IMAGE_FACTS], remove=True).decode().splitlines()
    assert out == [
        "/app", 'exec litellm "$@"', "migration-entry-point", "prisma 0.15.0", "schema-update true",
        "query-engine 393aa359c9ad4a4bb28630fb5613f9c281cde053", "schema-engine refuses",
        "client engine ['/opt/prisma-standin/query-engine']",
    ], out


@pytest.mark.e2e
def test_caddy_and_valkey_images_keep_the_official_contracts():
    """What the deploy relies on: Caddy's config and data paths, its `caddy validate`, and wget for
    healthchecks; Valkey's server run by a non-root user from /data, and its CLI."""
    docker = pytest.importorskip("docker")
    from tests.testbed import Images

    images = Images(docker.from_env(timeout=600))
    caddy = images.caddy()
    config = images.client.images.get(caddy).attrs["Config"]
    assert config["Cmd"] == ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
    assert {"XDG_CONFIG_HOME=/config", "XDG_DATA_HOME=/data"} <= set(config["Env"])
    checked = images.client.containers.run(
        caddy, ["sh", "-c", "caddy validate --config /etc/caddy/Caddyfile --adapter caddyfile 2>&1 | tail -1; "
                            "command -v wget"], remove=True).decode()
    assert "Valid configuration" in checked and "/usr/bin/wget" in checked, checked

    valkey = images.valkey()
    assert images.client.images.get(valkey).attrs["Config"]["WorkingDir"] == "/data"
    facts = images.client.containers.run(
        valkey, entrypoint=["sh", "-c", "docker-entrypoint.sh sh -c 'id -un' ; "
                                        "command -v valkey-server; command -v valkey-cli"], remove=True).decode().split()
    assert facts == ["root", "/usr/bin/valkey-server", "/usr/bin/valkey-cli"], facts
    server = images.client.containers.run(valkey, ["--requirepass", "test-bed-password"], detach=True)
    try:
        from tests.testbed import wait_until

        def answered():
            code, out = server.exec_run(["valkey-cli", "--no-auth-warning", "-a", "test-bed-password", "ping"])
            return out.strip() == b"PONG"
        wait_until("valkey answers", answered, timeout=30)
        refused = server.exec_run(["valkey-cli", "ping"]).output
        assert b"NOAUTH" in refused, refused
        user = server.exec_run(["sh", "-c", "stat -c %U /proc/1"]).output.strip()
        assert user == b"valkey", user
    finally:
        server.remove(force=True)
