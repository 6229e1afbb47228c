"""Every Hypothesis strategy of the test suite: saga shapes, policies, outcomes, payloads.

A `SagaShape` is plain data describing a saga definition (step names, which
steps have a compensation, their retry policies); `SagaShape.build` turns it
into a real `Saga`, with no-op actions by default or with actions supplied by
the caller (runtime-level chaos tests plug in scripted actions that raise or
return according to drawn `Outcome`s).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from hypothesis import strategies as st

from saga import (
    Action,
    Compensation,
    ErrorInfo,
    NonRetryableError,
    RetryPolicy,
    Saga,
    Step,
    StepContext,
)

# -- error types a drawn policy can list -------------------------------------


class Declined(Exception):
    """A business refusal (card declined): listed as non-retryable by drawn policies."""


class Gone(Exception):
    """The resource no longer exists: listed as non-retryable by drawn policies."""


class Unavailable(Exception):
    """A transient outage (a 503): never listed as non-retryable."""


NON_RETRYABLE_TYPES: tuple[type[Exception], ...] = (Declined, Gone)


def qualified_name(error_type: type[BaseException]) -> str:
    """The name `ErrorInfo.type` records for an error of `error_type`."""
    return f"{error_type.__module__}.{error_type.__qualname__}"


# -- outcomes ----------------------------------------------------------------


class Outcome(enum.Enum):
    """What happens to one run of a step action or a compensation."""

    SUCCESS = "success"
    TRANSIENT = "transient"
    """One retryable failure."""
    EXHAUSTED = "exhausted"
    """Retryable failures, attempt after attempt, until the policy gives up."""
    DEFINITIVE = "definitive"
    """A non-retryable failure: proves the attempt took no effect."""
    TIMEOUT = "timeout"
    """The attempt timed out: retryable, and it may have taken effect."""
    AMBIGUOUS = "ambiguous"
    """Not retried, yet it may have taken effect (e.g. an unserializable result)."""


def outcomes() -> st.SearchStrategy[Outcome]:
    """Any outcome; shrinks towards success."""
    return st.sampled_from(list(Outcome))


# -- time and randomness -----------------------------------------------------


def jitter_samples() -> st.SearchStrategy[float]:
    """The `jitter` an event carries: a sample in [0, 1)."""
    return st.floats(min_value=0.0, max_value=1.0, exclude_max=True, allow_nan=False)


def time_steps(max_value: float = 30.0) -> st.SearchStrategy[float]:
    """How far the clock moves between two events (seconds, >= 0)."""
    return st.floats(min_value=0.0, max_value=max_value, allow_nan=False, allow_infinity=False)


def epochs() -> st.SearchStrategy[float]:
    """A wall-clock start time."""
    return st.floats(min_value=0.0, max_value=2e9, allow_nan=False, allow_infinity=False)


# -- payloads ----------------------------------------------------------------


def json_values(max_leaves: int = 6) -> st.SearchStrategy[Any]:
    """Values msgspec encodes to JSON and decodes back equal (no floats: -0.0, nan)."""
    scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=max_leaves,
    )


def raw_results() -> st.SearchStrategy[msgspec.Raw]:
    """A step's result as the machine records it: JSON text in a `msgspec.Raw`."""
    return json_values().map(lambda value: msgspec.Raw(msgspec.json.encode(value)))


def error_infos(*, timed_out: bool = False) -> st.SearchStrategy[ErrorInfo]:
    types = st.sampled_from([*NON_RETRYABLE_TYPES, Unavailable, NonRetryableError, TimeoutError])
    return st.builds(
        ErrorInfo,
        type=types.map(qualified_name),
        message=st.text(max_size=20),
        timed_out=st.just(timed_out),
    )


# -- policies ----------------------------------------------------------------


@st.composite
def retry_policies(
    draw: st.DrawFn,
    *,
    maximum_attempts: st.SearchStrategy[int | None] | None = None,
) -> RetryPolicy:
    """A valid `RetryPolicy`; by default with few attempts (1 to 4) so retries run out."""
    attempts = draw(maximum_attempts if maximum_attempts is not None else st.integers(1, 4))
    initial = draw(st.floats(min_value=0.0, max_value=5.0, allow_nan=False))
    coefficient = draw(st.floats(min_value=1.0, max_value=4.0, allow_nan=False))
    maximum = draw(st.floats(min_value=initial, max_value=initial + 60.0, allow_nan=False))
    return RetryPolicy(
        initial_interval=initial,
        backoff_coefficient=coefficient,
        maximum_interval=maximum,
        maximum_attempts=attempts,
        non_retryable_error_types=tuple(
            draw(st.lists(st.sampled_from(NON_RETRYABLE_TYPES), unique=True))
        ),
        jitter=draw(st.floats(min_value=0.0, max_value=0.5, allow_nan=False)),
    )


def compensation_retry_policies() -> st.SearchStrategy[RetryPolicy | None]:
    """None (the default: unlimited attempts), or a drawn policy, sometimes unlimited."""
    return st.none() | retry_policies(maximum_attempts=st.none() | st.integers(1, 4))


# -- saga shapes -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepShape:
    """Plain data for one `Step`."""

    name: str
    compensable: bool
    retry: RetryPolicy
    compensation_retry: RetryPolicy | None
    timeout: float | None


ActionFactory = Callable[[StepShape], Action]
CompensationFactory = Callable[[StepShape], Compensation]


async def _noop_action(ctx: StepContext, saga_input: Any) -> None:
    return None


async def _noop_compensation(ctx: StepContext, saga_input: Any, result: Any) -> None:
    return None


@dataclass(frozen=True, slots=True)
class SagaShape:
    """Plain data for one `Saga`: draw it, then `build` the definition."""

    name: str
    steps: tuple[StepShape, ...]

    def build(
        self,
        action: ActionFactory | None = None,
        compensate: CompensationFactory | None = None,
    ) -> Saga:
        """The `Saga` this shape describes; `action`/`compensate` make each step's callables."""
        return Saga(
            self.name,
            [
                Step(
                    shape.name,
                    action(shape) if action is not None else _noop_action,
                    compensate=(
                        (compensate(shape) if compensate is not None else _noop_compensation)
                        if shape.compensable
                        else None
                    ),
                    retry=shape.retry,
                    compensation_retry=shape.compensation_retry,
                    timeout=shape.timeout,
                )
                for shape in self.steps
            ],
        )


def step_names() -> st.SearchStrategy[str]:
    """Valid step names (no ':', no surrounding spaces)."""
    return st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)


@st.composite
def step_shapes(draw: st.DrawFn, name: str) -> StepShape:
    return StepShape(
        name=name,
        compensable=draw(st.booleans()),
        retry=draw(retry_policies()),
        compensation_retry=draw(compensation_retry_policies()),
        timeout=draw(st.none() | st.floats(min_value=0.01, max_value=10.0)),
    )


@st.composite
def saga_shapes(draw: st.DrawFn, *, min_steps: int = 1, max_steps: int = 8) -> SagaShape:
    """A saga of `min_steps` to `max_steps` steps, some without compensation."""
    names = draw(st.lists(step_names(), min_size=min_steps, max_size=max_steps, unique=True))
    return SagaShape(
        name=draw(step_names()),
        steps=tuple(draw(step_shapes(name)) for name in names),
    )
