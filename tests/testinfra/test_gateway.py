"""What a healthy gateway looks like from the outside: run with --hosts against real hosts."""

import json

from tasks.gateway.verify import ContainerChecks, assess, container_spec, route_checks

FILES = {".env": 0o600, "docker-compose.yml": 0o644, "litellm-config.yaml": 0o644}


def test_docker_is_running_and_enabled(host):
    docker = host.service("docker")
    assert docker.is_running, "docker is not running — fix: systemctl start docker"
    assert docker.is_enabled, "docker does not start at boot — fix: systemctl enable docker"


def test_project_files_are_private(host, settings):
    for name, mode in FILES.items():
        f = host.file(f"{settings.install_dir}/{name}")
        assert f.exists, f"{f.path} is missing — fix: re-run the deploy"
        assert (f.user, f.mode) == ("root", mode), f"{f.path}: owner {f.user}, mode {oct(f.mode)}; expected root, {oct(mode)}"


def test_every_service_is_running_and_healthy(host, settings):
    output = host.check_output(f"docker compose --project-directory {settings.install_dir} ps --format json")
    services = {s["Service"]: (s["State"], s["Health"]) for s in map(json.loads, filter(None, output.splitlines()))}
    expected = {"litellm"} | ({"db"} if settings.database_mode == "bundled" else set())
    assert set(services) >= expected, f"services running: {sorted(services)}; expected {sorted(expected)}"
    unhealthy = {s: v for s, v in services.items() if s in expected and v != ("running", "healthy")}
    assert not unhealthy, f"not running and healthy: {unhealthy}"


def test_postgres_listens_on_no_public_address(host, settings):
    if settings.database_mode != "bundled":
        return
    public = [s for s in host.socket.get_listening_sockets() if s.endswith(":5432")
              and not s.startswith(("tcp://127.", "tcp://::1", "tcp6://::1"))]
    assert not public, f"Postgres is reachable on {public} — fix: postgres_publish_port = 0 (or it binds 127.0.0.1 only)"


def test_gateway_and_its_routes_answer_from_inside_the_proxy_container(host, settings):
    """The deploy's own verification: the proxy, then every Ollama node and upstream it routes to,
    from inside its container (failing routes re-checked from here, to tell a dead node from a
    misroute), then a chat through the gateway per smoke-tested model. Each check is retried up to the
    inventory's verify_timeout."""
    command = ContainerChecks().command(settings.compose_project, settings.install_dir, container_spec(settings))
    inside = json.loads(host.check_output(command).splitlines()[-1])
    _, failures = assess(route_checks(settings), inside)
    assert not failures, f"{len(failures)} problem(s) on {host.backend.hostname}:\n" + "\n".join(failures)
