"""`SagaContext`: what a code saga's body receives, and the only way it touches the world.

The determinism rule: the body may branch only on its input and on values it
got through `ctx`; every side effect (`ctx.step`), wait, clock read and
random draw goes through `ctx`. On recovery the body runs again from the top
and each call returns its recorded outcome by position, so no action whose
outcome is durable runs twice.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from ._body import PendingCall, as_timestamp, return_type
from ._calls import CallKind
from ._definition import InterceptedStep, _is_async_callable, check_name, check_timeout
from ._errors import DefinitionError
from ._payload import decode_payload, encode_payload
from ._policy import RetryPolicy

if TYPE_CHECKING:
    from ._body import BodyRun
    from ._definition import Saga

T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
D = TypeVar("D")

_UNSET: Any = object()


class SagaContext:
    """The durable operations of a code saga's body (`Saga(name, body)`).

    `await ctx.step(name, action, *args, ...)` runs `action(step_ctx, *args)`
    with the write-ahead protocol of a step-list saga: the intent (with the
    arguments) is durable before the call, the outcome before the body goes
    on; retries, timeouts and compensation work the same. It returns the
    result, or raises `StepFailedError`. `ctx.child`, `ctx.parallel`,
    `ctx.sleep` and `ctx.wait_for_signal` are durable too; `ctx.now()`,
    `ctx.uuid()`, `ctx.random()` and `ctx.patched()` are recorded on first
    call and the same on replay.

    Keys: the k-th keyed call (`step`, `child`) of one name has the key
    `f"{saga_id}:{name}"` for k = 1 and `f"{saga_id}:{name}#{k}"` after;
    compensations add `:compensate`. A child's default saga id is its key.
    """

    __slots__ = ("_run", "saga_id")

    def __init__(self, run: BodyRun, saga_id: str) -> None:
        self._run = run
        self.saga_id = saga_id

    def step(
        self,
        name: str,
        action: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        compensate: Callable[..., Awaitable[Any]] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        compensation_retry: RetryPolicy | None = None,
        compensation_timeout: float | None = None,
        result_type: Any = _UNSET,
    ) -> PendingCall[T]:
        """A durable step: `action(step_ctx, *args)`, compensated by
        `compensate(step_ctx, *args, result_or_none)` if it may have taken effect
        and the saga compensates.

        `result_type` decodes the result the body gets back (and a
        compensation's `result`); by default the action's return annotation,
        when msgspec can decode into it. Raises `DefinitionError` for a bad
        name, a non-async function or a bad policy, and `PayloadError` when
        awaited with arguments msgspec cannot serialize.
        """
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
        declared = action
        interceptor = self._run.saga.interceptor
        if interceptor is not None:
            hooked = interceptor(
                InterceptedStep(name, action, compensate, timeout, compensation_timeout)
            )
            action, compensate = hooked.action, hooked.compensate
            timeout, compensation_timeout = hooked.timeout, hooked.compensation_timeout
        call: PendingCall[T] = PendingCall(
            self._run,
            CallKind.STEP,
            name,
            action=action,
            args=args,
            compensate=compensate,
            retry=retry,
            compensation_retry=compensation_retry,
            timeout=timeout,
            compensation_timeout=compensation_timeout,
            result_type=return_type(declared) if result_type is _UNSET else result_type,
        )
        call.declared = declared
        return call

    def child(
        self, saga: Saga[Any, T], input: Any, *, saga_id: str | None = None
    ) -> PendingCall[T]:
        """Start saga `saga` as a child (exactly once, also across crashes) and wait for it
        without holding memory. Returns its output, or raises `StepFailedError`: definitive if
        the child was compensated, ambiguous if it failed. When this saga compensates, a
        completed child is compensated as a unit. Raises `PayloadError` for an input that does
        not suit the child, `DefinitionError` for something that is not a `Saga`.
        """
        from ._definition import Saga

        if not isinstance(saga, Saga):
            raise DefinitionError(f"ctx.child takes a Saga definition, got {saga!r}")
        if saga_id is not None and (not isinstance(saga_id, str) or not saga_id.strip()):
            raise ValueError(f"saga_id must be a non-empty string, got {saga_id!r}")
        data = encode_payload(input, "input of saga", saga.name)
        decode_payload(data, saga.input_type, "input of saga", saga.name)
        return PendingCall(
            self._run,
            CallKind.CHILD,
            saga.name,
            args=(input,),
            result_type=saga.output_type,
            child=saga,
            child_input=data,
            target=saga_id,
        )

    @overload
    def parallel(self, a: PendingCall[A], /) -> _Group[tuple[A]]: ...
    @overload
    def parallel(self, a: PendingCall[A], b: PendingCall[B], /) -> _Group[tuple[A, B]]: ...
    @overload
    def parallel(
        self, a: PendingCall[A], b: PendingCall[B], c: PendingCall[C], /
    ) -> _Group[tuple[A, B, C]]: ...
    @overload
    def parallel(
        self, a: PendingCall[A], b: PendingCall[B], c: PendingCall[C], d: PendingCall[D], /
    ) -> _Group[tuple[A, B, C, D]]: ...
    @overload
    def parallel(self, *pending: PendingCall[Any]) -> _Group[tuple[Any, ...]]: ...

    def parallel(self, *pending: PendingCall[Any]) -> _Group[Any]:
        """Run steps and children (not yet awaited) concurrently; await their results in order.

        Each branch has its own intent and outcome. When one fails for good the
        others are let finish (interrupting them would make them ambiguous), then
        the first failure in argument order is raised. Every branch that may have
        taken effect is on the compensation stack; the branches of one group are
        compensated concurrently.
        """
        if not pending:
            raise DefinitionError("ctx.parallel needs at least one pending ctx.step or ctx.child")
        for call in pending:
            if not isinstance(call, PendingCall) or call.kind not in (
                CallKind.STEP,
                CallKind.CHILD,
            ):
                raise DefinitionError(
                    f"ctx.parallel takes ctx.step(...) and ctx.child(...) calls, got {call!r}"
                )
        return _Group(self._run, pending)

    gather = parallel

    def sleep(
        self, seconds: float | None = None, *, until: dt.datetime | float | None = None
    ) -> PendingCall[float]:
        """Wait durably for `seconds`, or until `until` (aware datetime or epoch seconds),
        without holding memory. Returns the wake-up time (epoch seconds)."""
        if (seconds is None) == (until is None):
            raise DefinitionError("ctx.sleep: give exactly one of seconds or until=")
        if seconds is not None:
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, int | float)
                or not math.isfinite(seconds)
                or seconds < 0
            ):
                raise ValueError(
                    f"ctx.sleep: seconds must be a finite number >= 0, got {seconds!r}"
                )
            wake = self._run.now() + seconds
        else:
            assert until is not None
            wake = as_timestamp(until, "ctx.sleep(until=...)")
        return PendingCall(self._run, CallKind.SLEEP, "sleep", result_type=float, until=wake)

    def wait_for_signal(
        self, name: str, *, payload_type: Any = Any, timeout: float | None = None
    ) -> PendingCall[Any]:
        """Wait durably for the signal `name` (sent with `Runtime.signal`; one sent earlier is
        kept for it). Returns its payload decoded as `payload_type` (a mismatch raises
        `PayloadError` here). After `timeout` seconds it raises `StepFailedError` (definitive).
        """
        check_name("signal", name)
        check_timeout(f"wait for {name!r}: timeout", timeout)
        return PendingCall(
            self._run, CallKind.SIGNAL, name, result_type=payload_type, wait_timeout=timeout
        )

    def now(self) -> dt.datetime:
        """The time (aware, UTC), recorded on first call: the same on replay."""
        data = self._run.value(CallKind.NOW, "now", self._run.now)
        stamp = decode_payload(data, float, "recorded ctx.now()")
        return dt.datetime.fromtimestamp(stamp, dt.UTC)

    def uuid(self) -> uuid.UUID:
        """A random UUID, recorded on first call: the same on replay."""
        data = self._run.value(CallKind.UUID, "uuid", self._run.uuid)
        return uuid.UUID(decode_payload(data, str, "recorded ctx.uuid()"))

    def random(self) -> float:
        """A float in [0, 1), recorded on first call: the same on replay."""
        data = self._run.value(CallKind.RANDOM, "random", self._run.random)
        value: float = decode_payload(data, float, "recorded ctx.random()")
        return value

    def patched(self, patch_id: str) -> bool:
        """Whether this execution takes the patched path `patch_id`.

        True for an execution that reaches this point after the patch shipped
        (recorded, so it stays True on replay); False while replaying history
        recorded before the patch, which then keeps the old path. Retire a
        patch in two deploys: first `ctx.deprecate_patch(patch_id)` with only
        the new path, then, once no unfinished saga recorded the patch, nothing.
        """
        check_name("patch", patch_id)
        recorded = self._run.recorded_patch(patch_id)
        if recorded is not None:
            return recorded
        data = self._run.value(CallKind.PATCH, patch_id, lambda: True)
        value: bool = decode_payload(data, bool, "recorded ctx.patched()")
        return value

    def deprecate_patch(self, patch_id: str) -> None:
        """The patch `patch_id` has shipped everywhere: the old path is gone. Consumes the
        patch's record in histories that have one, and records nothing in new ones."""
        check_name("patch", patch_id)
        self._run.recorded_patch(patch_id)

    def __repr__(self) -> str:
        return f"<SagaContext {self.saga_id!r}>"


class _Group(Generic[T]):
    """`ctx.parallel(...)`: await it for the branches' results, in argument order."""

    __slots__ = ("_calls", "_run")

    def __init__(self, run: BodyRun, calls: tuple[PendingCall[Any], ...]) -> None:
        self._run = run
        self._calls = calls

    def __await__(self) -> Generator[Any, None, T]:
        values = yield from self._run.wait(self._calls, grouped=True)
        results: T = tuple(values)  # type: ignore[assignment]
        return results
