"""Rotate the master key of every gateway: `pyinfra inventory rotate.py` (docs/rotation.md).

The new key is LITELLM_MASTER_KEY_NEXT from the secrets file, or generated and written there when the
run starts, before any host operation (--dry writes nothing); it becomes LITELLM_MASTER_KEY once every
gateway has proven it. Interrupted?
Run the same command again: it finishes the same rotation.
"""

from pyinfra import host, state

from tasks.context import runbook_settings
from tasks.rotation.records import rotation_for
from tasks.rotation.stages import rotate_gateway

settings = runbook_settings(state, host, "rotate.py")

if settings is not None:
    rotate_gateway(settings=settings, rotation=rotation_for(state))
