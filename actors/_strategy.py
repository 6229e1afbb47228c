"""Supervision strategies, named after Akka's: what a supervisor does when an actor crashes."""

from __future__ import annotations

import random as _random
from dataclasses import dataclass, replace


@dataclass(frozen=True, kw_only=True)
class RestartWithBackoff:
    """Restart the crashed actor after an exponential, jittered delay.

    The n-th consecutive restart waits `min_backoff * 2**n`, capped at
    `max_backoff`, stretched by up to `random_factor` (0.2 = up to 20 %).
    More than `max_restarts` crashes within `within` seconds escalate.
    """

    min_backoff: float = 0.05
    max_backoff: float = 5.0
    random_factor: float = 0.2
    max_restarts: int = 5
    within: float = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_backoff <= self.max_backoff:
            raise ValueError("need 0 <= min_backoff <= max_backoff")
        if self.random_factor < 0:
            raise ValueError("random_factor must be >= 0")
        if self.max_restarts < 0 or self.within <= 0:
            raise ValueError("need max_restarts >= 0 and within > 0")

    def with_limit(self, max_restarts: int, within: float) -> RestartWithBackoff:
        """A copy that escalates after more than `max_restarts` crashes within `within` s."""
        return replace(self, max_restarts=max_restarts, within=within)

    def delay(self, restart_index: int, rng: _random.Random) -> float:
        """Seconds to wait before restart number `restart_index` (0-based) in the window."""
        base = min(self.max_backoff, self.min_backoff * 2.0 ** min(restart_index, 64))
        return base * (1.0 + self.random_factor * rng.random())


@dataclass(frozen=True)
class Stop:
    """Stop the crashed actor for good."""


@dataclass(frozen=True)
class Escalate:
    """Hand the crash to the supervisor's parent at once."""


SupervisorStrategy = RestartWithBackoff | Stop | Escalate
