"""The refusal window: how long a request with a valid key (old or new) failed during the switch,
from the host-side poller's log."""

from __future__ import annotations

from dataclasses import dataclass

POLL_INTERVAL = 0.2  # seconds between two probes of the refusal-window poller


@dataclass(frozen=True)
class Window:
    seconds: float  # total time during which a request with a valid key (old or new) failed
    longest: float  # longest uninterrupted stretch of it
    refused: int
    probes: int
    span: float

    def describe(self) -> str:
        if not self.probes:
            return "not measured (the poller recorded nothing)"
        return (
            f"{self.seconds:.1f} s (longest stretch {self.longest:.1f} s; {self.refused} of {self.probes} "
            f"probes refused over {self.span:.1f} s)"
        )


def refusal_window(samples: list[tuple[float, bool]], interval: float = POLL_INTERVAL) -> Window:
    """Each refused probe counts until the next probe (the last one for one interval)."""
    samples = sorted(samples)
    total = longest = stretch = 0.0
    refused = 0
    for index, (moment, ok) in enumerate(samples):
        step = samples[index + 1][0] - moment if index + 1 < len(samples) else interval
        if ok:
            stretch = 0.0
            continue
        refused += 1
        total += step
        stretch += step
        longest = max(longest, stretch)
    span = samples[-1][0] - samples[0][0] + interval if samples else 0.0
    return Window(round(total, 3), round(longest, 3), refused, len(samples), round(span, 3))


def parse_poll_log(lines: list[str]) -> list[tuple[float, bool]]:
    samples = []
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[1] in ("0", "1"):
            try:
                samples.append((float(parts[0]), parts[1] == "1"))
            except ValueError:
                continue
    return samples
