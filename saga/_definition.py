"""`Saga` and `Step`: declarative saga definitions, validated when declared."""

from __future__ import annotations

import copy
import functools
import inspect
import math
import types
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, overload

import msgspec
from typing_extensions import TypeVar

from ._context import StepContext
from ._errors import DefinitionError
from ._policy import DEFAULT_COMPENSATION_RETRY, DEFAULT_STEP_RETRY, RetryPolicy
from ._waits import SignalSpec, SleepSpec

if TYPE_CHECKING:
    from ._saga_context import SagaContext

Action = Callable[[StepContext, Any], Awaitable[Any]]
"""`async def action(ctx, saga_input) -> result`."""

Compensation = Callable[[StepContext, Any, Any], Awaitable[Any]]
"""`async def compensate(ctx, saga_input, result_or_none) -> None`."""


def _is_async_callable(func: object) -> bool:
    if type(func) is types.FunctionType:  # the usual case, asked at every ctx.step: quickly
        return bool(func.__code__.co_flags & inspect.CO_COROUTINE)
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def check_name(what: str, name: object) -> None:
    """Names become parts of idempotency keys (`saga_id:name`, `name#k`): keep them parseable."""
    if not isinstance(name, str) or not name or ":" in name or "#" in name or name != name.strip():
        raise DefinitionError(
            f"{what} name must be a non-empty string without ':', '#' or surrounding spaces, "
            f"got {name!r}"
        )


def check_timeout(name: str, value: float | None) -> None:
    if value is not None and (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not value > 0
    ):
        raise DefinitionError(
            f"{name} must be None or a finite number of seconds > 0, got {value!r}"
        )


class Step:
    """One local transaction of a saga, with its optional compensation.

    `timeout` bounds each attempt (a timed-out attempt is ambiguous: it may
    have taken effect). `retry` governs the action's retries,
    `compensation_retry` the compensation's (default: unlimited attempts,
    backoff capped at 60 s). `result_type` is the type the recorded result
    is decoded into for later steps and the compensation (default: plain
    JSON values).

    Raises `DefinitionError` for an invalid name, a non-async callable or a
    bad policy.
    """

    __slots__ = (
        "action",
        "compensate",
        "compensation_retry",
        "compensation_timeout",
        "name",
        "result_type",
        "retry",
        "timeout",
        "wait",
    )

    def __init__(
        self,
        name: str,
        action: Action,
        *,
        compensate: Compensation | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        compensation_retry: RetryPolicy | None = None,
        compensation_timeout: float | None = None,
        result_type: Any = Any,
    ) -> None:
        check_name("step", name)
        if not _is_async_callable(action):
            raise DefinitionError(f"step {name!r}: action must be an async function")
        if compensate is not None and not _is_async_callable(compensate):
            raise DefinitionError(f"step {name!r}: compensate must be an async function")
        for label, policy in (("retry", retry), ("compensation_retry", compensation_retry)):
            if policy is not None and not isinstance(policy, RetryPolicy):
                raise DefinitionError(f"step {name!r}: {label} must be a RetryPolicy")
        check_timeout(f"step {name!r}: timeout", timeout)
        check_timeout(f"step {name!r}: compensation_timeout", compensation_timeout)
        self.name = name
        self.action = action
        self.compensate = compensate
        self.retry = retry if retry is not None else DEFAULT_STEP_RETRY
        self.timeout = timeout
        self.compensation_retry = (
            compensation_retry if compensation_retry is not None else DEFAULT_COMPENSATION_RETRY
        )
        self.compensation_timeout = compensation_timeout
        self.result_type = result_type
        self.wait: SleepSpec | SignalSpec | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Parallel:
    """A step-list saga element: `steps` run concurrently, each with its own intent and outcome.

    The saga goes on once every branch has succeeded. When one fails for
    good, the others are let finish (interrupting them would leave them
    ambiguous), then every branch that may have taken effect is compensated,
    concurrently, before the steps before the group. Waiting steps cannot be
    branches. Raises `DefinitionError` for a bad name or bad branches.
    """

    __slots__ = ("name", "steps")

    def __init__(self, name: str, steps: Sequence[Step]) -> None:
        check_name("parallel group", name)
        steps = tuple(steps)
        if not steps or not all(isinstance(step, Step) for step in steps):
            raise DefinitionError(f"parallel group {name!r} needs one or more Step branches")
        for step in steps:
            if step.wait is not None:
                raise DefinitionError(
                    f"parallel group {name!r}: {step!r} waits; a branch must be a plain Step"
                )
        self.name = name
        self.steps = steps

    def __repr__(self) -> str:
        return f"Parallel({self.name!r}, {list(self.steps)!r})"


InputT = TypeVar("InputT", default=Any)
OutputT = TypeVar("OutputT", default=Any)

Body = Callable[["SagaContext", Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class InterceptedStep:
    """A code saga's `ctx.step` call as an interceptor sees it: what it may replace."""

    name: str
    action: Callable[..., Awaitable[Any]]
    compensate: Callable[..., Awaitable[Any]] | None
    timeout: float | None
    compensation_timeout: float | None


StepInterceptor = Callable[[InterceptedStep], InterceptedStep]
"""A test kit's hook on a code saga's steps (see `Saga.intercepted`)."""
"""`async def body(ctx: SagaContext, saga_input) -> output`: a code saga."""


class Saga(Generic[InputT, OutputT]):
    """A saga definition: a named list of steps, or an async body (a code saga).

    `Saga(name, [Step(...), Parallel(...), Sleep(...), ...])` runs the steps
    in order; its output maps each step's name to its result.
    `Saga(name, body)` runs `async def body(ctx: SagaContext, input) ->
    output`, whose `ctx` calls are durable (see `SagaContext`); its output is
    what the body returns, decoded as `output_type` (default: the body's
    return annotation, when it has one msgspec can decode into).

    `input_type` validates and decodes the saga input (default: plain JSON
    values). `version` is recorded in each instance's snapshot. `deadline`
    is a total time budget in seconds: when it passes before the saga
    completes, the saga compensates. `signals` maps each awaited signal name
    to its payload type: derived from a step list; optional for a code saga
    (when given, `Runtime.signal` checks names and payloads up front).

    Raises `DefinitionError` for an empty or duplicate step list, a body
    that is not an async function, or a bad name, version or deadline.
    """

    __slots__ = (
        "_index",
        "body",
        "deadline",
        "element_at",
        "elements",
        "group_of",
        "input_type",
        "interceptor",
        "name",
        "next_element_at",
        "output_type",
        "signals",
        "signals_declared",
        "steps",
        "version",
    )

    @overload
    def __init__(
        self: Saga[Any, dict[str, Any]],
        name: str,
        steps: Sequence[Step | Parallel],
        *,
        input_type: Any = Any,
        version: int = 1,
        deadline: float | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self: Saga[InputT, OutputT],
        name: str,
        steps: Callable[[SagaContext, InputT], Awaitable[OutputT]],
        *,
        input_type: Any = Any,
        output_type: Any = None,
        version: int = 1,
        deadline: float | None = None,
        signals: Mapping[str, Any] | None = None,
    ) -> None: ...

    def __init__(
        self,
        name: str,
        steps: Sequence[Step | Parallel] | Body,
        *,
        input_type: Any = Any,
        output_type: Any = None,
        version: int = 1,
        deadline: float | None = None,
        signals: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise DefinitionError(f"saga name must be a non-empty string, got {name!r}")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise DefinitionError(f"saga {name!r}: version must be an int >= 1")
        check_timeout(f"saga {name!r}: deadline", deadline)
        self.name = name
        self.input_type = input_type
        self.interceptor: StepInterceptor | None = None
        self.version = version
        self.deadline = deadline
        if callable(steps) and not isinstance(steps, Sequence):
            if not _is_async_callable(steps):
                raise DefinitionError(f"saga {name!r}: a body must be an async function")
            self.body: Body | None = steps
            self.steps: tuple[Step, ...] = ()
            self.elements: tuple[tuple[int, ...], ...] = ()
            self.group_of: tuple[int | None, ...] = ()
            self.element_at: tuple[range, ...] = ()
            self.next_element_at: tuple[range | None, ...] = ()
            self._index: dict[str, int] = {}
            self.signals: dict[str, Any] = dict(signals or {})
            self.signals_declared = signals is not None
            self.output_type = _return_type(steps) if output_type is None else output_type
            return
        if signals is not None or output_type is not None:
            raise DefinitionError(
                f"saga {name!r}: signals= and output_type= are for code sagas; "
                "a step list derives them"
            )
        self.body = None
        self.output_type = dict[str, Any]
        self._flatten(tuple(steps))

    def _flatten(self, elements: tuple[Step | Parallel, ...]) -> None:
        name = self.name
        if not elements:
            raise DefinitionError(f"saga {name!r} needs at least one step")
        flat: list[Step] = []
        positions: list[tuple[int, ...]] = []
        group_of: list[int | None] = []
        for element in elements:
            if isinstance(element, Parallel):
                first = len(flat)
                flat.extend(element.steps)
                positions.append(tuple(range(first, len(flat))))
                group_of.extend([first] * len(element.steps))
            elif isinstance(element, Step):
                positions.append((len(flat),))
                flat.append(element)
                group_of.append(None)
            else:
                raise DefinitionError(f"saga {name!r}: steps must be Step or Parallel instances")
        index: dict[str, int] = {}
        for position, step in enumerate(flat):
            if step.name in index:
                raise DefinitionError(f"saga {name!r}: duplicate step name {step.name!r}")
            index[step.name] = position
        signals: dict[str, Any] = {}
        for step in flat:
            if isinstance(step.wait, SignalSpec):
                known = signals.setdefault(step.wait.signal, step.wait.payload_type)
                if known != step.wait.payload_type:
                    raise DefinitionError(
                        f"saga {name!r}: signal {step.wait.signal!r} is awaited with two "
                        "different payload types"
                    )
        self.steps = tuple(flat)
        self.elements = tuple(positions)
        self.group_of = tuple(group_of)
        # Per position: its element's positions, and the next element's (the machine's
        # hot path asks for them at every step).
        ranges = [range(element[0], element[-1] + 1) for element in positions]
        self.element_at = tuple(ranges[k] for k, element in enumerate(positions) for _ in element)
        self.next_element_at = tuple(
            ranges[k + 1] if k + 1 < len(ranges) else None
            for k, element in enumerate(positions)
            for _ in element
        )
        self.signals = signals
        self.signals_declared = True
        self._index = index

    @property
    def is_code(self) -> bool:
        """Whether this is a code saga (an async body) rather than a step list."""
        return self.body is not None

    def intercepted(self, interceptor: StepInterceptor) -> Saga[InputT, OutputT]:
        """A copy of this code saga whose every `ctx.step` passes through `interceptor`, which
        may wrap its action and compensation or shorten its timeouts. A test kit's hook (the
        fault kit wraps each call with it): keys, recorded calls and types are unchanged."""
        if self.body is None:
            raise DefinitionError(f"saga {self.name!r}: only a code saga can be intercepted")
        clone = copy.copy(self)
        clone.interceptor = interceptor
        return clone

    def step_index(self, name: str) -> int:
        return self._index[name]

    def __repr__(self) -> str:
        if self.body is not None:
            return f"Saga({self.name!r}, {getattr(self.body, '__qualname__', self.body)!r})"
        return f"Saga({self.name!r}, {[s.name for s in self.steps]})"


def _return_type(body: Body) -> Any:
    """The body's return annotation, when it is one msgspec can decode into; else Any."""
    try:
        hint = typing.get_type_hints(body).get("return", Any)
    except Exception:  # an annotation that does not resolve: plain JSON values
        return Any
    if hint is None or hint is type(None):
        return Any
    try:
        msgspec.json.Decoder(hint)
    except TypeError:
        return Any
    return hint
