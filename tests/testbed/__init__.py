"""The test bed: fresh Debian 13 hosts in local Docker containers, for real deploys over SSH.

Usage by hand: ``python -m tests.testbed --help``.  From Python / pytest::

    from tests.testbed import Testbed
    bed = Testbed()
    bed.up(["gw1", "ollama1:ollama", "up1:upstream"])
    ...
    bed.down()
"""

from .bed import ExecResult, Testbed, TestbedError, parse_spec, wait_until
from .images import (
    LOCAL_CADDY_IMAGE,
    LOCAL_LITELLM_IMAGE,
    LOCAL_POSTGRES_IMAGE,
    LOCAL_VALKEY_IMAGE,
    OFFICIAL_LITELLM_IMAGE,
    OFFICIAL_POSTGRES_IMAGE,
    ImageError,
    Images,
)

__all__ = [
    "ExecResult",
    "ImageError",
    "Images",
    "LOCAL_CADDY_IMAGE",
    "LOCAL_LITELLM_IMAGE",
    "LOCAL_POSTGRES_IMAGE",
    "LOCAL_VALKEY_IMAGE",
    "OFFICIAL_LITELLM_IMAGE",
    "OFFICIAL_POSTGRES_IMAGE",
    "Testbed",
    "TestbedError",
    "parse_spec",
    "wait_until",
]
