import os
from pathlib import Path

import pytest

from tasks.config.settings import HostInput, build_all

# LiteLLM fetches a price list from the internet at import; the tests stay offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "ghcr.io/berriai/litellm-database:main-v1.108.7"
UPSTREAM_KEY = "sk-upstream-" + "u" * 40
OLLAMA_NODES = {"smarthome": {"address": "192.0.2.20"}}


def group_data(name: str) -> dict:
    """The shipped group_data file, as pyinfra would load it."""
    namespace: dict = {}
    exec((ROOT / "group_data" / f"{name}.py").read_text(), namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("_")}


def lookup(data: dict):
    return lambda key, default=None: data.get(key, default)


def example_models() -> list[dict]:
    return [
        {"name": "llama-local", "model": "ollama_chat/llama3.1:8b", "ollama_node": "local"},
        {"name": "llama-smarthome", "model": "ollama_chat/llama3.2:3b", "ollama_node": "smarthome"},
        {"name": "upstream", "model": "openai/upstream-mock", "api_base": "http://192.0.2.30:4000",
         "api_key_env": "UPSTREAM_LITELLM_API_KEY"},
    ]


@pytest.fixture
def secrets_file(tmp_path):
    path = tmp_path / "secrets.env"
    path.write_text(f'UPSTREAM_LITELLM_API_KEY="{UPSTREAM_KEY}"\n')
    path.chmod(0o600)
    return path


@pytest.fixture
def build(secrets_file):
    """build(**host_data) -> Settings of one gateway 'gw1' (shipped defaults underneath)."""

    def _build(hosts=None, host_envs=None, complete=True, host_key_values=None, **overrides):
        """host_envs: what each gateway's .env holds (tasks/config/key_guard.py); default: every
        gateway read, none has a .env (a new deployment)."""
        base = {**group_data("all"), "models": example_models(), "ollama_nodes": OLLAMA_NODES}
        gateways = hosts or {"gw1": overrides}
        inputs = [HostInput(name, lookup({**base, **data})) for name, data in gateways.items()]
        envs = {name: {} for name in gateways} if host_envs is None else host_envs
        result = build_all(inputs, secrets_file, envs, complete=complete, host_key_values=host_key_values)
        return result if hosts else result["gw1"]

    return _build
