"""Controller state is never disposable (issue 30): what the controller keeps — the secrets file's
entries, the deployment CA, the declared keys' values — is recovered from the hosts or its absence is
refused while the plan is built, before any operation on any host.

Seen on 34d92b4: a deploy from a controller with neither the secrets file nor tls/ recovered the
generated secrets (good), then made a new deployment CA, issued the gateway a leaf from it, restarted
the front and wrote a new value of the declared key into the host's virtual-keys.json before the key
converge refused. Build-level tests, the store's check, then the real CLI on @local.
"""

import json
import subprocess

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all

from tasks import context
from tasks.config import certificates, key_guard
from tasks.config import secrets as S
from tasks.config.settings import ConfigError
from tasks.config.virtual_keys import default_key_env
from tests.unit.test_key_guard import IMAGE, run_cli

KEY = {"alias": "ci", "models": "all"}
LIVE_VALUE = "sk-live-" + "v" * 40


# --- the declared keys' values ------------------------------------------------------------------


def test_a_key_value_missing_from_the_secrets_file_is_taken_from_the_gateway(build, secrets_file):
    settings = build(virtual_keys=[KEY], host_key_values={"gw1": {"ci": LIVE_VALUE}})
    assert settings.secrets[default_key_env("ci")] == LIVE_VALUE
    assert "# VIRTUAL_KEY_CI: virtual key 'ci', taken from gw1:/opt/litellm/virtual-keys.json" in secrets_file.read_text()


def test_a_key_value_is_never_generated_while_a_gateway_that_may_hold_it_is_unread(build, secrets_file):
    before = secrets_file.read_bytes()
    with pytest.raises(ConfigError) as error:
        build(hosts={"gw1": {"virtual_keys": [KEY]}, "gw2": {"virtual_keys": [KEY]}},
              host_envs={"gw1": {}, "gw2": None}, host_key_values={"gw1": {}, "gw2": None})
    assert any(p.startswith("VIRTUAL_KEY_CI: the value of virtual key 'ci' is missing from the secrets file, and gw2 "
                            "could not be read") for p in error.value.problems), error.value.problems
    assert secrets_file.read_bytes() == before


def test_gateways_holding_different_values_are_refused_by_fingerprint(build):
    other = "sk-other-" + "o" * 40
    with pytest.raises(ConfigError) as error:
        build(hosts={"gw1": {"virtual_keys": [KEY]}, "gw2": {"virtual_keys": [KEY]}},
              host_key_values={"gw1": {"ci": LIVE_VALUE}, "gw2": {"ci": other}})
    text = str(error.value)
    assert "the gateways disagree" in text and key_guard.fingerprint(other) in text
    assert LIVE_VALUE not in text and other not in text


def test_a_new_deployment_still_gets_a_generated_value(build):
    settings = build(virtual_keys=[KEY], host_key_values={"gw1": {}})
    assert settings.secrets[default_key_env("ci")].startswith("sk-") and settings.secrets[default_key_env("ci")] != LIVE_VALUE


def test_a_read_only_run_takes_the_hosts_value_for_the_run_and_writes_nothing(build, secrets_file):
    live = {name: make() for name, make in S.GENERATED.items()}
    before = secrets_file.read_bytes()
    settings = build(virtual_keys=[KEY], host_envs={"gw1": live}, host_key_values={"gw1": {"ci": LIVE_VALUE}},
                     complete=False)
    assert settings.secrets[default_key_env("ci")] == LIVE_VALUE
    assert secrets_file.read_bytes() == before


# --- the deployment CA --------------------------------------------------------------------------


def test_no_ca_on_the_controller_while_a_host_serves_one_is_refused(tmp_path):
    elsewhere = certificates.leaf_for(["gw1.test"], "gw1", tmp_path / "deployment")
    problems = certificates.served_problems(tmp_path / "new" / "tls", {
        "gw1": ("/opt/litellm/tls/cert.pem", elsewhere.cert_pem), "gw2": ("/opt/litellm/tls/cert.pem", None)})
    assert len(problems) == 1
    assert problems[0].startswith("tls: gw1:/opt/litellm/tls/cert.pem serve(s) a certificate of the deployment CA, "
                                  f"but this controller has no {tmp_path / 'new' / 'tls' / 'ca.crt'}")
    assert "LITELLM_DEPLOY_SECRETS" in problems[0]


def test_another_deployments_ca_on_the_controller_is_refused(tmp_path):
    served = certificates.leaf_for(["gw1.test"], "gw1", tmp_path / "deployment")
    certificates.leaf_for(["gw9.test"], "gw9", tmp_path / "other")
    problems = certificates.served_problems(tmp_path / "other", {"gw1": ("/opt/litellm/tls/cert.pem", served.cert_pem)})
    assert len(problems) == 1 and "this tls/ directory is not the deployment's" in problems[0]


def test_the_deployments_own_ca_and_a_new_deployment_pass(tmp_path):
    served = certificates.leaf_for(["gw1.test"], "gw1", tmp_path / "deployment")
    assert certificates.served_problems(tmp_path / "deployment", {"gw1": ("p", served.cert_pem)}) == []
    assert certificates.served_problems(tmp_path / "empty", {"gw1": ("p", None)}) == []


@pytest.mark.parametrize("one,other", [("ca", None), ("gw:1", "gw_1"), ("GW1", "gw1"), ("CA", None)])
def test_leaf_files_never_collide_with_the_cas_or_each_other(one, other):
    labels = {certificates.label_of(one), *([certificates.label_of(other)] if other else [])}
    assert len(labels) == (2 if other else 1)
    assert not {f"{label}.crt" for label in labels} & {certificates.CA_CERT, certificates.CA_KEY}
    assert all(label == label.lower() or label.split("-")[-1].isalnum() for label in labels)
    assert certificates.label_of(one) != "ca"


def test_a_gateway_named_ca_keeps_the_ca_intact(tmp_path):
    store = certificates.CertificateStore(tmp_path)
    store.leaf("ca", ["ca.test"])
    store.save()
    ca = certificates.load_chain((tmp_path / certificates.CA_CERT).read_bytes())[0]
    assert ca.extensions.get_extension_for_class(certificates.x509.BasicConstraints).value.ca


# --- reading the hosts --------------------------------------------------------------------------


def test_one_read_brings_env_values_and_files_back(tmp_path):
    """Through the real @local connector: .env values, a JSON file and a PEM file without a final newline."""
    install_dir = tmp_path / "opt"
    (install_dir / "tls").mkdir(parents=True)
    (install_dir / ".env").write_text(S.dotenv_line("LITELLM_MASTER_KEY", "sk-m" + "m" * 40).rstrip("\n"))
    (install_dir / "virtual-keys.json").write_text(json.dumps({"ci": LIVE_VALUE}, indent=1) + "\n")
    pem = certificates.leaf_for(["gw1.test"], "gw1", tmp_path / "store").cert_pem.decode().rstrip("\n")
    (install_dir / "tls" / "cert.pem").write_text(pem)
    state = State(Inventory((["@local"], {})), Config())
    connect_all(state)
    try:
        host = state.inventory.get_host("@local")
        paths = (str(install_dir / "virtual-keys.json"), str(install_dir / "tls" / "cert.pem"),
                 str(install_dir / "absent.json"))
        read = context.read_host(host, str(install_dir), ["LITELLM_MASTER_KEY"], paths)
        assert read.env == {"LITELLM_MASTER_KEY": "sk-m" + "m" * 40}
        assert json.loads(read.files[paths[0]]) == {"ci": LIVE_VALUE}
        assert read.files[paths[1]] == pem and read.files[paths[2]] == ""
        # A load balancer has no .env of the package's: only its files are read.
        assert context.read_host(host, None, ["LITELLM_MASTER_KEY"], paths[1:2]) == context.HostRead({}, {paths[1]: pem})
        (install_dir / "tls" / "cert.pem").unlink()
        (install_dir / "tls" / "cert.pem").mkdir()  # cat fails on it, as on a file this user may not read
        assert context.read_host(host, str(install_dir), [], paths) is None
    finally:
        disconnect_all(state)


def test_cli_without_the_deployments_state_refuses_before_any_operation(tmp_path):
    """The issue's run, on @local: no secrets file, no tls/; the host holds the generated secrets, the
    declared key's value and a certificate of the deployment's CA. The plan is refused, naming the CA
    and where it belongs; nothing is written on the controller or the host."""
    deployment = tmp_path / "deployment"
    install_dir = tmp_path / "opt"
    (install_dir / "tls").mkdir(parents=True)
    live = {name: make() for name, make in S.GENERATED.items()}
    (install_dir / ".env").write_text("".join(S.dotenv_line(n, v) for n, v in live.items()))
    (install_dir / "virtual-keys.json").write_text(json.dumps({"ci": LIVE_VALUE}))
    (install_dir / "tls" / "cert.pem").write_bytes(
        certificates.leaf_for(["127.0.0.1"], "@local", deployment / "tls").cert_pem)
    controller = tmp_path / "controller"
    controller.mkdir()
    snapshot = {p: p.read_bytes() for p in install_dir.rglob("*") if p.is_file()}
    result, output = run_cli(controller, f'[("@local", {{**COMMON, "install_dir": "{install_dir}", "tls": '
                                         f'"self-signed", "virtual_keys": [{KEY!r}]}})]')
    assert result.returncode != 0, output
    assert f"but this controller has no {controller / 'tls' / 'ca.crt'}" in output
    assert "nothing was changed on any host" in output
    assert sorted(p.name for p in controller.iterdir()) == ["inventory.py"]  # no secrets file, no tls/
    assert {p: p.read_bytes() for p in install_dir.rglob("*") if p.is_file()} == snapshot
    assert LIVE_VALUE not in output and not any(value in output for value in live.values())


def test_cli_recovers_the_key_value_when_the_ca_is_in_place(tmp_path):
    """With the deployment's tls/ beside a new secrets file, the key's value comes back from the host
    (recorded when operations start: under --dry nothing is written)."""
    install_dir = tmp_path / "opt"
    install_dir.mkdir()
    live = {name: make() for name, make in S.GENERATED.items()}
    (install_dir / ".env").write_text("".join(S.dotenv_line(n, v) for n, v in live.items()))
    (install_dir / "virtual-keys.json").write_text(json.dumps({"ci": LIVE_VALUE}))
    result, output = run_cli(tmp_path, f'[("@local", {{**COMMON, "install_dir": "{install_dir}", '
                                       f'"virtual_keys": [{KEY!r}]}})]')
    assert "VIRTUAL_KEY_CI (virtual key 'ci', taken from @local:" in output, output[-3000:]
    assert LIVE_VALUE not in output
    assert not (tmp_path / "secrets.env").exists()


def test_limit_connects_a_left_out_gateway_to_read_the_keys_value(tmp_path, secrets_file, monkeypatch):
    monkeypatch.setenv("LITELLM_DEPLOY_SECRETS", str(secrets_file))
    install_dir = tmp_path / "opt"
    install_dir.mkdir()
    live = {name: make() for name, make in S.GENERATED.items()}
    (install_dir / ".env").write_text("".join(S.dotenv_line(n, v) for n, v in live.items()))
    (install_dir / "virtual-keys.json").write_text(json.dumps({"ci": LIVE_VALUE}))
    data = {"litellm_image": IMAGE, "install_dir": str(install_dir), "database_mode": "bundled",
            "models": [{"name": "m", "model": "ollama_chat/llama3", "ollama_node": "local"}], "virtual_keys": [KEY]}
    state = State(Inventory((["@local"], {}), litellm_hosts=(["@local"], data)), Config(), initial_limit=[])
    (gateway,) = state.inventory
    settings = context.all_settings(state)["@local"]
    assert settings.secrets[default_key_env("ci")] == LIVE_VALUE
    assert not gateway.connected


@pytest.mark.parametrize("path", ["tls/ca.key", "tls/gw1.key", "deployments/prod/tls/ca.key", "secrets.env"])
def test_private_key_material_beside_a_secrets_file_is_ignored_by_git(path):
    """`git add -A` in the project must never take the deployment CA's key (issue 30)."""
    from tests.unit.conftest import ROOT

    assert subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT).returncode == 0
