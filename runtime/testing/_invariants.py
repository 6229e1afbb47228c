"""The kit's own invariants: what every saga must satisfy whatever faults hit it.

They are checked from two independent sources: the kit's journal (what the
services saw: every call, whether it took effect, in order) and the store
(the final snapshot and the history). Each check returns readable problems;
an empty list means the saga kept every guarantee.
"""

from __future__ import annotations

import itertools
from collections import Counter

import msgspec

from saga import CompensationStatus, SagaStatus, StepStatus
from saga.engine import (
    CompensationSucceeded,
    InvalidTransitionError,
    SagaStarted,
    StepSucceeded,
    initial_state,
    transition,
)
from saga.store import SagaState

from ._journal import Call
from ._report import FaultReport, Position

_MAY_HAVE_TAKEN_EFFECT = frozenset({StepStatus.SUCCEEDED, StepStatus.AMBIGUOUS})
_NULL = b"null"


def check_report(report: FaultReport) -> dict[str, list[str]]:
    """The problems of each saga of the report (sagas without problems are left out)."""
    problems = {saga_id: check_saga(report, saga_id) for saga_id in report.saga_ids}
    return {saga_id: found for saga_id, found in problems.items() if found}


def check_saga(report: FaultReport, saga_id: str) -> list[str]:
    info = report.sagas.get(saga_id)
    snapshot = report.snapshots.get(saga_id)
    if info is None or snapshot is None:
        if saga_id in report.acknowledged:
            return [f"{saga_id}: its spawn was acknowledged, yet the saga is gone"]
        return [f"{saga_id}: it was never spawned"]
    problems: list[str] = []
    if not info.status.is_terminal:
        problems.append(f"{saga_id}: it ended {info.status}, not completed/compensated/failed")
    if saga_id in report.divergences:
        problems.append(
            f"{saga_id}: its body is not deterministic (replayed a day later, it makes other "
            f"calls; read time and randomness through ctx): {report.divergences[saga_id]}"
        )
    problems += _check_history(report, saga_id, snapshot)
    calls = report.calls_of(saga_id)
    problems += _check_steps(report, saga_id, snapshot, calls)
    problems += _check_compensations(report, saga_id, snapshot, calls)
    problems += _check_order(report, saga_id, calls)
    return problems


def _check_history(report: FaultReport, saga_id: str, snapshot: SagaState) -> list[str]:
    """The history is contiguous, starts once, and folds to the stored snapshot."""
    history = report.sagas[saga_id].history
    seqs = [entry.seq for entry in history]
    if seqs != list(range(1, len(seqs) + 1)):
        return [f"{saga_id}: history seqs are not 1..n: {seqs}"]
    starts = [entry.seq for entry in history if isinstance(entry.event, SagaStarted)]
    if starts != [1]:
        return [f"{saga_id}: SagaStarted at seqs {starts}, expected once, first"]
    state = initial_state(report.saga, saga_id)
    for entry in history:
        try:
            state, _ = transition(report.saga, state, entry.event)
        except InvalidTransitionError as exc:
            return [f"{saga_id}: history entry #{entry.seq} does not apply: {exc}"]
    if state != snapshot:  # a code saga's `snapshot` is the complete one (see `_report`)
        return [f"{saga_id}: the snapshot differs from the fold of its history"]
    problems = []
    for kind in (StepSucceeded, CompensationSucceeded):
        ends = Counter(e.event.step for e in history if isinstance(e.event, kind))
        for index, count in ends.items():
            if count > 1:
                name = report.positions(saga_id)[index].name
                problems.append(f"{saga_id}: {kind.__name__} of {name} recorded {count} times")
    return problems


def _check_steps(
    report: FaultReport, saga_id: str, snapshot: SagaState, calls: list[Call]
) -> list[str]:
    """What each step's final status says agrees with what its calls did."""
    problems: list[str] = []
    completed = snapshot.status is SagaStatus.COMPLETED
    for position, step in zip(report.positions(saga_id), snapshot.steps, strict=True):
        name = position.name
        if completed and step.status is not StepStatus.SUCCEEDED:
            problems.append(f"{saga_id}: completed, yet step {name} is {step.status}")
        if not position.wrapped:
            continue
        mine = [c for c in calls if c.kind == "action" and c.step == name]
        effects = [c for c in mine if c.took_effect]
        if step.status is StepStatus.SUCCEEDED and not any(
            c.attempt == step.attempts for c in effects
        ):
            problems.append(
                f"{saga_id}: step {name} is recorded as succeeded by attempt {step.attempts}, "
                "but no call of that attempt returned"
            )
        if step.status is StepStatus.PENDING and mine:
            problems.append(f"{saga_id}: step {name} never started, yet it was called")
        elif step.status is StepStatus.FAILED and effects:
            attempts = sorted({c.attempt for c in effects})
            problems.append(
                f"{saga_id}: step {name} failed definitively (so it is never compensated), yet "
                f"attempt(s) {attempts} took effect: that effect leaks (a definitive error "
                "must prove that nothing took effect)"
            )
        beyond = sorted({c.attempt for c in mine if c.attempt > step.attempts})
        if beyond:
            problems.append(
                f"{saga_id}: step {name} ran attempt(s) {beyond}, beyond the {step.attempts} "
                "recorded"
            )
        limit = position.maximum_attempts
        if limit is not None and step.attempts > limit:
            problems.append(
                f"{saga_id}: step {name} used {step.attempts} attempts, its policy allows {limit}"
            )
    return problems


def _check_compensations(
    report: FaultReport, saga_id: str, snapshot: SagaState, calls: list[Call]
) -> list[str]:
    """Exactly the steps that may have taken effect are compensated, newest first."""
    positions = report.positions(saga_id)
    steps = snapshot.steps
    names = [p.name for p in positions]
    expected = [
        names[i]
        for i in reversed(range(len(steps)))
        if steps[i].status in _MAY_HAVE_TAKEN_EFFECT and positions[i].compensable
    ]
    undo = [c for c in calls if c.kind == "compensation"]
    ran = [name for name, _ in itertools.groupby(c.step for c in undo)]
    problems: list[str] = []
    status = snapshot.status
    if status is SagaStatus.COMPLETED and undo:
        problems.append(f"{saga_id}: completed, yet compensations ran: {ran}")
    stray = sorted({c.step for c in undo} - set(expected))
    if stray:
        problems.append(
            f"{saga_id}: compensated step(s) {stray}, which never started or failed "
            "definitively (proven to have taken no effect)"
        )
    if status is SagaStatus.COMPENSATED:
        missing = [n for n in expected if steps[names.index(n)].compensation is not _DONE]
        if missing:
            problems.append(
                f"{saga_id}: compensated, yet step(s) {missing} that may have taken effect "
                "were not compensated"
            )
        if not _in_group_order([c.step for c in undo], expected, positions):
            problems.append(
                f"{saga_id}: compensations ran in the order {ran}; expected newest first, "
                f"each to its end before the next (a parallel group's in any order): {expected}"
            )
    if status is SagaStatus.FAILED:
        problems += _check_failed(report, saga_id, snapshot, expected, ran)
    for name in expected:
        index = names.index(name)
        mine = [c for c in undo if c.step == name]
        if steps[index].compensation is _DONE and not (mine and mine[-1].took_effect):
            problems.append(
                f"{saga_id}: the compensation of {name} is recorded as done, but its last "
                "call did not return"
            )
        ambiguous = steps[index].status is StepStatus.AMBIGUOUS
        has_result = bytes(steps[index].result) != _NULL
        for call in mine:
            if ambiguous and call.given_result:
                problems.append(
                    f"{saga_id}: the compensation of ambiguous step {name} was given a result "
                    "(it must get None)"
                )
            elif not ambiguous and has_result and call.given_result is False:
                problems.append(
                    f"{saga_id}: the compensation of {name} was given None instead of the "
                    f"recorded result {msgspec.json.decode(bytes(steps[index].result))!r}"
                )
    return problems


_DONE = CompensationStatus.COMPENSATED


def _groups(names: list[str], positions: list[Position]) -> list[set[str]]:
    """`names` in runs of one parallel group each (a step outside a group is its own)."""
    group = {p.name: (p.group if p.group is not None else -1 - i) for i, p in enumerate(positions)}
    return [{*run} for _, run in itertools.groupby(names, key=lambda n: group.get(n, n))]


def _stopped_at(
    calls: list[str], expected: list[str], failed: str, positions: list[Position]
) -> bool:
    """The compensations before `failed`'s group ran in order, then (some of) its group, with
    `failed` among them, and nothing after it."""
    ran, wanted = _groups(calls, positions), _groups(expected, positions)
    last = next(i for i, members in enumerate(wanted) if failed in members)
    return (
        len(ran) == last + 1
        and ran[:last] == wanted[:last]
        and failed in ran[last]
        and ran[last] <= wanted[last]
    )


def _in_group_order(calls: list[str], expected: list[str], positions: list[Position]) -> bool:
    """The compensation calls (by step, in order) ran `expected` newest first, each to its
    end before the next; the members of one parallel group together, in any order."""
    return _groups(calls, positions) == _groups(expected, positions)


def _check_failed(
    report: FaultReport, saga_id: str, snapshot: SagaState, expected: list[str], ran: list[str]
) -> list[str]:
    """`failed` only when a compensation gave up; the ones before it ran, none after it."""
    names = [p.name for p in report.positions(saga_id)]
    given_up = [names[i] for i, s in enumerate(snapshot.steps) if s.compensation is _FAILED]
    if not given_up:
        if snapshot.failure is not None and snapshot.failure.type == "saga.SignalTimeout":
            return []  # WaitForSignal(on_timeout=OnTimeout.FAIL): failed by design
        return [f"{saga_id}: failed, yet no compensation failed"]
    if len(given_up) > 1:
        return [f"{saga_id}: compensations of {given_up} all failed; the first must stop it"]
    failed = given_up[0]
    if failed not in expected:
        return []  # reported as a stray compensation
    positions = report.positions(saga_id)
    calls = [c.step for c in report.calls_of(saga_id, kind="compensation")]
    if not _stopped_at(calls, expected, failed, positions):
        prefix = expected[: expected.index(failed) + 1]
        return [
            f"{saga_id}: failed at the compensation of {failed}; compensations ran {ran}, "
            f"expected {prefix}"
        ]
    mine = report.calls_of(saga_id, failed, "compensation")
    if mine and mine[-1].error is None:
        return [f"{saga_id}: the compensation of {failed} failed, yet its last call returned"]
    return []


_FAILED = CompensationStatus.FAILED


def _check_order(report: FaultReport, saga_id: str, calls: list[Call]) -> list[str]:
    """No forward call once compensation began; nothing again once its success was durable."""
    problems: list[str] = []
    undo = [c for c in calls if c.kind == "compensation"]
    if undo:
        first = undo[0]
        late = [c for c in calls if c.kind == "action" and c.order > first.order]
        if late:
            late_calls = ", ".join(f"{c.step} attempt {c.attempt}" for c in late)
            problems.append(
                f"{saga_id}: forward action(s) {late_calls} ran after compensation began "
                f"(compensation of {first.step})"
            )
    names = [p.name for p in report.positions(saga_id)]
    for write in report.writes:
        if write.saga_id != saga_id:
            continue
        event = write.event
        if isinstance(event, StepSucceeded):
            kind, name = "action", names[event.step]
        elif isinstance(event, CompensationSucceeded):
            kind, name = "compensation", names[event.step]
        else:
            continue
        again = [c for c in calls if (c.kind, c.step) == (kind, name) and c.order > write.order]
        if again:
            problems.append(
                f"{saga_id}: the {kind} of {name} ran again (attempt {again[0].attempt}) after "
                "its success was durable"
            )
    return problems
