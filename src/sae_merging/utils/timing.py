"""Wall time per named section of a run (merge, prune, evaluate, ...)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Timer:
    """Seconds spent per section (merge, prune, evaluate, ...), cumulative and per generation."""

    totals: dict[str, float] = field(default_factory=dict)
    current: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.totals[name] = self.totals.get(name, 0.0) + elapsed
            self.current[name] = self.current.get(name, 0.0) + elapsed

    def take(self) -> dict[str, float]:
        """This generation's seconds per section, then start the next generation at zero."""
        taken, self.current = self.current, {}
        return taken
