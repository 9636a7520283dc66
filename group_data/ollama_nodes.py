# Ollama nodes are checked (reachable, models present), never provisioned.
# Port Ollama listens on; the node's URL is http://<ssh_hostname or name>:<ollama_port> unless
# the host data sets ollama_url.
ollama_port = 11434
