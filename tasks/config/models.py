"""The models a gateway routes: parsed from group data, checked, and ready for the config template."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from tasks.config import reserved
from tasks.config.filters import url_host

# Provider prefixes this package knows how to route and verify. LiteLLM knows many more; add a
# prefix here once its config shape is tested, rather than letting a typo reach the proxy.
PROVIDERS = {
    "openai": "OpenAI, or any OpenAI-compatible server such as another LiteLLM (with api_base)",
    "anthropic": "Anthropic",
    "ollama": "Ollama /api/generate",
    "ollama_chat": "Ollama /api/chat",
    "azure": "Azure OpenAI",
    "gemini": "Google AI Studio",
    "mistral": "Mistral",
    "groq": "Groq",
    "openrouter": "OpenRouter",
    "hosted_vllm": "vLLM (OpenAI-compatible)",
}
OLLAMA_PROVIDERS = {"ollama", "ollama_chat"}
OLLAMA_PORT = 11434  # Ollama's own default; a node given by address listens here unless it says "port"
LOCAL_OLLAMA = "local"
# Ollama on the gateway host itself, as the proxy container sees it (compose adds the name).
LOCAL_OLLAMA_URL = f"http://host.docker.internal:{OLLAMA_PORT}"
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
MODEL_FIELDS = {"name", "model", "api_key_env", "api_base", "ollama_node", "smoke_test"}
NODE_FIELDS = {"url", "address", "port"}
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$")
NODE_EXAMPLE = {"smarthome": {"address": "192.168.1.20"}}


@dataclass(frozen=True)
class Model:
    name: str
    model: str
    provider: str
    api_base: str | None = None
    api_key_env: str | None = None
    ollama_node: str | None = None
    smoke_test: bool = False

    @property
    def is_ollama(self) -> bool:
        return self.provider in OLLAMA_PROVIDERS

    @property
    def upstream_model(self) -> str:
        """The name the upstream server knows this model by (after the provider prefix)."""
        return self.model.split("/", 1)[1]


def is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def parse_ollama_nodes(raw: object, problems: list[str]) -> dict[str, str]:
    """A gateway's `ollama_nodes` data -> {node name: base URL}.

    A node is data, not a pyinfra host: only the gateway's proxy (and verify, from inside it) ever
    talks to it, over HTTP, so an Ollama box nobody can log into (an appliance) works as any other.
    """
    if not isinstance(raw, dict):
        problems.append(
            f"ollama_nodes: must be a dict of node name -> {{'address': ...}} or {{'url': ...}} "
            f"— fix: ollama_nodes = {NODE_EXAMPLE!r}"
        )
        return {}
    urls = {}
    for name, entry in raw.items():
        field = f"ollama_nodes[{name!r}]"
        if not isinstance(name, str) or not NODE_NAME.match(name) or name == LOCAL_OLLAMA:
            problems.append(
                f"{field}: a node name is letters, digits, '.', '_' and '-', and not {LOCAL_OLLAMA!r} "
                "(which means Ollama on the gateway host itself)"
            )
            continue
        url = _node_url(field, entry, problems)
        if url is not None:
            urls[name] = url
    return urls


def _node_url(field: str, entry: object, problems: list[str]) -> str | None:
    if not isinstance(entry, dict):
        fix = {"url": entry} if is_http_url(entry) else NODE_EXAMPLE["smarthome"]
        problems.append(f"{field}: must be a dict — fix: {fix!r}")
        return None
    unknown = sorted(set(entry) - NODE_FIELDS, key=str)
    if unknown:
        problems.append(f"{field}: unknown key(s) {', '.join(map(str, unknown))} — fix: use url, or address (and port)")
        return None
    url, address, port = entry.get("url"), entry.get("address"), entry.get("port", OLLAMA_PORT)
    if (url is None) == (address is None):
        problems.append(
            f"{field}: give either url (http://host:{OLLAMA_PORT}) or address (host name or IP, "
            f"port {OLLAMA_PORT} unless port says otherwise), exactly one of them"
        )
        return None
    if url is not None:
        parts = urlsplit(url) if isinstance(url, str) else None
        if not is_http_url(url) or parts is None or parts.query or parts.fragment:
            problems.append(f"{field}.url: {url!r} is not a base URL — fix: http://host:{OLLAMA_PORT}")
            return None
        if "port" in entry:
            problems.append(
                f"{field}.port: the url already holds the port — fix: drop port, or give address instead of url"
            )
            return None
        return url.rstrip("/")
    host = _url_host(address)
    if host is None:
        problems.append(
            f"{field}.address: {address!r} must be a host name or IP address (no scheme, no port) "
            "— fix: give the port as port, or the whole URL as url"
        )
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        problems.append(f"{field}.port: {port!r} is not a port (1-65535; Ollama's own is {OLLAMA_PORT})")
        return None
    return f"http://{host}:{port}"


def _url_host(address: object) -> str | None:
    """The address as a URL's host part (an IPv6 address in brackets), or None when it is neither a
    host name nor an IP address."""
    if not isinstance(address, str):
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address if HOST_NAME.match(address) and len(address) <= 253 else None
    return url_host(str(ip))


def parse_models(raw: object, ollama_nodes: dict[str, str], problems: list[str]) -> tuple[Model, ...]:
    """Turn the `models` group-data list into Models. Problems are appended, never raised, so the
    user sees every mistake of every host in one run."""
    if not isinstance(raw, (list, tuple)) or not raw:
        problems.append("models: must be a non-empty list of model dicts — fix: see group_data/litellm_hosts.py")
        return ()
    models: list[Model] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw):
        field = f"models[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{field}: must be a dict with at least 'name' and 'model'")
            continue
        model = _parse_model(field, entry, ollama_nodes, problems)
        if model is None:
            continue
        if model.name in seen:
            problems.append(f"{field}.name: {model.name!r} is used twice — fix: give each model a unique name")
        seen.add(model.name)
        models.append(model)
    return tuple(models)


def _parse_model(field: str, entry: dict, ollama_nodes: dict[str, str], problems: list[str]) -> Model | None:
    before = len(problems)
    unknown = sorted(set(entry) - MODEL_FIELDS)
    if unknown:
        problems.append(
            f"{field}: unknown key(s) {', '.join(unknown)} — fix: use only {', '.join(sorted(MODEL_FIELDS))}"
        )
    name, model = entry.get("name"), entry.get("model")
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        problems.append(f"{field}.name: must be a non-empty string without surrounding spaces")
    provider = model.split("/", 1)[0] if isinstance(model, str) and "/" in model else None
    if provider is None or not isinstance(model, str) or not model.split("/", 1)[1]:
        problems.append(f"{field}.model: {model!r} must be '<provider>/<model>', e.g. 'openai/gpt-4o'")
    elif provider not in PROVIDERS:
        problems.append(
            f"{field}.model: unknown provider prefix {provider!r} — fix: use one of {', '.join(sorted(PROVIDERS))}"
        )
    api_key_env = entry.get("api_key_env")
    if api_key_env is not None and (not isinstance(api_key_env, str) or not ENV_NAME.match(api_key_env)):
        problems.append(
            f"{field}.api_key_env: {api_key_env!r} must name a secrets-file entry like OPENAI_API_KEY "
            "(the name, never the key itself)"
        )
    elif problem := reserved.entry_problem(f"{field}.api_key_env", api_key_env, "OPENAI_API_KEY"):
        problems.append(problem)
    api_base = entry.get("api_base")
    if api_base is not None and not is_http_url(api_base):
        problems.append(f"{field}.api_base: {api_base!r} is not a URL — fix: use http(s)://host:port")
    smoke_test = entry.get("smoke_test")
    if smoke_test is not None and not isinstance(smoke_test, bool):
        problems.append(f"{field}.smoke_test: must be true or false")

    node = entry.get("ollama_node")
    if provider in OLLAMA_PROVIDERS:
        api_base = _ollama_base(field, node, api_base, ollama_nodes, problems)
    elif node is not None and provider in PROVIDERS:
        problems.append(f"{field}.ollama_node: only ollama/ollama_chat models run on an Ollama node")
    if len(problems) > before:
        return None
    if smoke_test is None:
        # Free, local endpoints are exercised by default; paid providers only when asked.
        smoke_test = provider in OLLAMA_PROVIDERS or api_base is not None
    # No problem found: name is a string, and provider was taken from model, a string.
    assert isinstance(name, str) and isinstance(model, str) and provider is not None
    return Model(
        name=name,
        model=model,
        provider=provider,
        api_base=api_base,
        api_key_env=api_key_env,
        ollama_node=node,
        smoke_test=smoke_test,
    )


def _ollama_base(field, node, api_base, ollama_nodes, problems) -> str | None:
    if node is not None and api_base is not None:
        problems.append(f"{field}: give either ollama_node or api_base, not both")
        return None
    if node is None and api_base is None:
        problems.append(
            f"{field}.ollama_node: an Ollama model needs ollama_node (a node of ollama_nodes, or 'local') "
            "or api_base (the node's URL)"
        )
        return None
    if node is None:
        return api_base
    if node == LOCAL_OLLAMA:
        return LOCAL_OLLAMA_URL
    if node in ollama_nodes:
        return ollama_nodes[node]
    known = ", ".join(sorted(ollama_nodes)) or "none declared"
    example = {node: {"address": "<its IP or host name>"}}
    problems.append(
        f"{field}.ollama_node: {node!r} is not in ollama_nodes ({known}) — fix: declare it in the gateways' data "
        f"(group_data/litellm_hosts.py), e.g. ollama_nodes = {example!r}, use 'local', or give api_base: "
        f"http://host:{OLLAMA_PORT}"
    )
    return None
