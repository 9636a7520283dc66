"""docs/configuration.md, generated from the declarations in tasks/config/fields.py:

    python -m tasks.config.reference > docs/configuration.md

tests/unit/test_configuration_reference.py fails when the file in docs/ is not what this prints."""

from __future__ import annotations

import json
import sys

from tasks.config.fields import FIELDS, REQUIRED

HEADER = """# Configuration reference

<!-- Generated from tasks/config/fields.py by `python -m tasks.config.reference > docs/configuration.md`;
     edit the declarations there, not this file. -->

Every setting, in Python group data: `group_data/all.py` for every host, `group_data/<group>.py` for a
group (`litellm_hosts`, `lb_hosts`, `db_hosts`, `redis_hosts`), or a host's own data in the inventory.
Write only what you change; everything else keeps the default below. Every value is checked before
any host is touched, and a bad one is refused naming the host, the setting and the fix. Secrets never
go in group data: they live in the secrets file (`secrets_file`; [secrets-and-keys.md](secrets-and-keys.md)).
"""


def default_text(value: object) -> str:
    if value is REQUIRED:
        return "required, no default"
    shown = json.dumps(value) if isinstance(value, (str, list, dict)) else repr(value)
    return f"default `{shown}`"


def markdown() -> str:
    out = [HEADER]
    section = None
    for field in FIELDS:
        if field.section != section:
            section = field.section
            out.append(f"\n## {section}\n")
        out.append(f"\n### `{field.name}`\n\n{field.type}, {default_text(field.default)}.\n\n{field.doc}\n")
    return "".join(out)


if __name__ == "__main__":
    sys.stdout.write(markdown())
