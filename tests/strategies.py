"""Every Hypothesis strategy of the test suite: saga shapes, policies, outcomes, payloads.

A `SagaShape` is plain data describing a saga definition (its steps, which
have a compensation, their retry policies, waiting steps, a deadline);
`SagaShape.build` turns it into a real `Saga`, with no-op actions by default
or with actions supplied by the caller (runtime-level chaos tests plug in
scripted actions that raise or return according to drawn `Outcome`s).

Strategies are built once and cached (`functools.cache`): building one costs
far more than drawing from it.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from hypothesis import strategies as st

from saga import (
    Action,
    Compensation,
    Continue,
    ErrorInfo,
    NonRetryableError,
    OnTimeout,
    RetryPolicy,
    Saga,
    Sleep,
    Step,
    StepContext,
    WaitForSignal,
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


@functools.cache
def outcomes() -> st.SearchStrategy[Outcome]:
    """Any outcome; shrinks towards success."""
    return st.sampled_from(list(Outcome))


# -- time and randomness -----------------------------------------------------


@functools.cache
def jitter_samples() -> st.SearchStrategy[float]:
    """The `jitter` an event carries: a sample in [0, 1)."""
    return st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@functools.cache
def time_steps(max_value: float = 30.0) -> st.SearchStrategy[float]:
    """How far the clock moves between two events (seconds, >= 0).

    Round values (and sometimes a long pause) as often as arbitrary ones, so
    due times and deadlines are hit exactly, just missed, and overshot.
    """
    pauses = (0.0, 0.001, 1.0, 60.0, max_value * 4)
    return st.sampled_from(pauses) | st.floats(min_value=0.0, max_value=max_value)


@functools.cache
def epochs() -> st.SearchStrategy[float]:
    """A wall-clock start time."""
    return st.floats(min_value=0.0, max_value=2e9)


# -- payloads ----------------------------------------------------------------


@functools.cache
def json_values(max_leaves: int = 4) -> st.SearchStrategy[Any]:
    """Values msgspec encodes to JSON and decodes back equal (no floats: -0.0, nan)."""
    scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | short_texts()
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short_texts(), inner),
        max_leaves=max_leaves,
    )


@functools.cache
def short_texts() -> st.SearchStrategy[str]:
    """Short strings of the characters JSON escapes or encodes specially, and a plain one.

    A small alphabet keeps runs cheap to compare and to shrink.
    """
    return st.text(alphabet='a"\\\n\x00\u00e9\U0001f600', max_size=6)


@functools.cache
def raw_results() -> st.SearchStrategy[msgspec.Raw]:
    """A step's result (or a signal's payload) as the machine records it: JSON in a `Raw`."""
    return json_values().map(lambda value: msgspec.Raw(msgspec.json.encode(value)))


_SAMPLE_VALUES: tuple[object, ...] = (
    None,
    {"order_id": 42, "lines": [{"sku": "A-1", "qty": 2}], "paid": True},
    'caf\u00e9 \U0001f600 "quoted" back\\slash\nnew line \x00',
    2**63 + 1,
    [],
    {"": {"nested": [[], {}, [None]]}},
)
SAMPLE_RESULTS = tuple(msgspec.Raw(msgspec.json.encode(value)) for value in _SAMPLE_VALUES)


@functools.cache
def sample_results() -> st.SearchStrategy[msgspec.Raw]:
    """One of a few representative results: cheaper to draw and shrink than `raw_results`."""
    return st.sampled_from(SAMPLE_RESULTS)


@functools.cache
def error_infos(*, timed_out: bool = False) -> st.SearchStrategy[ErrorInfo]:
    types = st.sampled_from([*NON_RETRYABLE_TYPES, Unavailable, NonRetryableError, TimeoutError])
    return st.builds(
        ErrorInfo,
        type=types.map(qualified_name),
        message=short_texts(),
        timed_out=st.just(timed_out),
    )


# -- policies ----------------------------------------------------------------

# Few distinct values: they shrink fast and still cover no wait, tiny waits
# (real-clock runtime tests) and long ones, with and without backoff and jitter.
_INTERVALS = (0.0, 0.001, 0.01, 0.5, 2.0)
_COEFFICIENTS = (1.0, 1.5, 2.0, 3.0)
_CAPS = (1.0, 4.0, 100.0)
_JITTERS = (0.0, 0.1, 0.5)


@functools.cache
def retry_policies(
    *, maximum_attempts: st.SearchStrategy[int | None] | None = None
) -> st.SearchStrategy[RetryPolicy]:
    """A valid `RetryPolicy`; by default with few attempts (1 to 4) so retries run out."""
    return st.builds(
        _policy,
        initial=st.sampled_from(_INTERVALS),
        coefficient=st.sampled_from(_COEFFICIENTS),
        cap=st.sampled_from(_CAPS),
        attempts=maximum_attempts if maximum_attempts is not None else st.integers(1, 4),
        non_retryable=st.lists(st.sampled_from(NON_RETRYABLE_TYPES), unique=True),
        jitter=st.sampled_from(_JITTERS),
    )


def _policy(
    *,
    initial: float,
    coefficient: float,
    cap: float,
    attempts: int | None,
    non_retryable: list[type[Exception]],
    jitter: float,
) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=initial,
        backoff_coefficient=coefficient,
        maximum_interval=initial * cap,
        maximum_attempts=attempts,
        non_retryable_error_types=tuple(non_retryable),
        jitter=jitter,
    )


@functools.cache
def compensation_retry_policies() -> st.SearchStrategy[RetryPolicy | None]:
    """None (the default: unlimited attempts), or a drawn policy, sometimes unlimited."""
    return st.none() | retry_policies(maximum_attempts=st.none() | st.integers(1, 4))


# -- saga shapes -------------------------------------------------------------


class StepKind(enum.Enum):
    ACTION = "action"
    """A `Step`: an action, maybe a compensation."""
    SLEEP = "sleep"
    """`Sleep(seconds=...)`."""
    SIGNAL = "signal"
    """`WaitForSignal(...)`."""


SIGNAL_NAMES = ("approve", "ship")


ActionFactory = Callable[["StepShape"], Action]
CompensationFactory = Callable[["StepShape"], Compensation]


async def _noop_action(ctx: StepContext, saga_input: Any) -> None:
    return None


async def _noop_compensation(ctx: StepContext, saga_input: Any, result: Any) -> None:
    return None


@dataclass(frozen=True, slots=True)
class StepShape:
    """Plain data for one step of a saga."""

    name: str
    kind: StepKind = StepKind.ACTION
    compensable: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    compensation_retry: RetryPolicy | None = None
    timeout: float | None = None
    seconds: float = 0.0
    """SLEEP: how long."""
    signal: str = ""
    """SIGNAL: the awaited signal."""
    signal_timeout: float | None = None
    on_timeout: OnTimeout | Continue = OnTimeout.COMPENSATE

    def build(
        self, action: ActionFactory | None = None, compensate: CompensationFactory | None = None
    ) -> Step:
        if self.kind is StepKind.SLEEP:
            return Sleep(self.name, seconds=self.seconds)
        if self.kind is StepKind.SIGNAL:
            return WaitForSignal(
                self.name, self.signal, timeout=self.signal_timeout, on_timeout=self.on_timeout
            )
        undo: Compensation | None = None
        if self.compensable:
            undo = compensate(self) if compensate is not None else _noop_compensation
        return Step(
            self.name,
            action(self) if action is not None else _noop_action,
            compensate=undo,
            retry=self.retry,
            compensation_retry=self.compensation_retry,
            timeout=self.timeout,
        )


@dataclass(frozen=True, slots=True)
class SagaShape:
    """Plain data for one `Saga`: draw it, then `build` the definition."""

    name: str
    steps: tuple[StepShape, ...]
    deadline: float | None = None

    @property
    def signals(self) -> list[str]:
        """The signals its waiting steps await."""
        return sorted({s.signal for s in self.steps if s.kind is StepKind.SIGNAL})

    def build(
        self, action: ActionFactory | None = None, compensate: CompensationFactory | None = None
    ) -> Saga:
        """The `Saga` this shape describes; `action`/`compensate` make each step's callables."""
        return Saga(
            self.name,
            [shape.build(action, compensate) for shape in self.steps],
            deadline=self.deadline,
        )


STEP_NAMES = (
    "create_order",
    "charge_payment",
    "reserve_inventory",
    "send_confirmation",
    "a",
    "b",
    "x_1",
    "0",
    "_",
    "caf\u00e9",
    "step-with-dashes",
    "n" * 40,
)


@functools.cache
def step_names() -> st.SearchStrategy[str]:
    """Valid step names (no ':', no surrounding spaces); a few, so runs stay cheap."""
    return st.sampled_from(STEP_NAMES)


@functools.cache
def _unnamed_steps(waiting_steps: bool) -> st.SearchStrategy[Callable[[str], StepShape]]:
    """Everything about a step but its name (drawn apart, unique within a saga)."""
    actions = st.builds(
        functools.partial,
        st.just(StepShape),
        kind=st.just(StepKind.ACTION),
        compensable=st.sampled_from((True, True, False)),  # most actions can be undone
        retry=retry_policies(),
        compensation_retry=compensation_retry_policies(),
        timeout=st.none() | st.sampled_from((0.05, 1.0, 10.0)),
    )
    if not waiting_steps:
        return actions
    sleeps = st.builds(
        functools.partial,
        st.just(StepShape),
        kind=st.just(StepKind.SLEEP),
        seconds=st.sampled_from((0.0, 1.0, 86400.0)),
    )
    on_timeout: st.SearchStrategy[OnTimeout | Continue] = st.sampled_from(list(OnTimeout)) | (
        json_values().map(Continue)
    )
    signals = st.builds(
        functools.partial,
        st.just(StepShape),
        kind=st.just(StepKind.SIGNAL),
        signal=st.sampled_from(SIGNAL_NAMES),
        signal_timeout=st.none() | st.sampled_from((1.0, 5.0, 3600.0)),
        on_timeout=on_timeout,
    )
    kinds = {StepKind.ACTION: actions, StepKind.SLEEP: sleeps, StepKind.SIGNAL: signals}
    # Half of the steps are actions.
    return st.sampled_from(
        (StepKind.ACTION, StepKind.ACTION, StepKind.SLEEP, StepKind.SIGNAL)
    ).flatmap(kinds.__getitem__)


@functools.cache
def step_shapes(*, waiting_steps: bool = False) -> st.SearchStrategy[StepShape]:
    """One step: an action (compensable or not, few attempts, maybe a timeout) or a wait."""
    return st.builds(lambda name, make: make(name), step_names(), _unnamed_steps(waiting_steps))


@functools.cache
def saga_shapes(
    *,
    min_steps: int = 1,
    max_steps: int = 8,
    waiting_steps: bool = False,
    deadlines: bool = False,
) -> st.SearchStrategy[SagaShape]:
    """A saga of `min_steps` to `max_steps` steps, some without compensation.

    `waiting_steps` mixes in `Sleep` and `WaitForSignal` steps; `deadlines`
    sometimes gives the saga a deadline.
    """
    return _saga_shapes(min_steps, max_steps, waiting_steps, deadlines)


@st.composite
def _saga_shapes(
    draw: st.DrawFn, min_steps: int, max_steps: int, waiting_steps: bool, deadlines: bool
) -> SagaShape:
    # Draw the count first: a list strategy alone mostly makes very short sagas.
    count = draw(st.integers(min_steps, max_steps))
    names = draw(st.lists(step_names(), min_size=count, max_size=count, unique=True))
    # Mostly none: a deadline cuts every saga short once it passes.
    deadline = draw(st.sampled_from((None, None, None, 7200.0, 60.0, 1.0))) if deadlines else None
    return SagaShape(
        name=draw(step_names()),
        steps=tuple(draw(_unnamed_steps(waiting_steps))(name) for name in names),
        deadline=deadline,
    )
