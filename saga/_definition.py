"""`Saga` and `Step`: declarative saga definitions, validated when declared."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ._context import StepContext
from ._errors import DefinitionError
from ._policy import DEFAULT_COMPENSATION_RETRY, DEFAULT_STEP_RETRY, RetryPolicy
from ._waits import SignalSpec, SleepSpec

Action = Callable[[StepContext, Any], Awaitable[Any]]
"""`async def action(ctx, saga_input) -> result`."""

Compensation = Callable[[StepContext, Any, Any], Awaitable[Any]]
"""`async def compensate(ctx, saga_input, result_or_none) -> None`."""


def _is_async_callable(func: object) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def check_timeout(name: str, value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or not value > 0):
        raise DefinitionError(f"{name} must be None or a number of seconds > 0, got {value!r}")


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
        if not isinstance(name, str) or not name or ":" in name or name != name.strip():
            raise DefinitionError(
                f"step name must be a non-empty string without ':' or surrounding spaces, "
                f"got {name!r}"
            )
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


class Saga:
    """A named, ordered list of steps: the definition every instance runs.

    `input_type` validates and decodes the saga input (default: plain JSON
    values). `version` is recorded in each instance's snapshot. `deadline`
    is a total time budget in seconds: when it passes before the saga
    completes, the saga compensates. `signals` maps each awaited signal name
    to its payload type.

    Raises `DefinitionError` for an empty or duplicate step list or a bad name.
    """

    __slots__ = ("_index", "deadline", "input_type", "name", "signals", "steps", "version")

    def __init__(
        self,
        name: str,
        steps: Sequence[Step],
        *,
        input_type: Any = Any,
        version: int = 1,
        deadline: float | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise DefinitionError(f"saga name must be a non-empty string, got {name!r}")
        steps = tuple(steps)
        if not steps:
            raise DefinitionError(f"saga {name!r} needs at least one step")
        if not all(isinstance(step, Step) for step in steps):
            raise DefinitionError(f"saga {name!r}: steps must be Step instances")
        index: dict[str, int] = {}
        for position, step in enumerate(steps):
            if step.name in index:
                raise DefinitionError(f"saga {name!r}: duplicate step name {step.name!r}")
            index[step.name] = position
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise DefinitionError(f"saga {name!r}: version must be an int >= 1")
        check_timeout(f"saga {name!r}: deadline", deadline)
        signals: dict[str, Any] = {}
        for step in steps:
            if isinstance(step.wait, SignalSpec):
                known = signals.setdefault(step.wait.signal, step.wait.payload_type)
                if known != step.wait.payload_type:
                    raise DefinitionError(
                        f"saga {name!r}: signal {step.wait.signal!r} is awaited with two "
                        "different payload types"
                    )
        self.name = name
        self.steps = steps
        self.input_type = input_type
        self.version = version
        self.deadline = deadline
        self.signals = signals
        self._index = index

    def step_index(self, name: str) -> int:
        return self._index[name]

    def __repr__(self) -> str:
        return f"Saga({self.name!r}, {[s.name for s in self.steps]})"
