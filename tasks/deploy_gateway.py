"""The whole gateway deploy as one importable function, so tests drive it through pyinfra's API."""

from __future__ import annotations

from pyinfra.api import deploy

from tasks import backup, database, docker, migrations, stack, verify
from tasks.settings import Settings


@deploy("LiteLLM gateway")
def deploy_gateway(settings: Settings) -> None:
    changes = stack.Changes()
    # 1. Docker Engine + Compose v2, running and enabled.
    docker.install_docker(settings)
    # 2. docker-compose.yml, litellm-config.yaml and .env (0600).
    stack.write_files(settings, changes)
    # 3. Pinned images: pulled, or uploaded as archives and loaded (air-gapped hosts).
    stack.get_images(settings, changes)
    # 4. Postgres healthy (bundled mode).
    stack.start_database(settings, changes)
    if settings.has_database:
        # 5. Migrations with the image's own entry point, before any proxy runs on the schema.
        migrations.schema_migrated(
            name="Database schema migrated",
            project=settings.compose_project,
            install_dir=settings.install_dir,
            image=settings.litellm_image,
        )
        # 6. Admin user and master-key link, insert-or-update (values on psql's stdin only).
        database.bootstrap_current_key(settings)
        # 6b. Scheduled pg_dump backups on the host (systemd timer; off with backup_enabled = False).
        backup.scheduled_backup(settings)
    # 7. The proxy, recreated only when its files or image changed.
    stack.start_proxy(settings, changes)
    # 8. Verify along the request path: proxy, Ollama nodes, upstreams.
    verify.verify_gateway(settings)
