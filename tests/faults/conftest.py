"""The fault tier runs on the e2e test bed: its session fixture, shared with tests/e2e."""

from tests.e2e.conftest import bed

__all__ = ["bed"]  # a fixture: pytest finds it here by name
