# Ollama servers the gateways route to, by the name models give as ollama_node. They are data, not
# hosts: never logged into (no SSH, so an appliance works), only checked by verify from inside each
# gateway's proxy container. Each is {"address": host name or IP} (Ollama's port 11434; "port": N
# for another) or {"url": "http://host:port"} (https, a reverse proxy, ...).
ollama_nodes = {
    "smarthome": {"address": "smarthome.internal"},
}
# Gateways: the models each routes. One dict per model:
#   name         the model name clients ask for (unique per gateway)
#   model        LiteLLM's "<provider>/<model>" (providers: see tasks/config/models.py PROVIDERS)
#   api_key_env  name of the secrets-file entry holding its API key (never the key itself)
#   api_base     base URL of the server (OpenAI-compatible upstreams, Ollama given by URL)
#   ollama_node  for ollama/ollama_chat models: a node of ollama_nodes (above), or "local"
#                (Ollama on the gateway host itself, reached as host.docker.internal)
#   smoke_test   send one chat completion during verify (default: on for Ollama and upstreams)
models = [
    {"name": "gpt-4o", "model": "openai/gpt-4o", "api_key_env": "OPENAI_API_KEY"},
    {"name": "claude-sonnet", "model": "anthropic/claude-sonnet-4-5", "api_key_env": "ANTHROPIC_API_KEY"},
    {"name": "llama-local", "model": "ollama_chat/llama3.1:8b", "ollama_node": "local"},
    {"name": "llama-smarthome", "model": "ollama_chat/llama3.2:3b", "ollama_node": "smarthome"},
    # Another LiteLLM instance upstream, addressed as an OpenAI-compatible endpoint (no /v1 suffix).
    {
        "name": "upstream-gpt",
        "model": "openai/gpt-4o",
        "api_base": "http://upstream-litellm.internal:4000",
        "api_key_env": "UPSTREAM_LITELLM_API_KEY",
    },
]
