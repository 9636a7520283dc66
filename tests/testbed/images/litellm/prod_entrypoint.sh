#!/bin/sh
# Same contract as the official image's docker/prod_entrypoint.sh: the container's command is
# the argument list of `litellm`, e.g. ["--config", "/app/config.yaml", "--port", "4000"].
set -e
exec litellm "$@"
