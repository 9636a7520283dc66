"""The whole gateway deploy as one importable function, so tests drive it through pyinfra's API."""

from __future__ import annotations

from pyinfra import state
from pyinfra.api import deploy
from pyinfra.context import ctx_host
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import File, FindInFile
from pyinfra.facts.hardware import Cpus, Memory
from pyinfra.facts.server import Date, LinuxDistribution
from pyinfra.operations.apt import APT_UPDATE_FILENAME

from tasks import context, key_converge
from tasks.config import sizing
from tasks.config.registry import first_time, the_run
from tasks.config.settings import Settings
from tasks.gateway import backup, database, migrations, roll, stack, tls, upgrade, verify
from tasks.lib import compose, docker, envfile, fact_cache, firewall
from tasks.lib.fact_cache import absent_reads, directory_reads, put_reads, service_reads
from tasks.lib.images import remote_archive
from tasks.lib.render import COMPOSE_FILE, CONFIG_FILE, ENV_FILE
from tasks.lib.stages import Stage, stage
from tasks.lib.uploads import private_file_reads


@deploy("LiteLLM gateway")
def deploy_gateway(settings: Settings) -> None:
    # What the stages below decide on, read in one command; served until something changes on the host.
    host_state_read(settings)
    changes = stack.Changes()
    # Docker Engine + Compose v2, running and enabled.
    docker.install_docker(settings=settings)
    # Root only (0700) before anything goes into it: image archives, then .env.
    stack.install_directory(settings)
    # Behind load balancers: the proxy's port on the gateway's address lets in only them, before the
    # proxy is (re)published there. Its localhost port never crosses this firewall (not forwarded).
    if settings.behind_load_balancer:
        proxy_firewall(settings)
    else:  # none, or the one left by lb_hosts removed from the inventory
        firewall.rules_absent(
            name="No firewall on the proxy's port (no load balancers)", service=proxy_firewall_service(settings)
        )
    # Pinned images pulled, or uploaded as archives and loaded (air-gapped hosts), and checked, before
    # anything is stopped, backed up or written: a mistyped tag fails the host with the gateway untouched.
    stack.get_images(settings=settings, changes=changes)
    # Another image than the one running makes these stages an upgrade (tasks/gateway/upgrade.py): a backup
    # first, and the previous image and data put back if one fails. Otherwise they simply run in order.
    upgrade.run_stages(
        settings,
        [
            # A POSTGRES_PASSWORD changed in the secrets file set on the existing role first, while the
            # host's .env still holds the old one (the Postgres image applies it only to a new database).
            stage("the database password", database.role_password_for, settings),
            # docker-compose.yml, litellm-config.yaml and .env (0600).
            stage("writing the files", stack.write_files, settings, changes),
            # Postgres healthy (bundled mode).
            stage("starting the database", stack.start_database, settings, changes),
            # Database modes: migrations, bootstrap, scheduled backups (below).
            *database_stages(settings),
            # The proxy, recreated only when its files or image changed; behind load balancers, rolled:
            # roll_width gateways at a time drained, recreated, verified, re-admitted (tasks/gateway/roll.py).
            stage("starting the proxy", roll.rolling(stack.start_proxy, context.gateway_roll), settings, changes),
            # HTTPS in front of it (tls on), recreated only when its files or image changed; none with tls off.
            stage("the TLS front", tls.tls_front, settings, changes),
            # Along the request path: proxy, Ollama nodes, upstreams.
            stage("verification", verify.verify_gateway, settings),
        ],
    )
    # Remembered as verified, so the next image change is known as an upgrade.
    upgrade.verified_image_recorded(
        name="Verified image recorded", install_dir=settings.install_dir, image=settings.litellm_image
    )
    # Declared teams and virtual keys, through the verified proxy's API (database modes).
    key_converge.converge_access(settings=settings)


def database_stages(settings: Settings) -> list[Stage]:
    if not settings.has_database:
        return []
    return [
        # Migrations with the image's own entry point, before any proxy runs on the schema; on a
        # database several gateways share, by one of them only (shared_migration below).
        stage("the database migration", shared_migration, settings),
        # Admin user and master-key link, insert-or-update (values on psql's stdin only); on a shared
        # database by its owner only (shared_migration below), never two gateways at once.
        *(
            [stage("the bootstrap", database.bootstrap_current_key, settings)]
            if key_converge.owner(settings) == settings.host_name
            else []
        ),
        # Scheduled pg_dump backups on the host (systemd timer; off with backup_enabled = False).
        stage("the backup schedule", backup.scheduled_backup, settings),
    ]


@deploy("Database migration")
def shared_migration(settings: Settings) -> None:
    """Migrations run once per change on a database the gateways share (a db host's, or an external
    one): by the owner (key_converge.owner: the first gateway of the run on that database), under the
    migration's own advisory lock (Prisma's, 72707369); pyinfra runs this call's migrate on every host
    before the next operation, and the others wait for the schema instead of racing it."""
    owner = key_converge.owner(settings)
    if owner == settings.host_name:
        migrations.schema_migrated(
            name="Database schema migrated",
            project=settings.compose_project,
            install_dir=settings.install_dir,
            image=settings.litellm_image,
        )
    else:
        migrations.schema_waited(
            name=f"Database schema migrated (by {owner}, the shared database's first gateway)",
            psql=database.psql(settings),
            owner=owner,
            timeout=settings.start_timeout,
        )


def proxy_firewall(settings: Settings) -> None:
    """tasks/lib/firewall.py's DOCKER-USER rules for the published proxy: to proxy_bind (the address the
    load balancers dial) only from their addresses. Narrowed to that destination so the proxy's own
    connections to port 4000 elsewhere (an upstream LiteLLM) are untouched."""
    firewall.port_only_from(
        service=proxy_firewall_service(settings),
        port=settings.proxy_port,
        sources=settings.load_balancer_sources,
        destination=settings.proxy_bind,
    )


def proxy_firewall_service(settings: Settings) -> str:
    return f"{settings.compose_project}-proxy"


def host_state_read(settings: Settings) -> None:
    """facts_decided_on, read on every gateway of the run at once when the first one is planned."""
    run = the_run(state)
    if not first_time(run, "gateway host state read"):
        return
    planned = fact_cache.the_host()
    wanted = {planned: (facts_decided_on(settings), checks_made(settings))}
    everyone = context.settings_built(run)
    for gateway in run.inventory.get_active_hosts():
        if gateway is not planned and gateway.name in everyone:
            with ctx_host.use(gateway):  # a host's TLS material is made in its own context
                wanted[gateway] = (facts_decided_on(everyone[gateway.name]), checks_made(everyone[gateway.name]))
    fact_cache.read_everywhere(wanted)


def checks_made(settings: Settings) -> list[fact_cache.Wanted]:
    """What the last stages check live through the proxy, in the order they ask: in a run that has
    changed nothing by then, read side by side when the first is asked (tasks/lib/fact_cache.py)."""
    return [verify.container_read(settings), *tls.host_checks_read(settings), *key_converge.checks_read(settings)]


def facts_decided_on(settings: Settings) -> list[fact_cache.Wanted]:
    """[(fact, arguments)] that the gateway's stages read on a host where they have nothing to do, in
    the order they read them: the no-op's host state, read in one command (tasks/lib/fact_cache.py).
    A fact missing here is still read, on its own (tests/unit/test_fact_cache.py keeps this list and
    the stages together). Not here: what is checked live (verification, the bootstrap, the keys)."""
    install_dir, project = settings.install_dir, settings.compose_project
    reads: list[fact_cache.Wanted] = [
        (LinuxDistribution, {}),
        (upgrade.DeployedImage, {"project": project, "install_dir": install_dir}),
        (upgrade.PendingUpgrade, {"install_dir": install_dir}),
    ]
    if settings.proxy_workers == sizing.AUTO_WORKERS:
        reads += [(Cpus, {}), (Memory, {})]
    reads += [(docker.EngineVersion, {})]
    if settings.docker_install == "distro":
        reads += [
            (docker.DockerPackageStates, {}),
            (File, {"path": APT_UPDATE_FILENAME}),
            (Date, {}),
            (DebPackages, {}),
        ]
    if settings.docker_install != "skip":
        reads += service_reads("docker.service")
    reads += [
        (docker.ComposeVersion, {}),
        *directory_reads(install_dir),
        firewall.presence_fact(proxy_firewall_service(settings)),
    ]
    images = stack.required_images(settings)
    if settings.image_source == "pull":
        reads += [(compose.ImageId, {"image": image}) for image in images.values()]
    else:
        reads += directory_reads(stack.archive_dir(settings))
        reads += [
            (File, {"path": remote_archive(stack.archive_dir(settings), archive)})
            for archive in settings.image_archives
        ]
        reads += [(compose.ImageId, {"image": image}) for image in images.values()]
    if settings.has_database:
        reads += [(envfile.EnvLineHashes, {"install_dir": install_dir, "names": (database.POSTGRES_PASSWORD,)})]
    for name in stack.FILE_MODES:
        path = f"{install_dir}/{name}"
        reads += (
            private_file_reads(path)
            if name in (COMPOSE_FILE, CONFIG_FILE, ENV_FILE) or settings.database_mode == "external"
            else absent_reads(path)
        )
    reads += [(compose.ComposeServices, {"project": project, "install_dir": install_dir})]
    if settings.has_database:
        reads += [(migrations.MigratedImageId, {"install_dir": install_dir})]
    if settings.database_mode == "bundled" and settings.backup_enabled:
        for path in backup.unit_files(settings):
            reads += put_reads(path)
        reads += service_reads(f"{backup.unit_name(settings)}.timer")
    elif settings.has_database:
        reads += service_reads(f"{backup.unit_name(settings)}.timer")
    if settings.has_database:
        reads += [(FindInFile, {"path": backup.LEGACY_SCRIPT, "pattern": backup.legacy_owner_pattern(settings)})]
    reads += tls.facts_read(settings)
    if settings.database_mode == "bundled":
        reads += [(verify.NewestBackup, {"directory": settings.backup_dir})]
    reads += [(upgrade.VerifiedImage, {"install_dir": install_dir})]
    if settings.teams or settings.virtual_keys:
        reads += private_file_reads(key_converge.keys_file(settings))
    return reads
