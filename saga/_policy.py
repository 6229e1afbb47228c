"""`RetryPolicy`: Temporal's field names, validated when declared, with a pure backoff."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._calls import Backoff
from ._errors import DefinitionError


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How a step (or a compensation) is retried after a retryable failure.

    Attempt n (n >= 1) that fails retryably is retried after
    `initial_interval * backoff_coefficient ** (n - 1)` seconds, capped at
    `maximum_interval`, spread by up to +/- `jitter` (0.1 = 10 %).
    `maximum_attempts=None` retries forever. Errors whose type is in
    `non_retryable_error_types` (or that subclass `NonRetryableError`) fail
    the step definitively at once.

    Raises `DefinitionError` for out-of-range values.
    """

    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval: float = 60.0
    maximum_attempts: int | None = 3
    non_retryable_error_types: tuple[type[BaseException], ...] = ()
    jitter: float = 0.1
    backoff: Backoff = field(init=False, repr=False, compare=False)
    """The policy's numbers, as the state machine applies them (and a code saga records)."""

    def __post_init__(self) -> None:
        if not self.initial_interval >= 0:
            raise DefinitionError(f"initial_interval must be >= 0, got {self.initial_interval}")
        if not self.backoff_coefficient >= 1:
            raise DefinitionError(
                f"backoff_coefficient must be >= 1, got {self.backoff_coefficient}"
            )
        if not self.maximum_interval >= self.initial_interval:
            raise DefinitionError("maximum_interval must be >= initial_interval")
        if self.maximum_attempts is not None and (
            isinstance(self.maximum_attempts, bool)
            or not isinstance(self.maximum_attempts, int)
            or self.maximum_attempts < 1
        ):
            raise DefinitionError(
                f"maximum_attempts must be None (unlimited) or an int >= 1, "
                f"got {self.maximum_attempts!r}"
            )
        if not isinstance(self.non_retryable_error_types, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException)
            for t in self.non_retryable_error_types
        ):
            raise DefinitionError("non_retryable_error_types must be a tuple of exception types")
        if not 0 <= self.jitter < 1:
            raise DefinitionError(f"jitter must be in [0, 1), got {self.jitter}")
        backoff = Backoff(
            initial_interval=float(self.initial_interval),
            backoff_coefficient=float(self.backoff_coefficient),
            maximum_interval=(
                None if self.maximum_interval == float("inf") else float(self.maximum_interval)
            ),
            maximum_attempts=self.maximum_attempts,
            jitter=float(self.jitter),
        )
        object.__setattr__(self, "backoff", backoff)  # frozen: derived once, here

    def allows_another_attempt(self, attempts_made: int) -> bool:
        return self.backoff.allows_another_attempt(attempts_made)

    def delay(self, attempt: int, jitter_sample: float) -> float:
        """Seconds to wait after failed attempt `attempt`; `jitter_sample` is in [0, 1)."""
        return self.backoff.delay(attempt, jitter_sample)


DEFAULT_STEP_RETRY = RetryPolicy()
DEFAULT_COMPENSATION_RETRY = RetryPolicy(maximum_attempts=None, maximum_interval=60.0)
