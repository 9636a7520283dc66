"""The whole gateway deploy as one importable function, so tests drive it through pyinfra's API."""

from __future__ import annotations

from pyinfra.api import deploy

from tasks import backup, database, docker, migrations, stack, upgrade, verify
from tasks.settings import Settings


@deploy("LiteLLM gateway")
def deploy_gateway(settings: Settings) -> None:
    changes = stack.Changes()
    # 1. Docker Engine + Compose v2, running and enabled.
    docker.install_docker(settings)
    # 2. Another image than the one running: an upgrade (tasks/upgrade.py), backed up before any change.
    upgrading = upgrade.upgrade_for(settings)
    if upgrading:
        upgrade.backed_up(settings, upgrading)
    # From here to verification, an upgrade holds errors and rolls back instead of stopping.
    attempt = upgrade.attempt_args(upgrading)
    held = upgrading.held if upgrading else (lambda label, meta: meta)
    # 3a. A POSTGRES_PASSWORD changed in the secrets file set on the existing role first, while the
    # host's .env still holds the old one (the image applies it only to a new database).
    database.role_password_for(settings)
    # 3. docker-compose.yml, litellm-config.yaml and .env (0600).
    stack.write_files(settings, changes)
    # 4. Pinned images: pulled, or uploaded as archives and loaded (air-gapped hosts).
    stack.get_images(settings, changes)
    # 5. Postgres healthy (bundled mode).
    stack.start_database(settings, changes)
    if settings.has_database:
        # 6. Migrations with the image's own entry point, before any proxy runs on the schema.
        held("the database migration", migrations.schema_migrated(
            name="Database schema migrated",
            project=settings.compose_project,
            install_dir=settings.install_dir,
            image=settings.litellm_image,
            **attempt,
        ))
        # 7. Admin user and master-key link, insert-or-update (values on psql's stdin only).
        held("the bootstrap", database.bootstrap_current_key(settings, **attempt))
        # 7b. Scheduled pg_dump backups on the host (systemd timer; off with backup_enabled = False).
        backup.scheduled_backup(settings)
    # 8. The proxy, recreated only when its files or image changed.
    held("starting the proxy", stack.start_proxy(settings, changes, **attempt))
    # 9. Verify along the request path: proxy, Ollama nodes, upstreams.
    held("verification", verify.verify_gateway(settings, **attempt))
    if upgrading:
        # 10. A failed upgrade: previous image, data from before it, verified; then the host fails.
        upgrade.rolled_back(settings, upgrading, _if=[upgrading.rolling_back])
        upgrade.upgrade_reported(name=f"Upgrade to {settings.litellm_image}", upgrade=upgrading)
    # 11. Remembered as verified, so the next image change is known as an upgrade.
    upgrade.verified_image_recorded(name="Verified image recorded", install_dir=settings.install_dir,
                                    image=settings.litellm_image)
