# Settings for every host. Each may be overridden per group (group_data/<group>.py) or per host
# (host data in `inventory`). Secrets never go here: they live in the secrets file (see README).

# Official LiteLLM image with Prisma engines baked in, pinned (never `latest` / `main-latest`).
litellm_image = "ghcr.io/berriai/litellm-database:main-v1.108.7"
# PostgreSQL image: the bundled database ("bundled"; data in a named volume), and psql/pg_dump for "external".
# Pinned to a version tag ("16" or "16.4"); tags without a version ("latest", "alpine") are refused.
postgres_image = "postgres:16"
# Where the compose project (docker-compose.yml, litellm-config.yaml, .env) lives on the host.
install_dir = "/opt/litellm"
# Docker Compose project name (container and volume names start with it).
compose_project = "litellm"
# Port the proxy is published on.
proxy_port = 4000
# Host address the proxy is published on ("0.0.0.0" = every interface, "127.0.0.1" = behind a local reverse proxy).
proxy_bind = "0.0.0.0"
# Public URL of the gateway, used for UI login redirects (PROXY_BASE_URL); empty = not set.
proxy_base_url = ""
# "bundled" (Postgres in the compose project), "external" (DATABASE_URL in the secrets file) or "none" (stateless).
database_mode = "bundled"
# Database role and name created in the bundled Postgres.
postgres_user = "litellm"
postgres_db = "litellm"
# Publish the bundled Postgres on 127.0.0.1:<port> for local tools; 0 = not published at all.
postgres_publish_port = 0
# How Docker Engine + Compose v2 are installed: "distro" (Debian 13 / Ubuntu 24.04 packages), "docker-repo"
# (Docker's apt repository) or "skip" (already installed by other means).
docker_install = "distro"
# "pull" the pinned images, or "archives": upload the files in image_archives and `docker load` them (air-gapped hosts).
image_source = "pull"
# Controller paths of `docker save` archives (.tar or .tar.gz) holding litellm_image and postgres_image.
image_archives = []
# Admin UI login name; its password is UI_PASSWORD in the secrets file (generated when missing).
ui_username = "admin"
# The admin user the bootstrap creates and links the master key to.
admin_user_id = "admin"
# That admin user's e-mail (optional).
admin_email = ""
# Let admins add models through the UI/API and keep them in the database (needs a database mode).
store_model_in_db = False
# Seconds each health check may take before the host is reported failed.
verify_timeout = 180
# Seconds a started container (Postgres, the proxy) may take to report healthy.
start_timeout = 180
# Where backups are kept on a gateway host (bundled database; directory 0700, files 0600).
backup_dir = "/opt/litellm/backups"
# How many backups to keep, on the host and on the controller (older ones are deleted).
backup_keep = 7
# Controller directory for copies of backups (`<dir>/<host>/<UTC timestamp>.dump`); relative = from where pyinfra runs.
backup_local_dir = "backups"
# Install a systemd timer that takes a backup on the host by itself (bundled database only).
backup_enabled = True
# When the timer runs: a systemd OnCalendar expression ("daily", "hourly", "Mon..Fri 02:30", "*-*-* 03:15:00 UTC"),
# checked on the controller with systemd's grammar before anything changes (tasks/calendar.py).
backup_schedule = "daily"
# Container logs (json-file) are rotated at this size ("10m"; a number then k, m or g) ...
log_max_size = "10m"
# ... and this many files are kept per container.
log_max_file = 3
# TLS in front of the proxy (a Caddy service in the compose project): "off" (the proxy itself on proxy_bind:proxy_port,
# plain HTTP), "self-signed" (a certificate from the deployment's own CA, made once on the controller beside the
# secrets file), "files" (tls_cert_file + tls_key_file from the controller) or "acme" (Caddy obtains one; the host
# must be reachable from the ACME server under tls_names).
tls = "off"
# Controller paths of the certificate (PEM, full chain) and its private key, for tls = "files".
tls_cert_file = ""
tls_key_file = ""
# Contact e-mail given to the ACME server, for tls = "acme".
acme_email = ""
# Names and addresses the certificate is for; [] = the host's inventory name and address.
tls_names = []
# HTTPS port of the TLS front, and the plain HTTP port that only redirects to it.
tls_port = 443
http_port = 80
# The TLS front's and load balancers' image (Caddy), pinned. 2.11.2 or later: earlier releases answer 502
# to a POST retried after a dial error (caddyserver/caddy#7546), so a load balancer could not route a
# request around a gateway that just died.
tls_image = "caddy:2.11.7"
# Valkey (Redis-compatible) image of a redis_hosts host, pinned.
redis_image = "valkey/valkey:8.1"
# Behind load balancers (lb_hosts): how many gateways may be recreated at once while a change rolls.
roll_width = 1
# Worker processes of the proxy: "auto" = one per CPU of the host, fewer when memory is short (about 1 GB
# each), at most 8 (tasks/sizing.py; one worker keeps one CPU busy), or a number.
proxy_workers = "auto"
# Seconds each proxy worker keeps a virtual key (and its team, user and end-user objects) in memory after
# reading it from the database (0-60; LiteLLM's own default is 60). A deleted, blocked, expired or re-budgeted
# key is refused on every worker of every gateway within this much plus one database read; a longer time
# saves database reads (README "Virtual keys and teams, as code": the figures).
key_cache_ttl = 0.5
# For tls = "files": the CA certificate (PEM) that issued tls_cert_file, when clients do not already trust it
# (a company CA); the verification checks the front against it. "" = the system's trusted CAs.
tls_ca_file = ""
# Who may use the gateway (needs a database; converged through the proxy's API after verification, and
# alone with `pyinfra inventory keys.py`). Teams and keys are matched by alias; entries not declared
# here are left alone, and state "absent" deletes one. A key's value is never written here: it is the
# secrets-file entry key_env (default VIRTUAL_KEY_<ALIAS>), generated on the first run, or set by you
# beforehand to import an existing key. Fields (all optional except alias):
#   team: alias, models ("all" or a list of model names), max_budget (USD), budget_duration ("30d"),
#         tpm_limit, rpm_limit, members (user ids), metadata, blocked, state ("present"/"absent")
#   key:  alias, models ("all": every model, or its team's), team, max_budget, budget_duration,
#         tpm_limit, rpm_limit, metadata, duration ("90d" from creation) or expires ("2027-06-30", UTC),
#         blocked, state, key_env
# e.g. virtual_keys = [{"alias": "everything-30d", "models": "all", "max_budget": 50, "budget_duration": "30d"}]
teams = []
virtual_keys = []
