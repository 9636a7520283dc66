"""Ollama nodes are data of the gateways (issue 15, defect 6): a URL or an address, never a pyinfra
host, so a node nobody can log into (an appliance) works; the old inventory group is refused with the
data to paste instead, before pyinfra connects to anything."""

import ast
import re

import pytest

from tasks.config.models import LOCAL_OLLAMA_URL, OLLAMA_PORT, parse_ollama_nodes
from tasks.config.settings import ConfigError, HostInput, refuse_node_group
from tasks.gateway.verify import route_checks
from tests.unit.conftest import UPSTREAM_KEY, group_data, lookup
from tests.unit.test_cli_refuses_bad_input import run_pyinfra


def ollama_model(name: str, node: str) -> dict:
    return {"name": name, "model": "ollama_chat/llama3.2:3b", "ollama_node": node}


def test_nodes_declared_as_gateway_data_route_the_models(build):
    nodes = {
        "smarthome": {"address": "192.0.2.20"},
        "den": {"address": "fd00::20", "port": 11500},
        "attic": {"url": "https://attic.internal:8443/"},
    }
    models = [ollama_model(f"on-{name}", name) for name in (*nodes, "local")]
    settings = build(ollama_nodes=nodes, models=models)
    assert {m.name: m.api_base for m in settings.models} == {
        "on-smarthome": f"http://192.0.2.20:{OLLAMA_PORT}",
        "on-den": "http://[fd00::20]:11500",
        "on-attic": "https://attic.internal:8443",
        "on-local": LOCAL_OLLAMA_URL,
    }
    assert dict(settings.ollama_nodes) == {
        "smarthome": "http://192.0.2.20:11434", "den": "http://[fd00::20]:11500", "attic": "https://attic.internal:8443"}
    # verify names each node as the data does
    assert route_checks(settings)[0]["name"] == "ollama node smarthome at http://192.0.2.20:11434"


def test_each_gateway_routes_to_the_nodes_of_its_own_data(build):
    gateways = {
        "gw1": {"models": [ollama_model("m", "box")], "ollama_nodes": {"box": {"address": "192.0.2.21"}}},
        "gw2": {"models": [ollama_model("m", "box")], "ollama_nodes": {"box": {"address": "192.0.2.22"}}},
    }
    settings = build(hosts=gateways)
    assert [settings[g].models[0].api_base for g in gateways] == ["http://192.0.2.21:11434", "http://192.0.2.22:11434"]


def test_shipped_group_data_declares_the_node_its_example_model_runs_on(build, secrets_file):
    keys = {"UPSTREAM_LITELLM_API_KEY": UPSTREAM_KEY, "OPENAI_API_KEY": "sk-o", "ANTHROPIC_API_KEY": "sk-a"}
    secrets_file.write_text("".join(f'{name}="{value}"\n' for name, value in keys.items()))
    shipped = group_data("litellm_hosts")
    settings = build(models=shipped["models"], ollama_nodes=shipped["ollama_nodes"])
    assert {m.name: m.api_base for m in settings.models if m.is_ollama} == {
        "llama-local": LOCAL_OLLAMA_URL, "llama-smarthome": "http://smarthome.internal:11434"}


BAD_NODES = [
    ("ollama_nodes:", ["smarthome"]),
    ("ollama_nodes['smarthome']: must be a dict — fix: {'url': 'http://192.0.2.20:11434'}",
     {"smarthome": "http://192.0.2.20:11434"}),
    ("ollama_nodes['smarthome']: give either url", {"smarthome": {}}),
    ("ollama_nodes['smarthome']: give either url", {"smarthome": {"url": "http://192.0.2.20:11434", "address": "x"}}),
    ("ollama_nodes['smarthome'].url", {"smarthome": {"url": "192.0.2.20:11434"}}),
    ("ollama_nodes['smarthome'].url", {"smarthome": {"url": "http://192.0.2.20:11434/?x=1"}}),
    ("ollama_nodes['smarthome'].address", {"smarthome": {"address": "http://192.0.2.20"}}),
    ("ollama_nodes['smarthome'].address", {"smarthome": {"address": "192.0.2.20:11434"}}),
    ("ollama_nodes['smarthome'].port", {"smarthome": {"address": "192.0.2.20", "port": "11434"}}),
    ("ollama_nodes['smarthome'].port", {"smarthome": {"address": "192.0.2.20", "port": 0}}),
    ("ollama_nodes['smarthome'].port", {"smarthome": {"url": "http://192.0.2.20:11434", "port": 11434}}),
    ("ollama_nodes['smarthome']: unknown key(s) ssh_hostname", {"smarthome": {"ssh_hostname": "192.0.2.20"}}),
    ("ollama_nodes['local']", {"local": {"address": "192.0.2.20"}}),
    ("ollama_nodes['my node']", {"my node": {"address": "192.0.2.20"}}),
]


@pytest.mark.parametrize("needle,nodes", BAD_NODES, ids=[f"bad-node-{i}" for i in range(len(BAD_NODES))])
def test_bad_node_data_names_the_host_the_field_and_the_fix(build, needle, nodes):
    with pytest.raises(ConfigError) as error:
        build(ollama_nodes=nodes)
    assert any(p.startswith("host gw1: ") and needle in p for p in error.value.problems), error.value.problems
    assert "nothing was changed on any host" in str(error.value)


def test_a_model_on_an_undeclared_node_names_the_field_and_the_fix(build):
    with pytest.raises(ConfigError) as error:
        build(models=[ollama_model("m", "kitchen")])
    [problem] = error.value.problems
    assert problem.startswith("host gw1: models[0].ollama_node: 'kitchen' is not in ollama_nodes (smarthome)")
    assert "group_data/litellm_hosts.py" in problem
    assert "ollama_nodes = {'kitchen': {'address': '<its IP or host name>'}}" in problem


def old_format_problem(nodes: dict[str, dict]) -> str:
    with pytest.raises(ConfigError) as error:
        refuse_node_group([HostInput(name, lookup(data)) for name, data in nodes.items()])
    [problem] = error.value.problems
    return problem


def test_old_node_group_is_refused_with_the_data_to_paste():
    problem = old_format_problem({
        "smarthome": {"ssh_hostname": "192.0.2.20"},
        "den": {"ssh_hostname": "192.0.2.21", "ollama_port": 11500},
        "attic": {"ssh_hostname": "192.0.2.22", "ollama_url": "https://attic.internal:8443"},
        "kitchen": {},
    })
    assert problem.startswith("inventory: the ollama_nodes group lists smarthome, den, attic, kitchen as hosts")
    assert "need no SSH" in problem and "delete the ollama_nodes group" in problem
    pasted = ast.literal_eval(re.search(r"ollama_nodes = (\{.*\})$", problem).group(1))
    # The declaration routes exactly where the old host data did.
    problems: list[str] = []
    assert parse_ollama_nodes(pasted, problems) == {
        "smarthome": "http://192.0.2.20:11434", "den": "http://192.0.2.21:11500",
        "attic": "https://attic.internal:8443", "kitchen": "http://kitchen:11434"}
    assert problems == []


def test_no_node_group_is_no_problem():
    refuse_node_group([])


def test_cli_refuses_the_old_node_group_before_connecting_to_any_host(tmp_path):
    # If the refusal failed, pyinfra would try SSH to a closed port on loopback, nothing else.
    install_dir = tmp_path / "opt-litellm"
    result = run_pyinfra(tmp_path, f"""
litellm_hosts = [("@local", {{"install_dir": "{install_dir}",
                   "models": [{{"name": "m", "model": "ollama_chat/llama3", "ollama_node": "smarthome"}}]}})]
ollama_nodes = [("smarthome", {{"ssh_hostname": "127.0.0.1", "ssh_port": 9, "ollama_url": "http://127.0.0.1:9"}})]
""")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "the ollama_nodes group lists smarthome as hosts" in output
    assert "ollama_nodes = {'smarthome': {'url': 'http://127.0.0.1:9'}}" in output
    assert "nothing was changed on any host" in output
    assert "Loading inventory" in output and "Connecting to hosts" not in output
    assert not install_dir.exists() and not (tmp_path / "secrets.env").exists()
