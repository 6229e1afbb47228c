"""Running a code saga's body: stepped by hand, replayed against its recorded calls.

The body is an `async def`, but it never runs on the event loop: the driver
steps its coroutine with `send`. Every `ctx` call the body awaits yields a
private marker up to the driver while its outcome is not final; any other
awaitable (an `asyncio.sleep`, a network call) is refused, because the body
must stay a deterministic function of its input and its recorded outcomes.

Replay is the same code path as a first run. Positions count the body's
calls; a position already in the saga's state is recorded: the call must be
the same (kind, name, group) or the run diverged (`NonDeterminismError`),
and its outcome, once final, comes back at once without yielding. A position
past the recorded ones is new: its `CallSpec` joins the reaction the driver
hands to the state machine when the body next waits, returns or raises.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import inspect
import random
import typing
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from ._calls import KEYED, Backoff, CallKind, Calls, CallSpec, Raised, Reaction, Returned
from ._errorinfo import ErrorInfo
from ._errors import NonDeterminismError, PayloadError, StepFailedError
from ._model import SagaState, StepStatus
from ._payload import decode_payload, encode_payload
from ._policy import DEFAULT_COMPENSATION_RETRY, DEFAULT_STEP_RETRY, RetryPolicy

if TYPE_CHECKING:
    from ._definition import Saga

T = TypeVar("T")

_BLOCK = object()
"""What a waiting `ctx` call yields up through the body's coroutine to the driver."""

_FINAL = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.AMBIGUOUS})


class _BodyClosedError(Exception):
    """Raised by a `ctx` call made while the driver discards the body (a `finally` block)."""


class PendingCall(Generic[T]):
    """A `ctx.step` / `ctx.child` / wait not awaited yet: await it, or pass it to `ctx.parallel`.

    Built by `SagaContext`, never by users. Once submitted it also serves
    the driver: the live functions and options of its position.
    """

    __slots__ = (
        "_run",
        "action",
        "args",
        "child",
        "child_input",
        "compensate",
        "compensation_retry",
        "compensation_timeout",
        "declared",
        "kind",
        "name",
        "occurrence",
        "position",
        "result_type",
        "retry",
        "target",
        "timeout",
        "until",
        "wait_timeout",
    )

    def __init__(
        self,
        run: BodyRun,
        kind: CallKind,
        name: str,
        *,
        action: Callable[..., Awaitable[Any]] | None = None,
        args: tuple[Any, ...] = (),
        compensate: Callable[..., Awaitable[Any]] | None = None,
        retry: RetryPolicy | None = None,
        compensation_retry: RetryPolicy | None = None,
        timeout: float | None = None,
        compensation_timeout: float | None = None,
        result_type: Any = Any,
        until: float | None = None,
        wait_timeout: float | None = None,
        child: Saga[Any, Any] | None = None,
        child_input: bytes | None = None,
        target: str | None = None,
    ) -> None:
        self._run = run
        self.kind = kind
        self.name = name
        self.action = action
        self.declared = action
        """The action as the body gave it (an interceptor may wrap `action`): its annotations
        decode recorded arguments."""
        self.args = args
        self.compensate = compensate
        self.retry = retry if retry is not None else DEFAULT_STEP_RETRY
        self.compensation_retry = (
            compensation_retry if compensation_retry is not None else DEFAULT_COMPENSATION_RETRY
        )
        self.timeout = timeout
        self.compensation_timeout = compensation_timeout
        self.result_type = result_type
        self.until = until
        self.wait_timeout = wait_timeout
        self.child = child
        self.child_input = child_input
        self.target = target
        self.position = -1
        self.occurrence = 1

    @property
    def label(self) -> str:
        return self.name if self.occurrence == 1 else f"{self.name}#{self.occurrence}"

    def __await__(self) -> Generator[Any, None, T]:
        values = yield from self._run.wait((self,), grouped=False)
        value: T = values[0]
        return value

    def spec(self, group: int | None) -> CallSpec:
        """This call as recorded with its intent (raises `PayloadError` for bad arguments)."""
        args = _encode_args(self.args, self.label) if self.args else None
        retry = self.retry.backoff
        compensation_retry = self.compensation_retry.backoff
        return CallSpec(
            kind=self.kind,
            name=self.name,
            position=self.position,
            occurrence=self.occurrence,
            **({"args": msgspec.Raw(args)} if args is not None else {}),
            group=group,
            compensable=self.compensate is not None or self.kind is CallKind.CHILD,
            retry=None if retry == _DEFAULT_STEP else retry,
            compensation_retry=(
                None if compensation_retry == _DEFAULT_COMPENSATION else compensation_retry
            ),
            until=self.until,
            timeout=self.wait_timeout,
            child=None if self.child is None else self.child.name,
            child_version=None if self.child is None else self.child.version,
            target=self.target,
        )

    def __repr__(self) -> str:
        return f"<{self.kind} call {self.label!r}>"


_DEFAULT_STEP: Backoff = DEFAULT_STEP_RETRY.backoff
_DEFAULT_COMPENSATION: Backoff = DEFAULT_COMPENSATION_RETRY.backoff


def _encode_args(args: tuple[Any, ...], label: str) -> bytes:
    return encode_payload(list(args), "arguments of step", label)


@functools.cache
def argument_types(action: Callable[..., Any]) -> tuple[Any, ...] | None:
    """The annotated types of `action`'s arguments after its context (None: no annotations
    to decode by, or a `*args`): recorded arguments are decoded into them."""
    try:
        signature = inspect.signature(action)
        hints = typing.get_type_hints(action)
    except (TypeError, ValueError, NameError):
        return None
    parameters = list(signature.parameters.values())[1:]
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return None
    return tuple(hints.get(p.name, Any) for p in parameters)


@functools.cache
def _typed_arguments(action: Callable[..., Any]) -> tuple[Any, ...] | None:
    """`argument_types`, or None when none of them is more than `Any`."""
    types = argument_types(action)
    return None if types is None or all(t is Any for t in types) else types


def decode_args(call: PendingCall[Any], raw: bytes) -> tuple[Any, ...]:
    """A call's recorded arguments, decoded by its action's annotations where it has them."""
    values = decode_payload(raw, list[Any], "arguments of step", call.label)
    types = _typed_arguments(call.declared) if call.declared is not None else None
    if types is None or len(types) != len(values):
        return tuple(values)
    return tuple(
        value if t is Any else msgspec.convert(value, t)
        for value, t in zip(values, types, strict=True)
    )


@functools.cache
def return_type(action: Callable[..., Any]) -> Any:
    """`action`'s return annotation when msgspec can decode into it (else Any)."""
    try:
        hint = typing.get_type_hints(action).get("return", Any)
    except (TypeError, ValueError, NameError):
        return Any
    if hint is None or hint is type(None):
        return Any
    if typing.get_origin(hint) in (Awaitable, Coroutine):
        return Any
    try:
        msgspec.json.Decoder(hint)
    except TypeError:
        return Any
    return hint


def _describe(kind: CallKind | str, label: str) -> str:
    return f"{kind} {label!r}"


class BodyRun:
    """One run of a code saga's body, from the top, against the saga's recorded calls.

    Built by the saga layer's driver; `start` replays, `react` resumes the
    body once the calls it waits for are final. `live(position)` gives the
    functions of each call the body has made in this run.
    """

    __slots__ = (
        "_closing",
        "_coro",
        "_ctx",
        "_finished",
        "_live",
        "_next",
        "_now",
        "_occurrences",
        "_pending",
        "_rng",
        "diverged",
        "saga",
        "saga_id",
        "state",
    )

    def __init__(
        self,
        saga: Saga[Any, Any],
        saga_id: str,
        saga_input: Any,
        state: SagaState,
        *,
        now: Callable[[], float],
        rng: random.Random,
    ) -> None:
        from ._saga_context import SagaContext

        assert saga.body is not None
        self.saga = saga
        self.saga_id = saga_id
        self.state = state
        self._now = now
        self._rng = rng
        self._ctx = SagaContext(self, saga_id)
        coro = saga.body(self._ctx, saga_input)
        if not inspect.iscoroutine(coro):
            raise TypeError(f"saga {saga.name!r}: its body must be an async function")
        self._coro: Coroutine[Any, Any, Any] = coro
        self._next = 0
        self._pending: list[CallSpec] = []
        self._live: dict[int, PendingCall[Any]] = {}
        self._occurrences: Counter[str] = Counter()
        self._closing = False
        self._finished = False
        self.diverged: NonDeterminismError | None = None

    # -- the driver's side ---------------------------------------------------------

    def start(self) -> Reaction | None:
        """Run the body from the top: None once it waits on a recorded call still under way,
        else its reaction (new calls, a return, a raise). Check `diverged` after."""
        return self._resume()

    def react(self, state: SagaState) -> Reaction:
        """The calls the body waits on are final in `state`: its reaction to them."""
        self.state = state
        reaction = self._resume()
        if reaction is None:
            raise RuntimeError(f"saga {self.saga_id!r}: the body waits on a call already ended")
        return reaction

    def live(self, position: int) -> PendingCall[Any]:
        """The call the body made at `position` in this run (KeyError if it did not)."""
        return self._live[position]

    def close(self) -> None:
        """Discard the body (the actor stops): its `finally` blocks run, without ctx calls."""
        if self._finished:
            return
        self._finished = self._closing = True
        with contextlib.suppress(Exception, GeneratorExit):  # a body that misbehaves on close
            self._coro.close()

    def _resume(self) -> Reaction | None:
        if self._finished:
            raise RuntimeError(f"saga {self.saga_id!r}: its body has already ended")
        error: BaseException | None = None
        while True:
            try:
                yielded = self._coro.send(None) if error is None else self._coro.throw(error)
            except StopIteration as stop:
                self._finished = True
                return self._returned(stop.value)
            except (KeyboardInterrupt, SystemExit):
                self._finished = True
                raise
            except BaseException as exc:
                self._finished = True
                return self._raised(exc)
            if yielded is _BLOCK:
                break
            error = TypeError(
                f"a saga body may await only ctx calls (ctx.step, ctx.sleep, ctx.parallel, ...); "
                f"saga {self.saga_id!r} awaited {yielded!r}"
            )
        if self._pending:
            reaction = Calls(tuple(self._pending))
            self._pending = []
            return reaction
        return None

    def _unreplayed(self, new: str) -> bool:
        """The body ended before reaching every recorded call: that is a divergence too."""
        if self.diverged is not None:
            return True  # the first divergence is the one to report
        steps = self.state.steps
        if self._next >= len(steps):
            return False
        recorded = steps[self._next].call
        assert recorded is not None
        self.diverged = NonDeterminismError(
            self.saga_id, self._next + 1, _describe(recorded.kind, recorded.label), new
        )
        return True

    def _returned(self, value: Any) -> Reaction:
        self._pending = []
        if self._unreplayed("a return"):
            return Raised(ErrorInfo(type="saga.NonDeterminismError", message=str(self.diverged)))
        try:
            data = encode_payload(value, "output of saga", self.saga.name)
            decode_payload(data, self.saga.output_type, "output of saga", self.saga.name)
        except PayloadError as exc:
            return Raised(_error_info(exc))
        return Returned(msgspec.Raw(data))

    def _raised(self, error: BaseException) -> Reaction:
        self._pending = []
        if self._unreplayed(f"a raise of {type(error).__name__}"):
            return Raised(ErrorInfo(type="saga.NonDeterminismError", message=str(self.diverged)))
        if isinstance(error, StepFailedError) and error.position is not None:
            return Raised(error.error, step=error.position)  # escaped the body unchanged
        return Raised(_error_info(error))

    # -- the body's side (through SagaContext) -------------------------------------

    def wait(
        self, calls: Sequence[PendingCall[Any]], *, grouped: bool
    ) -> Generator[object, None, list[Any]]:
        """Submit `calls` (a group if `grouped`), wait until all are final, return their
        results in order or raise the first failure."""
        if self._closing:
            raise _BodyClosedError("the saga's body is being discarded: no more ctx calls")
        group = self._next if grouped else None
        for call in calls:
            self._submit(call, group)
        positions = [call.position for call in calls]
        while not self._final(positions):
            yield _BLOCK
        return self._results(calls)

    def value(self, kind: CallKind, name: str, make: Callable[[], Any]) -> bytes:
        """A recorded value call (now, uuid, random, patched): the recorded value, or a new one."""
        if self._closing:
            raise _BodyClosedError("the saga's body is being discarded: no more ctx calls")
        position = self._next
        self._next += 1
        steps = self.state.steps
        if position < len(steps):
            recorded = steps[position].call
            assert recorded is not None
            self._check(position, recorded, kind, name, None)
            return bytes(recorded.value)
        data = encode_payload(make(), f"value of ctx.{kind}")
        self._pending.append(
            CallSpec(kind=kind, name=name, position=position, value=msgspec.Raw(data))
        )
        return data

    def recorded_patch(self, patch_id: str) -> bool | None:
        """At a recorded position: True if it records this patch (consumed), False if it
        records something else (history from before the patch). None at a new position."""
        position = self._next
        steps = self.state.steps
        if position >= len(steps):
            return None
        recorded = steps[position].call
        if recorded is not None and recorded.kind is CallKind.PATCH and recorded.name == patch_id:
            self._next += 1
            return True
        return False

    def now(self) -> float:
        return self._now()

    def random(self) -> float:
        return self._rng.random()

    def uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def key(self, label: str) -> str:
        return f"{self.saga_id}:{label}"

    def occurrence_of(self, name: str) -> int:
        """The number the next keyed call of `name` gets (1 for the first)."""
        return self._occurrences[name] + 1

    def _submit(self, call: PendingCall[Any], group: int | None) -> None:
        if call.position != -1:
            raise RuntimeError(f"{call!r} was awaited already; make a new ctx call")
        position = self._next
        self._next += 1
        call.position = position
        if call.kind in KEYED:
            self._occurrences[call.name] += 1
            call.occurrence = self._occurrences[call.name]
        steps = self.state.steps
        if position < len(steps):
            recorded = steps[position].call
            assert recorded is not None
            self._check(position, recorded, call.kind, call.label, group)
            if call.kind is CallKind.CHILD and recorded.target is not None:
                call.target = recorded.target
        else:
            if call.kind is CallKind.CHILD and call.target is None:
                call.target = self.key(call.label)  # a child's default id: its key as a step
            self._pending.append(call.spec(group))
        self._live[position] = call

    def _check(
        self, position: int, recorded: CallSpec, kind: CallKind, label: str, group: int | None
    ) -> None:
        if recorded.kind is kind and recorded.label == label and recorded.group == group:
            return
        where = "" if group is None else f" in a parallel group from call {group + 1}"
        error = NonDeterminismError(
            self.saga_id,
            position + 1,
            _describe(recorded.kind, recorded.label)
            + (
                ""
                if recorded.group is None
                else f" in a parallel group from call {recorded.group + 1}"
            ),
            _describe(kind, label) + where,
        )
        self.diverged = self.diverged or error
        raise error

    def _final(self, positions: Sequence[int]) -> bool:
        steps = self.state.steps
        return all(p < len(steps) and steps[p].status in _FINAL for p in positions)

    def _results(self, calls: Sequence[PendingCall[Any]]) -> list[Any]:
        steps = self.state.steps
        values: list[Any] = []
        for call in calls:
            step = steps[call.position]
            if step.status is not StepStatus.SUCCEEDED:
                assert step.error is not None
                raise StepFailedError(
                    call.name,
                    step.error,
                    ambiguous=step.status is StepStatus.AMBIGUOUS,
                    position=call.position,
                )
            values.append(
                decode_payload(bytes(step.result), call.result_type, "result of step", call.label)
            )
        return values


def _error_info(error: BaseException) -> ErrorInfo:
    from ._step_runner import error_info

    return error_info(error)


def as_timestamp(until: dt.datetime | float, what: str) -> float:
    """An aware datetime or epoch seconds as epoch seconds (finite)."""
    import math

    if isinstance(until, dt.datetime):
        if until.tzinfo is None:
            raise TypeError(f"{what} must be an aware datetime (with tzinfo)")
        return until.timestamp()
    if isinstance(until, int | float) and not isinstance(until, bool) and math.isfinite(until):
        return float(until)
    raise TypeError(f"{what} must be an aware datetime or finite epoch seconds, got {until!r}")
