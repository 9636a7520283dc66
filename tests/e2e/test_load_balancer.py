"""Gateways behind a load balancer, for real (issue 17, acceptance 2 and 4): three gateways on one
shared PostgreSQL (mode `external`: a container of the bed's Postgres image on the bed's network),
their model routed to the bed's upstream LiteLLM, and one load balancer host running Caddy with a
certificate from a CA made here. Requests go only to the load balancer's bed address, over HTTPS,
checked against that CA.

  1. the rendered Caddyfile passes `caddy validate` in the deploy's Caddy image
  2. fresh converge, then a converge that changes nothing on any host
  3. a model change rolls across the gateways under a bounded load (4 clients, <= 90 s): no failed
     request, every proxy container recreated, never two gateways out of service at once
  4. a gateway host stopped: requests keep succeeding through the load balancer (time printed); the
     next deploy reports that host failed and converges the others
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import docker
import pytest

from tasks import balancer
from tests.e2e.conftest import IMAGES, PYINFRA, ROOT, Deployment, Run
from tests.testbed.bed import NETWORK

PREFIX = "lb-"
GATEWAYS = ("gw1", "gw2", "gw3")
LB = "lb1"
HOSTS = (*GATEWAYS, LB, "up1")
DB_PASSWORD = "shared-db-password-for-the-lb-suite"
CLIENTS = 4
LOAD_SECONDS = 90  # the load loop's bound: it stops by itself
# A roll of three DB-backed gateways on 2 shared cores takes longer than LOAD_SECONDS (about 200 s seen),
# so the load comes in bursts at the moments that matter: a gateway drained (its old container stopped
# while requests are in flight) and re-admitted (its new container taking requests), BURST_SECONDS each.
BURST_SECONDS = 15
REQUEST_TIMEOUT = 60
PROXY_SERVICE_EVENTS = "label=com.docker.compose.service=litellm"


def make_ca(workdir: Path, address: str) -> tuple[Path, Path, Path]:
    """(CA certificate, the load balancer's certificate, its key): a CA of this suite, and a leaf
    for the load balancer's bed address, as the deployment's CA will issue one."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lb suite CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = workdir / "ca.crt", workdir / "lb.crt", workdir / "lb.key"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    paths[2].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


class LbDeployment(Deployment):
    """Three gateways on the shared database and one load balancer, in one inventory."""

    database_url = ""
    cert_files: tuple[Path, Path] | None = None

    def write_inventory(self) -> Path:
        archives = self.bed.archives(("litellm", "postgres", "caddy"))
        common = {"litellm_image": self.bed.litellm_image(), "postgres_image": self.bed.postgres_image(),
                  "models": self.models(), "verify_timeout": 120, "database_mode": "external",
                  "backup_enabled": False}
        lb = {"tls": "files", "tls_cert_file": str(self.cert_files[0]), "tls_key_file": str(self.cert_files[1]),
              "tls_image": self.bed.caddy_image()}
        if IMAGES == "local":
            common.update(image_source="archives", image_archives=[str(archives["litellm"]), str(archives["postgres"])])
            lb.update(image_source="archives", image_archives=[str(archives["caddy"])])
        data = {**{self.name(g): dict(common) for g in GATEWAYS}, self.name(LB): lb}
        for name, extra in self.overrides.items():
            data.setdefault(self.name(name), {}).update(extra)
        gateways = self.bed.inventory_text(data, names=[self.name(g) for g in GATEWAYS] + [self.name("up1")])
        lbs = self.bed.inventory_text(data, names=[self.name(LB)])
        lbs = lbs[lbs.index("litellm_hosts = ["):].replace("litellm_hosts = [", "lb_hosts = [", 1)
        self.inventory.write_text(gateways + "\n" + lbs)
        return self.inventory

    @property
    def lb_url(self) -> str:
        return f"https://{self.bed.host(self.name(LB))['address']}"


def start_shared_db(bed) -> tuple[object, str]:
    """The gateways' one PostgreSQL: the bed's image on the bed's network (test_external_database.py's
    way, but reachable from the bed hosts). Returns (container, address)."""
    client = docker.from_env()
    name = f"litellm-deploy-testbed-{PREFIX}pg"
    for stale in client.containers.list(all=True, filters={"name": name}):
        stale.remove(force=True, v=True)
    container = client.containers.run(
        bed.postgres_image(), detach=True, name=name, labels={"litellm-deploy.testbed": "1"}, network=NETWORK,
        environment={"POSTGRES_USER": "litellm", "POSTGRES_PASSWORD": DB_PASSWORD, "POSTGRES_DB": "litellm"})
    deadline = time.monotonic() + 120
    while container.exec_run(["pg_isready", "-h", "127.0.0.1", "-U", "litellm", "-d", "litellm"]).exit_code != 0:
        container.reload()
        assert container.status == "running", container.logs()[-2000:].decode(errors="replace")
        assert time.monotonic() < deadline, "the shared Postgres did not get ready in 120 s"
        time.sleep(0.5)
    container.reload()
    return container, container.attrs["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]


@pytest.fixture(scope="module")
def lb_deployment(bed, tmp_path_factory):
    deployment = LbDeployment(bed, tmp_path_factory.mktemp("e2e-lb"), PREFIX, HOSTS)
    deployment.up()  # the bed's network exists from here
    container, address = start_shared_db(bed)
    try:
        with deployment.secrets.open("a") as secrets:
            secrets.write(f'DATABASE_URL="postgresql://litellm:{DB_PASSWORD}@{address}:5432/litellm?sslmode=disable"\n')
        ca, cert, key = make_ca(deployment.workdir, bed.host(deployment.name(LB))["address"])
        deployment.cert_files = (cert, key)
        deployment.ca = ca
        yield deployment
    finally:
        container.remove(force=True, v=True)
        deployment.down()


class Load:
    """CLIENTS threads posting chat completions to the load balancer while a burst is open (burst()),
    LOAD_SECONDS of bursts in all; they stop by themselves."""

    def __init__(self, url: str, key: str, ca: Path):
        self.url, self.key = url + "/v1/chat/completions", key
        self.context = ssl.create_default_context(cafile=str(ca))
        self.ok = 0
        self.failures: list[str] = []
        self.latencies: list[tuple[float, float]] = []  # (start, seconds)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.open_until = time.monotonic() + LOAD_SECONDS  # without burst(): one run of LOAD_SECONDS
        self.budget = LOAD_SECONDS
        self.opened = threading.Condition(self.lock)
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def request(self) -> str | None:
        body = json.dumps({"model": "chat-upstream", "messages": [{"role": "user", "content": "hi"}]}).encode()
        req = urllib.request.Request(self.url, data=body, headers={"Authorization": f"Bearer {self.key}",
                                                                   "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT, context=self.context) as answer:
                payload = json.loads(answer.read())
                return None if payload["choices"][0]["message"]["content"] else "empty answer"
        except urllib.error.HTTPError as error:
            return f"HTTP {error.code}: {error.read()[:200]!r}"
        except Exception as error:  # noqa: BLE001 - every failure counts, whatever it is
            return f"{type(error).__name__}: {error}"

    def bursts(self) -> "Load":
        """Requests only inside bursts from now on."""
        with self.lock:
            self.open_until = 0.0
        return self

    def burst(self, seconds: float = BURST_SECONDS) -> None:
        """Open (or extend) a burst of `seconds`, within what is left of LOAD_SECONDS."""
        with self.lock:
            now = time.monotonic()
            start = max(now, self.open_until)
            granted = min(seconds - (start - now), self.budget)
            if granted > 0:
                self.open_until = start + granted
                self.budget -= granted
                self.opened.notify_all()

    def _client(self):
        while not self.stop.is_set():
            with self.lock:
                if time.monotonic() >= self.open_until:
                    if self.budget <= 0:
                        return
                    self.opened.wait(timeout=1.0)  # for burst() or stop
                    continue
            started = time.time()
            problem = self.request()
            with self.lock:
                self.latencies.append((started, time.time() - started))
                if problem is None:
                    self.ok += 1
                else:
                    self.failures.append(f"{datetime.datetime.fromtimestamp(started):%H:%M:%S.%f} {problem}")

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        with self.lock:
            self.opened.notify_all()
        for thread in self.threads:
            thread.join(REQUEST_TIMEOUT + 5)


def caddy_log(deployment: LbDeployment) -> str:
    """The load balancer's last log lines (which gateway Caddy found unhealthy, and when)."""
    return deployment.bed.ssh(deployment.name(LB), "docker logs --tail 40 litellm-lb-caddy-1 2>&1").output[-6000:]


def proxy_windows(deployment: LbDeployment, since: float) -> dict[str, tuple[float, float]]:
    """gateway -> (its old proxy container stopped, its new one healthy), from the host's Docker events."""
    windows = {}
    for gateway in GATEWAYS:
        output = deployment.ssh(gateway, f"docker events --since {since:.3f} --until {time.time():.3f} "
                                         f"--filter type=container --filter {PROXY_SERVICE_EVENTS} "
                                         "--format '{{.TimeNano}} {{.Action}}'")
        # An exec event's action holds the command, which may span lines: only lines that start with a time.
        events = [(int(t) / 1e9, action) for t, _, action in (line.partition(" ") for line in output.splitlines())
                  if t.isdigit() and len(t) >= 19]
        down = [t for t, action in events if action in ("kill", "stop", "die")]
        healthy = [t for t, action in events if action == "health_status: healthy"]
        assert down and healthy, f"{gateway}: its proxy was not recreated: {events}"
        windows[gateway] = (min(down), max(healthy))
    return windows


def test_the_rendered_caddyfile_passes_caddy_validate_in_the_deploy_image(bed, tmp_path):
    """The bed's Caddy image (the pinned release) or the official one (TESTBED_IMAGES=official)."""
    cert, key = make_ca(tmp_path, "192.168.77.2")[1:]
    upstreams = tuple(balancer.Upstream(f"gw{i}", f"192.168.77.{10 + i}", 4000) for i in range(3))
    lb = balancer.LoadBalancer(
        host_name="lb1", address="192.168.77.2", install_dir="/opt/litellm-lb", compose_project="litellm-lb",
        tls_image=bed.caddy_image(), tls="files", tls_cert_file=str(cert), tls_key_file=str(key), tls_names=(),
        tls_port=8443, http_port=80, docker_install="skip", image_source="pull", image_archives=(),
        log_max_size="10m", log_max_file=3, start_timeout=60, upstreams=upstreams, roll_width=1)
    (tmp_path / "caddy").mkdir()
    (tmp_path / "certs").mkdir()
    (tmp_path / "caddy" / "Caddyfile").write_text(balancer.render_caddyfile(lb))
    (tmp_path / "caddy" / "Caddyfile.roll").write_text(balancer.render_caddyfile(lb, {"gw1", "gw2", "gw3"}))
    (tmp_path / "certs" / "cert.pem").write_bytes(cert.read_bytes())
    (tmp_path / "certs" / "key.pem").write_bytes(key.read_bytes())
    for name in ("Caddyfile", "Caddyfile.roll"):
        result = subprocess.run(
            ["docker", "run", "--rm", "--label", "litellm-deploy.testbed=1", "-v", f"{tmp_path / 'caddy'}:/etc/caddy:ro",
             "-v", f"{tmp_path / 'certs'}:/certs:ro", bed.caddy_image(),
             "caddy", "validate", "--config", f"/etc/caddy/{name}", "--adapter", "caddyfile"],
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "Valid configuration" in result.stdout + result.stderr, result.stderr[-2000:]


def test_fresh_converge_then_nothing_changes(lb_deployment):
    first = lb_deployment.pyinfra()
    assert first.returncode == 0, first.output[-6000:]
    second = lb_deployment.pyinfra()
    assert second.returncode == 0, second.output[-6000:]
    for name in (*GATEWAYS, LB):
        assert lb_deployment.changed(second, name) == [], f"{name} changed on the second run:\n{second.output[-4000:]}"
    # Plain HTTP is only a redirect; HTTPS answers checked against the CA, the proxy behind it ready.
    address = lb_deployment.bed.host(lb_deployment.name(LB))["address"]
    with pytest.raises(urllib.error.HTTPError) as redirect:
        urllib.request.build_opener(NoRedirect).open(f"http://{address}/health/readiness", timeout=10)
    assert redirect.value.code in (301, 308) and redirect.value.headers["Location"] == \
        f"https://{address}/health/readiness"
    load = Load(lb_deployment.lb_url, lb_deployment.master_key(), lb_deployment.ca)
    assert load.request() is None
    # Each gateway's proxy is published on its own address and localhost only.
    for gateway in GATEWAYS:
        address = lb_deployment.bed.host(lb_deployment.name(gateway))["address"]
        ports = lb_deployment.ssh(gateway, "docker ps --filter label=com.docker.compose.service=litellm "
                                           "--format '{{.Ports}}'")
        assert f"{address}:4000->4000/tcp" in ports and "127.0.0.1:4000->4000/tcp" in ports \
            and "0.0.0.0" not in ports, ports


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_a_model_change_rolls_one_gateway_at_a_time_with_no_failed_request(lb_deployment):
    models = lb_deployment.models()
    models.append({**models[0], "name": "chat-upstream-second"})
    for gateway in GATEWAYS:
        lb_deployment.overrides[gateway] = {"models": models}
    lb_deployment.write_inventory()
    since = time.time()
    command = [PYINFRA, str(lb_deployment.inventory), "deploy.py", "-y"]
    env = {**os.environ, "LITELLM_DEPLOY_SECRETS": str(lb_deployment.secrets)}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    load = Load(lb_deployment.lb_url, lb_deployment.master_key(), lb_deployment.ca).bursts()
    with load:
        for line in process.stdout:
            lines.append(line)
            if "roll: draining" in line or "roll: verified and back" in line:
                load.burst()
    process.wait(timeout=60)
    run = Run(process.returncode, "".join(lines))
    print(f"\nload through the load balancer: {load.ok} answered, {len(load.failures)} failed, "
          f"slowest {max((s for _, s in load.latencies), default=0):.2f} s")
    assert run.returncode == 0, run.output[-6000:]
    (lb_deployment.workdir / "roll-run.log").write_text(run.output)
    assert load.ok > 0 and load.failures == [], (load.failures[:20], caddy_log(lb_deployment))
    windows = proxy_windows(lb_deployment, since)
    ordered = sorted(windows.items(), key=lambda item: item[1][0])
    for (a, (_, a_end)), (b, (b_start, _)) in zip(ordered, ordered[1:]):
        print(f"{a}: out of service until {a_end:.2f}; {b} from {b_start:.2f}")
        assert a_end <= b_start, f"{a} and {b} were out of service at the same time: {windows}"
    covered = sum(1 for _, (start, end) in windows.items() if any(start <= t <= end for t, _ in load.latencies))
    print(f"recreations under load: {covered} of {len(GATEWAYS)}")
    assert covered == len(GATEWAYS), f"the load did not reach every gateway's recreation: {windows}"
    # The change is everywhere: the new model answers through the load balancer.
    assert all(lb_deployment.changed(run, g) for g in GATEWAYS)


def test_a_stopped_gateway_is_routed_around(lb_deployment):
    victim = GATEWAYS[1]
    load = Load(lb_deployment.lb_url, lb_deployment.master_key(), lb_deployment.ca)
    assert load.request() is None
    lb_deployment.bed._container(lb_deployment.name(victim)).kill()  # the host is gone, without a word
    killed = time.time()
    # One client right after the stop, for at most 30 s: a request that reaches the dead gateway is
    # retried on the others (lb_try_duration) until the health check takes it out of the rotation.
    results: list[tuple[float, float, str | None]] = []  # (start, seconds, problem)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        started = time.time()
        problem = load.request()
        results.append((started, time.time() - started, problem))
        recent = results[-10:]
        if len(recent) == 10 and all(p is None and seconds < 1.0 for _, seconds, p in recent) \
                and recent[0][0] - killed > balancer.HEALTH_INTERVAL + balancer.HEALTH_TIMEOUT:
            break
    failed = [r for r in results if r[2] is not None]
    slow = [started - killed for started, seconds, _ in results if seconds >= 1.0]
    settled = max(slow, default=0.0)
    print(f"\nafter {victim} stopped: {len(results)} requests, {len(failed)} failed; the last slowed by a retry "
          f"started {settled:.1f} s after the stop (health checks every {balancer.HEALTH_INTERVAL} s)")
    assert failed == [], failed[:10]
    assert settled < 15, results
    assert load.request() is None
