"""pyinfra glue and the mechanisms every component shares: compose projects, Docker, the firewall,
uploads, stages, templating. Imports only tasks.config."""
