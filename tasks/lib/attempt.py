"""An attempt whose failure is rolled back, as upgrades and rotations make them: the operations of
the attempt, each under the label a report names it by, run with their errors held and skipped
after the first failure; the rollback's operations run only then (`_if=attempt.rolling_back`).

Both are asked while the run executes, as pyinfra evaluates `_if` callables operation by operation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pyinfra.api.operation import OperationMeta

from tasks.lib.outcome import failed, last_error


@dataclass
class Attempt:
    steps: list[tuple[str, OperationMeta | None]] = field(default_factory=list)
    # Why a failed step failed, when its own error output does not say it (a proof's finding).
    problems: dict[str, Callable[[], str | None]] = field(default_factory=dict)

    def add(self, label: str, operations: Sequence[OperationMeta | None]) -> None:
        """A step of the attempt: its operations as pyinfra added them, under `label`."""
        self.steps += [(label, meta) for meta in operations]

    def failure(self) -> str | None:
        """Why the attempt failed, or None (so far)."""
        for label, meta in self.steps:
            if failed(meta):
                problem = self.problems[label]() if label in self.problems else None
                return f"{label} failed: {problem}" if problem else f"{label} failed{last_error(meta)}"
        return None

    def going(self) -> bool:
        return self.failure() is None

    def rolling_back(self) -> bool:
        return self.failure() is not None

    def args(self) -> dict:
        """pyinfra global arguments for the attempt's operations: errors held (the rollback follows),
        and every later one skipped after the first failure."""
        return {"_ignore_errors": True, "_if": [self.going]}
