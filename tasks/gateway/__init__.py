"""One gateway: its compose project (files, images, database, migrations, the proxy), the TLS front,
verification, upgrades, the roll behind load balancers, backup and restore."""
