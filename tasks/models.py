"""The models a gateway routes: parsed from group data, checked, and ready for the config template."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

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
LOCAL_OLLAMA = "local"
# Ollama on the gateway host itself, as the proxy container sees it (compose adds the name).
LOCAL_OLLAMA_URL = "http://host.docker.internal:11434"
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
MODEL_FIELDS = {"name", "model", "api_key_env", "api_base", "ollama_node", "smoke_test"}


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
        problems.append(f"{field}: unknown key(s) {', '.join(unknown)} — fix: use only {', '.join(sorted(MODEL_FIELDS))}")
    name, model = entry.get("name"), entry.get("model")
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        problems.append(f"{field}.name: must be a non-empty string without surrounding spaces")
    provider = model.split("/", 1)[0] if isinstance(model, str) and "/" in model else None
    if provider is None or not model.split("/", 1)[1]:
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
            f"{field}.ollama_node: an Ollama model needs ollama_node (a host of ollama_nodes, or 'local') "
            "or api_base (the node's URL)"
        )
        return None
    if node is None:
        return api_base
    if node == LOCAL_OLLAMA:
        return LOCAL_OLLAMA_URL
    if node in ollama_nodes:
        return ollama_nodes[node]
    known = ", ".join(sorted(ollama_nodes)) or "none defined"
    problems.append(
        f"{field}.ollama_node: {node!r} is not in the ollama_nodes group ({known}) — fix: add it to "
        "ollama_nodes in the inventory, use 'local', or give api_base: http://host:11434"
    )
    return None
