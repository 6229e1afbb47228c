"""The saga state machine: `transition(saga, state, event) -> Transition(state, commands)`.

Theory of operation
-------------------
A saga instance is a `SagaState` snapshot. Everything that happens to it
arrives as an `Event`; `transition` computes the next snapshot and the
`Command`s to carry out. It does no I/O, reads no clock and draws no random
number: time and jitter arrive inside events. That makes it a plain function
Hypothesis can drive, and it makes recovery trivial: the driver persists the
new snapshot (and appends the event to the history) before it carries out any
command, so after a crash the snapshot says exactly what was in flight.

A saga is a sequence of positions, run group by group: a group is one step
(or call) or a parallel group of them. Each position has an intent (durable
before its action runs) and an outcome. Once every position of the group
under way has its final outcome, the program decides what comes next: a
step list's definition (the next element, completion, or compensation when a
step failed for good), or a code saga's body, whose reaction arrives inside
the event (`then`: new calls, a return, a raise). An event that finishes a
group but lacks the body's reaction yields `Advance`: the driver asks the
body and applies the same event again with the reaction.

Compensation runs over the positions that may have taken effect (SUCCEEDED
or AMBIGUOUS, with a compensation): the newest group first, the members of
one group concurrently. FAILED (definitive) and PENDING positions are never
compensated. Once compensation begins no forward position ever runs again.
A definitive compensation failure ends the saga FAILED once nothing else of
its group still runs. A child saga's compensation is requested from the child
(it rolls back as a unit) and waits for the child's report.

What "never ran" means, for a cancellation that arrives before the driver
started a position's action (`CancelRequested.not_started`): the position's
first attempt, unless its intent outlived an interruption (`Recovered` and
`Resumed` mark in-flight intents `interrupted`: their actions may have run).

If `transition` returns the very same state object, nothing changed and there
is nothing to persist (a stale timer, a recovery with nothing in flight).

Accepted events by status (the rest raise `InvalidTransitionError`; "new" is
the state before `SagaStarted`, seq 0)
---------------------------------------------------------------------------
  event                  new  run  wait  comp  done  undone  failed  susp
  SagaStarted             x
  StepSucceeded                x
  StepFailed                   x
  StepWaiting                  x
  SignalReceived               x    x     x     x     x       x
  CancelRequested              x    x     x     x     x       x
  CompensateRequested          x    x     x     x     x       x
  ChildEnded                   x    x     x     x     x       x
  CompensationSucceeded                   x
  CompensationFailed                      x
  CompensationWaiting                     x
  TimerFired                   x    x     x     x     x       x      x
  Recovered                    x    x     x     x     x       x      x
  Suspended                    x    x     x
  Resumed                                                             x

(run: running, wait: waiting, comp: compensating, done: completed,
undone: compensated, susp: suspended.)

Transition table (status, event -> effect)
------------------------------------------
  (new)         SagaStarted            first group RUNNING(1)            RunStep*
                                       (code saga: its body's first reaction)
  RUNNING       StepSucceeded i        i SUCCEEDED; once its group is final:
                                       the next group RUNNING(1)         RunStep*
                                       or COMPLETED                      Finish
                                       or, past the deadline: compensate
                                       (code saga: the body's reaction decides)
  RUNNING       StepFailed i transient, attempts left
                                       i RETRYING until at+delay         ScheduleWakeup
  RUNNING       StepFailed i transient, no attempts left / ambiguous
                                       i AMBIGUOUS; once the group is final: compensate
  RUNNING       StepFailed i definitive
                                       i FAILED; once the group is final: compensate
                                       (code saga: the body gets StepFailedError)
  RUNNING       StepWaiting i (a waiting step's action: its deadline; a child: started)
                  signal already in the inbox: consume it, as StepSucceeded
                  otherwise            i WAITING; saga WAITING           ScheduleWakeup?
  WAITING       SignalReceived, awaited  as StepSucceeded with the payload
  live          SignalReceived, other  kept in the inbox (deduplicated by key)
  RUNNING/WAIT  CancelRequested        positions under way AMBIGUOUS (a sleep or signal
                                       wait: FAILED; never ran: PENDING); compensate
  COMPENSATING  CancelRequested        recorded, nothing else
  RUNNING/WAIT  CompensateRequested    as CancelRequested (a parent rolls its child back)
  COMPLETED     CompensateRequested    compensate (the child rolls back as a unit)
  undone/failed CompensateRequested    recorded; reports its status again  Finish
  live          ChildEnded i           forward: completed: as StepSucceeded; compensated:
                                       FAILED; failed: AMBIGUOUS. A compensation waiting
                                       for it: compensated: as CompensationSucceeded;
                                       failed: as CompensationFailed definitive
  COMPENSATING  CompensationSucceeded  j COMPENSATED; next group, or COMPENSATED Run*/Finish
  COMPENSATING  CompensationFailed transient, attempts left
                                       j RETRYING                        ScheduleWakeup
  COMPENSATING  CompensationFailed otherwise
                                       j FAILED; once its group is still: saga FAILED Finish
  COMPENSATING  CompensationWaiting j  j WAITING (for its child)
  RUNNING/WAIT  TimerFired, deadline passed: as CancelRequested
  live          TimerFired, retries due  their next attempts RUNNING     Run*
  WAITING       TimerFired, wait over  sleep: as StepSucceeded; signal timeout:
                                       FAILED (compensate), saga FAILED, or continue
                                       with the default (`OnTimeout`)
  live          TimerFired, not due    unchanged                         ScheduleWakeup
  live          Recovered, in flight   recoveries+1; same attempts again,
                                       marked interrupted                Run*
                  ... past the limit   SUSPENDED                         Finish
  live          Recovered, idle        unchanged                         ScheduleWakeup?
  live          Suspended              SUSPENDED                         Finish
  SUSPENDED     Resumed                previous status; as Recovered     Run*/Schedule
  terminal      Recovered / TimerFired unchanged                         (none)
  terminal      SignalReceived / CancelRequested / ChildEnded: recorded, ignored

"Compensate": status COMPENSATING; run the compensations of the newest group
with positions to compensate (attempt 1 each), or finish COMPENSATED when
there is none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import msgspec
from msgspec.structs import replace

from . import _program as program
from ._calls import CallKind, Calls, Raised, Reaction, Returned
from ._commands import Advance, Command, Finish, RunCompensation, RunStep, ScheduleWakeup
from ._definition import Saga
from ._errors import InvalidTransitionError
from ._events import (
    CancelRequested,
    ChildEnded,
    CompensateRequested,
    CompensationFailed,
    CompensationSucceeded,
    CompensationWaiting,
    Event,
    Recovered,
    Resumed,
    SagaStarted,
    SignalReceived,
    StepFailed,
    StepSucceeded,
    StepWaiting,
    Suspended,
    TimerFired,
)
from ._model import (
    FORWARD,
    LIVE,
    CompensationStatus,
    ErrorInfo,
    FailureKind,
    SagaState,
    SagaStatus,
    Signal,
    StepState,
    StepStatus,
)
from ._waits import Continue, OnTimeout


class Transition(NamedTuple):
    """The result of `transition`: the next snapshot and the commands to carry out."""

    state: SagaState
    commands: Sequence[Command]

    @property
    def needs_reaction(self) -> bool:
        """The event finished a group of a code saga but lacks the body's reaction."""
        commands = self.commands
        return bool(commands) and type(commands[-1]) is Advance


_UNDER_WAY = frozenset({StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.WAITING})
_FINAL = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.AMBIGUOUS})
_MAY_HAVE_TAKEN_EFFECT = frozenset({StepStatus.SUCCEEDED, StepStatus.AMBIGUOUS})
_COMPENSATION_UNDER_WAY = frozenset(
    {CompensationStatus.RUNNING, CompensationStatus.RETRYING, CompensationStatus.WAITING}
)
_json = msgspec.json.Encoder().encode
_ADVANCE = (Advance(),)


def initial_state(saga: Saga, saga_id: str) -> SagaState:
    """The state before `SagaStarted`: every step pending (a code saga: no call yet), seq 0."""
    return SagaState(
        saga_id=saga_id,
        saga_name=saga.name,
        definition_version=saga.version,
        steps=_pending_steps(len(saga.steps)),
    )


_PENDING: dict[int, tuple[StepState, ...]] = {}


def _pending_steps(count: int) -> tuple[StepState, ...]:
    # StepStates are frozen: every new saga of a definition can share one tuple.
    steps = _PENDING.get(count)
    if steps is None:
        steps = _PENDING[count] = tuple(StepState() for _ in range(count))
    return steps


def transition(saga: Saga, state: SagaState, event: Event) -> Transition:
    """Apply `event` to `state`. Pure. Raises `InvalidTransitionError` if it does not apply."""
    if state.saga_name != saga.name or (
        len(state.steps) != len(saga.steps) if saga.body is None else state.partial
    ):
        raise InvalidTransitionError(
            f"snapshot of saga {state.saga_id!r} does not match definition {saga.name!r}"
            + (" (a partial snapshot: restore it from its history first)" if state.partial else "")
        )
    row = _TABLE.get(type(event))
    if row is None:  # pragma: no cover - Event is a closed union
        raise InvalidTransitionError(f"unknown event {event!r}")
    handler, accepted = row
    phase = "new" if state.seq == 0 else state.status.value
    if phase not in accepted:
        raise _reject(state, event, f"not accepted when {phase}")
    return handler(saga, state, event)


# -- small helpers -----------------------------------------------------------


def _advance(state: SagaState, event: Event, **changes: object) -> SagaState:
    return replace(state, seq=state.seq + 1, updated_at=event.at, **changes)


def _with_step(steps: tuple[StepState, ...], index: int, step: StepState) -> tuple[StepState, ...]:
    return (*steps[:index], step, *steps[index + 1 :])


def _reject(state: SagaState, event: Event, why: str) -> InvalidTransitionError:
    return InvalidTransitionError(
        f"saga {state.saga_id!r} (status {state.status}, seq {state.seq}): "
        f"cannot apply {type(event).__name__}: {why}"
    )


def _deadline_passed(state: SagaState, at: float) -> bool:
    return state.deadline_at is not None and at >= state.deadline_at


def _error(kind: str, message: str) -> ErrorInfo:
    return ErrorInfo(type=f"saga.{kind}", message=message)


_DEADLINE = _error("DeadlineExceeded", "the saga's deadline passed")


def _wake_command(state: SagaState) -> Sequence[Command]:
    wake_at = state.wake_at
    return () if wake_at is None else (ScheduleWakeup(wake_at),)


class _Reactions:
    """The body's reactions an event carries, taken in order by the groups it finishes."""

    __slots__ = ("_left",)

    def __init__(self, event: Event) -> None:
        self._left: Iterator[Reaction] = iter(getattr(event, "then", ()))

    def next(self) -> Reaction | None:
        return next(self._left, None)


def _forward_status(saga: Saga, state: SagaState) -> tuple[SagaStatus, str | None]:
    """RUNNING while any forward position runs or backs off; WAITING when all under way wait
    (with the signal awaited, if one is)."""
    waiting = False
    waiting_for: str | None = None
    for index, step in enumerate(state.steps):
        if step.status is StepStatus.RUNNING or step.status is StepStatus.RETRYING:
            return SagaStatus.RUNNING, None
        if step.status is StepStatus.WAITING:
            waiting = True
            waiting_for = waiting_for or program.signal_name(saga, state, index)
    return (SagaStatus.WAITING, waiting_for) if waiting else (SagaStatus.RUNNING, None)


# -- starting positions --------------------------------------------------------


def _started(step: StepState) -> StepState:
    return StepState(status=StepStatus.RUNNING, attempts=1, call=step.call)


def _start_list_group(
    saga: Saga, state: SagaState, event: Event, positions: range, **changes: object
) -> Transition:
    steps = state.steps
    for index in positions:
        steps = _with_step(steps, index, _started(steps[index]))
    new = _advance(
        state,
        event,
        status=SagaStatus.RUNNING,
        steps=steps,
        recoveries=0,
        waiting_for=None,
        **changes,
    )
    return Transition(new, tuple(RunStep(index, 1) for index in positions))


def _on_started(saga: Saga, state: SagaState, event: SagaStarted) -> Transition:
    changes: dict[str, object] = {
        "started_at": event.at,
        "deadline_at": None if saga.deadline is None else event.at + saga.deadline,
        "parent": event.parent,
    }
    if saga.body is None:
        return _start_list_group(saga, state, event, program.list_group(saga, 0), **changes)
    base = replace(state, **changes)
    return _react(saga, base, event, _Reactions(event))


def _react(saga: Saga, state: SagaState, event: Event, reactions: _Reactions) -> Transition:
    """A code saga's group is final (or it just started): apply the body's next reaction."""
    reaction = reactions.next()
    if reaction is None:
        return Transition(state, _ADVANCE)
    if isinstance(reaction, Returned):
        new = _advance(
            state,
            event,
            status=SagaStatus.COMPLETED,
            output=reaction.output,
            recoveries=0,
            waiting_for=None,
        )
        return Transition(new, (Finish(SagaStatus.COMPLETED),))
    if isinstance(reaction, Raised):
        return _compensate(saga, state, event, reaction.step, reaction.error)
    return _apply_calls(saga, state, event, reaction, reactions)


def _apply_calls(
    saga: Saga, state: SagaState, event: Event, reaction: Calls, reactions: _Reactions
) -> Transition:
    calls = reaction.calls
    if not calls or not calls[-1].kind.blocks:
        raise _reject(state, event, "a reaction's calls must end with one the body waits for")
    if any(call.position != len(state.steps) + offset for offset, call in enumerate(calls)):
        raise _reject(state, event, f"calls out of order after position {len(state.steps)}")
    if _deadline_passed(state, event.at):
        return _compensate(saga, state, event, None, _DEADLINE)
    steps = list(state.steps)
    commands: list[Command] = []
    inbox = state.inbox
    for call in calls:
        if not call.kind.blocks:
            steps.append(StepState(status=StepStatus.SUCCEEDED, result=call.value, call=call))
        elif call.kind is CallKind.STEP or call.kind is CallKind.CHILD:
            steps.append(StepState(status=StepStatus.RUNNING, attempts=1, call=call))
            commands.append(RunStep(call.position, 1))
        elif call.kind is CallKind.SLEEP:
            steps.append(StepState(status=StepStatus.WAITING, wait_until=call.until, call=call))
        else:  # a signal wait: it may have arrived already
            early = next((n for n, signal in enumerate(inbox) if signal.name == call.name), None)
            if early is not None:
                payload = inbox[early].payload
                inbox = (*inbox[:early], *inbox[early + 1 :])
                steps.append(StepState(status=StepStatus.SUCCEEDED, result=payload, call=call))
            else:
                until = None if call.timeout is None else event.at + call.timeout
                steps.append(StepState(status=StepStatus.WAITING, wait_until=until, call=call))
    base = replace(state, steps=tuple(steps), inbox=inbox)
    last = calls[-1].position
    if all(base.steps[index].status in _FINAL for index in program.group(saga, base, last)):
        return _react(saga, base, event, reactions)  # a signal that was already there
    status, waiting_for = _forward_status(saga, base)
    new = _advance(base, event, status=status, recoveries=0, waiting_for=waiting_for)
    return Transition(new, tuple(commands) or _wake_command(new))


# -- forward outcomes ----------------------------------------------------------


def _running_step(state: SagaState, event: StepSucceeded | StepFailed | StepWaiting) -> StepState:
    if not 0 <= event.step < len(state.steps):
        raise _reject(state, event, f"no step {event.step}")
    step = state.steps[event.step]
    if step.status is not StepStatus.RUNNING or step.attempts != event.attempt:
        raise _reject(state, event, f"step {event.step} attempt {event.attempt} is not running")
    return step


def _outcome(
    saga: Saga, state: SagaState, event: Event, index: int, reactions: _Reactions
) -> Transition:
    """Position `index` (already updated in `state`) reached its final forward outcome."""
    positions = program.group(saga, state, index)
    steps = state.steps
    if any(steps[member].status in _UNDER_WAY for member in positions):
        status, waiting_for = _forward_status(saga, state)
        new = _advance(state, event, status=status, recoveries=0, waiting_for=waiting_for)
        return Transition(new, ())  # the rest of the group is still under way
    if saga.body is not None:
        return _react(saga, state, event, reactions)
    for member in positions:
        if steps[member].status is not StepStatus.SUCCEEDED:
            return _compensate(saga, state, event, member, steps[member].error)
    following = program.next_element(saga, index)
    if following is None:
        new = _advance(state, event, status=SagaStatus.COMPLETED, recoveries=0, waiting_for=None)
        return Transition(new, (Finish(SagaStatus.COMPLETED),))
    if _deadline_passed(state, event.at):
        return _compensate(saga, state, event, None, _DEADLINE)
    return _start_list_group(saga, state, event, following)


def _succeed(
    saga: Saga,
    state: SagaState,
    event: Event,
    index: int,
    result: msgspec.Raw,
    reactions: _Reactions,
) -> Transition:
    step = state.steps[index]
    done = replace(
        step,
        status=StepStatus.SUCCEEDED,
        result=result,
        retry_at=None,
        wait_until=None,
        interrupted=False,
    )
    base = replace(state, steps=_with_step(state.steps, index, done))
    return _outcome(saga, base, event, index, reactions)


def _end_forward(
    saga: Saga,
    state: SagaState,
    event: Event,
    index: int,
    status: StepStatus,
    error: ErrorInfo | None,
    reactions: _Reactions,
) -> Transition:
    """Position `index` failed for good: FAILED (definitive) or AMBIGUOUS."""
    step = state.steps[index]
    ended = replace(
        step, status=status, error=error, retry_at=None, wait_until=None, interrupted=False
    )
    base = replace(state, steps=_with_step(state.steps, index, ended))
    return _outcome(saga, base, event, index, reactions)


def _on_step_succeeded(saga: Saga, state: SagaState, event: StepSucceeded) -> Transition:
    _running_step(state, event)
    return _succeed(saga, state, event, event.step, event.result, _Reactions(event))


def _on_step_failed(saga: Saga, state: SagaState, event: StepFailed) -> Transition:
    step = _running_step(state, event)
    policy = program.retry(saga, state, event.step)
    if (
        event.kind is FailureKind.TRANSIENT
        and policy.allows_another_attempt(step.attempts)
        and not _deadline_passed(state, event.at)
    ):
        retry_at = event.at + policy.delay(step.attempts, event.jitter)
        backing_off = replace(
            step,
            status=StepStatus.RETRYING,
            retry_at=retry_at,
            error=event.error,
            interrupted=False,
        )
        new = _advance(
            state, event, steps=_with_step(state.steps, event.step, backing_off), recoveries=0
        )
        return Transition(new, (ScheduleWakeup(new.wake_at or retry_at),))
    outcome = StepStatus.FAILED if event.kind is FailureKind.DEFINITIVE else StepStatus.AMBIGUOUS
    return _end_forward(saga, state, event, event.step, outcome, event.error, _Reactions(event))


def _on_step_waiting(saga: Saga, state: SagaState, event: StepWaiting) -> Transition:
    step = _running_step(state, event)
    kind = program.kind(saga, state, event.step)
    if kind is CallKind.STEP:
        raise _reject(state, event, f"step {event.step} is not a waiting step")
    signal = program.signal_name(saga, state, event.step)
    if signal is not None:
        for position, kept in enumerate(state.inbox):
            if kept.name == signal:  # it arrived before the saga got here
                inbox = (*state.inbox[:position], *state.inbox[position + 1 :])
                return _succeed(
                    saga,
                    replace(state, inbox=inbox),
                    event,
                    event.step,
                    kept.payload,
                    _Reactions(event),
                )
    waiting = replace(step, status=StepStatus.WAITING, wait_until=event.until, interrupted=False)
    base = replace(state, steps=_with_step(state.steps, event.step, waiting))
    status, waiting_for = _forward_status(saga, base)
    new = _advance(base, event, status=status, waiting_for=waiting_for, recoveries=0)
    return Transition(new, _wake_command(new))


def _waiting_for_signal(saga: Saga, state: SagaState, signal: str) -> int | None:
    if state.status is not SagaStatus.WAITING:
        return None
    for index, step in enumerate(state.steps):
        if step.status is StepStatus.WAITING and program.signal_name(saga, state, index) == signal:
            return index
    return None


def _on_signal(saga: Saga, state: SagaState, event: SignalReceived) -> Transition:
    if state.status.is_terminal or (event.key is not None and event.key in state.signal_keys):
        return Transition(_advance(state, event), ())  # recorded, and ignored
    keys = state.signal_keys if event.key is None else (*state.signal_keys, event.key)
    index = _waiting_for_signal(saga, state, event.name)
    if index is not None:
        keyed = replace(state, signal_keys=keys)
        return _succeed(saga, keyed, event, index, event.payload, _Reactions(event))
    kept = Signal(name=event.name, payload=event.payload, key=event.key, at=event.at)
    return Transition(_advance(state, event, signal_keys=keys, inbox=(*state.inbox, kept)), ())


def _on_child_ended(saga: Saga, state: SagaState, event: ChildEnded) -> Transition:
    index = event.step
    if state.status.is_terminal or not 0 <= index < len(state.steps):
        return Transition(_advance(state, event), ())  # late or stray: recorded, ignored
    step = state.steps[index]
    call = step.call
    if call is None or call.kind is not CallKind.CHILD or call.target != event.child:
        return Transition(_advance(state, event), ())
    if step.compensation in (CompensationStatus.RUNNING, CompensationStatus.WAITING):
        if event.status is SagaStatus.COMPENSATED:
            return _compensation_done(saga, state, event, index)
        if event.status is SagaStatus.FAILED:
            error = event.error or _error("ChildFailed", f"child saga {event.child!r} failed")
            return _compensation_gave_up(saga, state, event, index, error)
        return Transition(_advance(state, event), ())
    if step.status not in (StepStatus.WAITING, StepStatus.RUNNING) or state.status not in FORWARD:
        return Transition(_advance(state, event), ())
    reactions = _Reactions(event)
    if event.status is SagaStatus.COMPLETED:
        return _succeed(saga, state, event, index, event.result, reactions)
    outcome = StepStatus.FAILED if event.status is SagaStatus.COMPENSATED else StepStatus.AMBIGUOUS
    error = event.error or _error("ChildEnded", f"child saga {event.child!r} {event.status}")
    return _end_forward(saga, state, event, index, outcome, error, reactions)


# -- stopping the forward path: cancellation, deadline -----------------------


def _on_cancel(saga: Saga, state: SagaState, event: CancelRequested) -> Transition:
    if state.status not in FORWARD:
        return Transition(_advance(state, event), ())  # already rolling back, or ended
    return _stop_forward(saga, state, event, _error("Cancelled", event.reason), event.not_started)


def _on_compensate_requested(
    saga: Saga, state: SagaState, event: CompensateRequested
) -> Transition:
    error = _error("CompensatedByParent", event.reason)
    if state.status in FORWARD:
        return _stop_forward(saga, state, event, error, event.not_started)
    if state.status is SagaStatus.COMPLETED:
        return _compensate(saga, state, event, None, error)
    new = _advance(state, event)
    if state.status.is_terminal:  # undone or failed already: say so again
        return Transition(new, (Finish(state.status),))
    return Transition(new, ())  # compensating: carries on


def _not_started(event: CancelRequested | CompensateRequested) -> frozenset[int]:
    skipped = event.not_started
    if skipped is None:
        return frozenset()
    return frozenset((skipped,) if isinstance(skipped, int) else skipped)


def _stop_forward(
    saga: Saga,
    state: SagaState,
    event: Event,
    error: ErrorInfo,
    not_started: int | tuple[int, ...] | None,
) -> Transition:
    """End the forward path now (cancel, deadline) and compensate what may have taken effect."""
    skipped = (
        _not_started(event) if isinstance(event, CancelRequested | CompensateRequested) else ()
    )
    steps = state.steps
    first: int | None = None
    for index, step in enumerate(steps):
        if step.status not in _UNDER_WAY:
            continue
        first = index if first is None else first
        waits = program.kind(saga, state, index) in (CallKind.SLEEP, CallKind.SIGNAL)
        if step.status is StepStatus.WAITING and waits:
            ended = replace(step, status=StepStatus.FAILED, wait_until=None, error=error)
        elif index in skipped and step.attempts == 1 and not step.interrupted:
            ended = StepState(call=step.call)  # its action never ran: it never started
        else:
            ended = replace(
                step,
                status=StepStatus.AMBIGUOUS,
                retry_at=None,
                wait_until=None,
                error=error,
                interrupted=False,
            )
        steps = _with_step(steps, index, ended)
    return _compensate(saga, replace(state, steps=steps), event, first, error)


# -- compensation ----------------------------------------------------------------


def _compensate(
    saga: Saga, state: SagaState, event: Event, failed_step: int | None, failure: ErrorInfo | None
) -> Transition:
    """Begin compensation (`state`'s steps already updated, not yet advanced)."""
    base = _advance(
        state,
        event,
        status=SagaStatus.COMPENSATING,
        failed_step=failed_step,
        failure=failure,
        recoveries=0,
        waiting_for=None,
    )
    return _compensate_next(saga, base)


def _to_compensate(saga: Saga, state: SagaState, index: int) -> bool:
    step = state.steps[index]
    return (
        step.status in _MAY_HAVE_TAKEN_EFFECT
        and step.compensation is CompensationStatus.NONE
        and program.compensable(saga, state, index)
    )


def _compensate_next(saga: Saga, state: SagaState) -> Transition:
    """Start the next group's compensations (`state` already advanced), or finish."""
    steps = state.steps
    if any(step.compensation in _COMPENSATION_UNDER_WAY for step in steps):
        return Transition(state, _wake_command(state))  # the rest of this group goes on
    if any(step.compensation is CompensationStatus.FAILED for step in steps):
        done = replace(state, status=SagaStatus.FAILED)
        return Transition(done, (Finish(SagaStatus.FAILED),))
    target = next(
        (index for index in range(len(steps) - 1, -1, -1) if _to_compensate(saga, state, index)),
        None,
    )
    if target is None:
        done = replace(state, status=SagaStatus.COMPENSATED)
        return Transition(done, (Finish(SagaStatus.COMPENSATED),))
    members = [i for i in program.group(saga, state, target) if _to_compensate(saga, state, i)]
    for index in members:
        running = replace(
            steps[index], compensation=CompensationStatus.RUNNING, compensation_attempts=1
        )
        steps = _with_step(steps, index, running)
    new = replace(state, steps=steps)
    return Transition(new, tuple(RunCompensation(index, 1) for index in members))


def _compensating_step(
    state: SagaState, event: CompensationSucceeded | CompensationFailed | CompensationWaiting
) -> StepState:
    if not 0 <= event.step < len(state.steps):
        raise _reject(state, event, f"no step {event.step}")
    step = state.steps[event.step]
    if (
        step.compensation is not CompensationStatus.RUNNING
        or step.compensation_attempts != event.attempt
    ):
        raise _reject(
            state, event, f"compensation of step {event.step} attempt {event.attempt} not running"
        )
    return step


def _compensation_done(saga: Saga, state: SagaState, event: Event, index: int) -> Transition:
    step = state.steps[index]
    done = replace(step, compensation=CompensationStatus.COMPENSATED, compensation_retry_at=None)
    base = _advance(state, event, steps=_with_step(state.steps, index, done), recoveries=0)
    return _compensate_next(saga, base)


def _compensation_gave_up(
    saga: Saga, state: SagaState, event: Event, index: int, error: ErrorInfo
) -> Transition:
    step = state.steps[index]
    failed = replace(step, compensation=CompensationStatus.FAILED, compensation_error=error)
    base = _advance(state, event, steps=_with_step(state.steps, index, failed), recoveries=0)
    return _compensate_next(saga, base)


def _on_compensation_succeeded(
    saga: Saga, state: SagaState, event: CompensationSucceeded
) -> Transition:
    _compensating_step(state, event)
    return _compensation_done(saga, state, event, event.step)


def _on_compensation_failed(saga: Saga, state: SagaState, event: CompensationFailed) -> Transition:
    step = _compensating_step(state, event)
    policy = program.compensation_retry(saga, state, event.step)
    if event.kind is FailureKind.TRANSIENT and policy.allows_another_attempt(
        step.compensation_attempts
    ):
        retry_at = event.at + policy.delay(step.compensation_attempts, event.jitter)
        backing_off = replace(
            step,
            compensation=CompensationStatus.RETRYING,
            compensation_retry_at=retry_at,
            compensation_error=event.error,
        )
        new = _advance(
            state, event, steps=_with_step(state.steps, event.step, backing_off), recoveries=0
        )
        return Transition(new, (ScheduleWakeup(new.wake_at or retry_at),))
    return _compensation_gave_up(saga, state, event, event.step, event.error)


def _on_compensation_waiting(
    saga: Saga, state: SagaState, event: CompensationWaiting
) -> Transition:
    step = _compensating_step(state, event)
    waiting = replace(step, compensation=CompensationStatus.WAITING)
    new = _advance(state, event, steps=_with_step(state.steps, event.step, waiting))
    return Transition(new, ())


# -- time: retries, waits, deadlines ---------------------------------------------


def _in_flight(state: SagaState) -> tuple[Command, ...]:
    """The commands whose intents are durable but whose outcomes are not."""
    if state.status is SagaStatus.RUNNING:
        return tuple(
            RunStep(index, step.attempts)
            for index, step in enumerate(state.steps)
            if step.status is StepStatus.RUNNING
        )
    if state.status is SagaStatus.COMPENSATING:
        return tuple(
            RunCompensation(index, step.compensation_attempts)
            for index, step in enumerate(state.steps)
            if step.compensation is CompensationStatus.RUNNING
        )
    return ()


def _on_timer(saga: Saga, state: SagaState, event: TimerFired) -> Transition:
    if state.status not in LIVE or state.in_flight:
        return Transition(state, ())
    if state.status in FORWARD and _deadline_passed(state, event.at):
        return _stop_forward(saga, state, event, _DEADLINE, None)
    steps = state.steps
    commands: list[Command] = []
    for index, step in enumerate(state.steps):
        if step.status is StepStatus.WAITING and step.wait_until is not None:
            if step.wait_until <= event.at:
                return _wait_over(saga, state, event, index)
        elif step.status is StepStatus.RETRYING and step.retry_at is not None:
            if step.retry_at <= event.at:
                again = replace(
                    step, status=StepStatus.RUNNING, attempts=step.attempts + 1, retry_at=None
                )
                steps = _with_step(steps, index, again)
                commands.append(RunStep(index, again.attempts))
        elif (
            step.compensation is CompensationStatus.RETRYING
            and step.compensation_retry_at is not None
            and step.compensation_retry_at <= event.at
        ):
            attempt = step.compensation_attempts + 1
            again = replace(
                step,
                compensation=CompensationStatus.RUNNING,
                compensation_attempts=attempt,
                compensation_retry_at=None,
            )
            steps = _with_step(steps, index, again)
            commands.append(RunCompensation(index, attempt))
    if not commands:
        return Transition(state, _wake_command(state))  # early or stale: wait on
    return Transition(_advance(state, event, steps=steps), tuple(commands))


def _wait_over(saga: Saga, state: SagaState, event: TimerFired, index: int) -> Transition:
    """The wait at `index` reached its time: a sleep ends; a signal wait times out."""
    step = state.steps[index]
    assert step.wait_until is not None
    reactions = _Reactions(event)
    if program.is_sleep(saga, state, index):
        return _succeed(saga, state, event, index, msgspec.Raw(_json(step.wait_until)), reactions)
    on_timeout, default = program.on_timeout(saga, state, index)
    if isinstance(on_timeout, Continue):
        assert default is not None
        return _succeed(saga, state, event, index, msgspec.Raw(default), reactions)
    signal = program.signal_name(saga, state, index)
    limit = program.timeout_of(saga, state, index)
    error = _error("SignalTimeout", f"no {signal!r} signal within {limit} s")
    if on_timeout is OnTimeout.FAIL:
        failed = replace(step, status=StepStatus.FAILED, wait_until=None, error=error)
        new = _advance(
            state,
            event,
            status=SagaStatus.FAILED,
            steps=_with_step(state.steps, index, failed),
            failed_step=index,
            failure=error,
            waiting_for=None,
        )
        return Transition(new, (Finish(SagaStatus.FAILED),))
    return _end_forward(saga, state, event, index, StepStatus.FAILED, error, reactions)


# -- interruptions: recovery, suspension -------------------------------------------


def _carry_on(state: SagaState) -> Sequence[Command]:
    """What to do for a live saga loaded from its snapshot, with no new event."""
    return _in_flight(state) or _wake_command(state)


def _mark_interrupted(state: SagaState) -> tuple[StepState, ...]:
    """In-flight forward intents outlive this interruption: their actions may have run."""
    if state.status is not SagaStatus.RUNNING:
        return state.steps
    return tuple(
        replace(step, interrupted=True)
        if step.status is StepStatus.RUNNING and not step.interrupted
        else step
        for step in state.steps
    )


def _on_recovered(saga: Saga, state: SagaState, event: Recovered) -> Transition:
    if state.status not in LIVE:
        return Transition(state, ())
    in_flight = _in_flight(state)
    if not in_flight:
        return Transition(state, _carry_on(state))
    recoveries = state.recoveries + 1
    if recoveries > event.max_recoveries:
        reason = (
            f"recovered {recoveries} times in a row while {_describe(in_flight[0])} "
            "was in flight, without progress"
        )
        return _suspend(state, event, reason, recoveries=recoveries)
    # The interrupted attempt runs again with the same number: a crash is
    # not the step's failure and costs nothing from its retry budget.
    new = _advance(state, event, recoveries=recoveries, steps=_mark_interrupted(state))
    return Transition(new, in_flight)


def _describe(command: Command) -> str:
    if isinstance(command, RunStep):
        return f"step {command.step} attempt {command.attempt}"
    if isinstance(command, RunCompensation):
        return f"the compensation of step {command.step}"
    return repr(command)  # pragma: no cover


def _suspend(state: SagaState, event: Event, reason: str, **changes: object) -> Transition:
    new = _advance(
        state,
        event,
        status=SagaStatus.SUSPENDED,
        suspended_reason=reason,
        resume_status=state.status,
        **changes,
    )
    return Transition(new, (Finish(SagaStatus.SUSPENDED),))


def _on_suspended(saga: Saga, state: SagaState, event: Suspended) -> Transition:
    return _suspend(state, event, event.reason)


def _on_resumed(saga: Saga, state: SagaState, event: Resumed) -> Transition:
    if state.resume_status is None:
        raise _reject(state, event, "it has no status to resume")
    new = _advance(
        state,
        event,
        status=state.resume_status,
        resume_status=None,
        suspended_reason=None,
        recoveries=0,
        steps=_mark_interrupted(replace(state, status=state.resume_status)),
    )
    return Transition(new, _carry_on(new))


_Handler = Callable[[Saga, SagaState, Any], Transition]

_RUN, _WAIT, _COMP = "running", "waiting", "compensating"
_DONE, _UNDONE, _FAILED, _SUSP = "completed", "compensated", "failed", "suspended"
_LIVE_OR_ENDED = frozenset({_RUN, _WAIT, _COMP, _DONE, _UNDONE, _FAILED})

_TABLE: dict[type[Event], tuple[_Handler, frozenset[str]]] = {
    SagaStarted: (_on_started, frozenset({"new"})),
    StepSucceeded: (_on_step_succeeded, frozenset({_RUN})),
    StepFailed: (_on_step_failed, frozenset({_RUN})),
    StepWaiting: (_on_step_waiting, frozenset({_RUN})),
    SignalReceived: (_on_signal, _LIVE_OR_ENDED),
    CancelRequested: (_on_cancel, _LIVE_OR_ENDED),
    CompensateRequested: (_on_compensate_requested, _LIVE_OR_ENDED),
    ChildEnded: (_on_child_ended, _LIVE_OR_ENDED),
    CompensationSucceeded: (_on_compensation_succeeded, frozenset({_COMP})),
    CompensationFailed: (_on_compensation_failed, frozenset({_COMP})),
    CompensationWaiting: (_on_compensation_waiting, frozenset({_COMP})),
    TimerFired: (_on_timer, _LIVE_OR_ENDED | {_SUSP}),
    Recovered: (_on_recovered, _LIVE_OR_ENDED | {_SUSP}),
    Suspended: (_on_suspended, frozenset({_RUN, _WAIT, _COMP})),
    Resumed: (_on_resumed, frozenset({_SUSP})),
}
"""The transition table as data: each event type's handler and the statuses that accept it
(checked in `transition`; the module docstring's matrix is tested against it)."""


def accepted_statuses() -> dict[str, frozenset[str]]:
    """Each event type's tag name and the statuses (or "new") that accept it: for tests."""
    return {event.__name__: accepted for event, (_, accepted) in _TABLE.items()}
