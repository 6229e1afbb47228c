"""What must hold for every saga, read from the SQLite file and the side-effect ledger.

`read_store` takes one consistent read of the database (a read transaction
in WAL mode, so the runtime may keep writing). `check_saga` compares one
saga's row and history with its ledger records and with the model of its
plan (`checkout.expected`) and returns the violations it finds, as text:
the soaks count them, the tests assert there are none.

Read the ledger before the store: a step's status only moves forward, so
"the store says the step ran" holds for every record already in the ledger.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from saga import CompensationStatus, Saga, SagaStatus, StepStatus
from saga.engine import (
    CompensationSucceeded,
    Event,
    InvalidTransitionError,
    Recovered,
    Resumed,
    RunCompensation,
    RunStep,
    SagaStarted,
    initial_state,
    transition,
)
from saga.store import SagaState
from tests.runtime.ledger import Record

from .checkout import COMPENSABLE, STEPS, Expected, Order, expected, expected_output

MAY_HAVE_TAKEN_EFFECT = frozenset({StepStatus.SUCCEEDED, StepStatus.AMBIGUOUS})
UNDER_WAY = frozenset({StepStatus.RUNNING, StepStatus.RETRYING})
_state_decoder = msgspec.json.Decoder(SagaState)
_event_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(Event)
_order_decoder = msgspec.json.Decoder(Order)


@dataclass(frozen=True)
class Row:
    """One saga as stored: its row and its history, from one read transaction."""

    saga_id: str
    saga_name: str
    status: str
    seq: int
    input: bytes
    snapshot: str
    error: str | None
    history: tuple[tuple[int, str], ...]


def read_store(path: Path) -> dict[str, Row]:
    """Every saga and its history, as of one moment."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    try:
        conn.execute("BEGIN")
        sagas = conn.execute(
            "SELECT saga_id, saga_name, status, seq, input, snapshot, error FROM sagas"
        ).fetchall()
        history: dict[str, list[tuple[int, str]]] = {}
        for saga_id, seq, event in conn.execute(
            "SELECT saga_id, seq, event FROM history ORDER BY saga_id, seq"
        ):
            history.setdefault(saga_id, []).append((seq, event))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return {
        saga_id: Row(
            saga_id=saga_id,
            saga_name=saga_name,
            status=status,
            seq=seq,
            input=input_text.encode(),
            snapshot=snapshot,
            error=error,
            history=tuple(history.get(saga_id, ())),
        )
        for saga_id, saga_name, status, seq, input_text, snapshot, error in sagas
    }


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def by_saga(records: Iterable[Record]) -> dict[str, list[Record]]:
    grouped: dict[str, list[Record]] = {}
    for record in records:
        grouped.setdefault(record.saga_id, []).append(record)
    return grouped


@dataclass
class Checked:
    """One saga, checked: its decoded state and what its history says happened."""

    saga_id: str
    state: SagaState | None = None
    order: Order | None = None
    model: Expected | None = None
    recoveries: int = 0
    suspensions: int = 0
    resumes: int = 0
    compensated_order: tuple[int, ...] = ()
    """The steps whose compensation succeeded, in history order."""
    violations: list[str] = field(default_factory=list)


def replay(
    saga: Saga, saga_id: str, events: Sequence[Event]
) -> tuple[SagaState, Counter[tuple[str, str, int]], int]:
    """Fold the history through the state machine.

    Also counts how many times each (kind, step, attempt) was commanded to
    run: once per durable intent, plus once per recovery or resume that
    found it in flight (a service may run at most that often); and how many
    times the saga was suspended (a crash loop, or too many recoveries).
    """
    state = initial_state(saga, saga_id)
    runs: Counter[tuple[str, str, int]] = Counter()
    suspensions = 0
    for event in events:
        before = state.status
        state, commands = transition(saga, state, event)
        if state.status is SagaStatus.SUSPENDED and before is not SagaStatus.SUSPENDED:
            suspensions += 1
        for command in commands:
            if isinstance(command, RunStep):
                runs["effect", STEPS[command.step], command.attempt] += 1
            elif isinstance(command, RunCompensation):
                runs["compensation", STEPS[command.step], command.attempt] += 1
    return state, runs, suspensions


def check_saga(saga: Saga, row: Row, records: Sequence[Record], *, final: bool) -> Checked:
    """Check one saga; `final`: it must have ended exactly as its plan says."""
    sid = row.saga_id
    out = Checked(sid)
    v = out.violations
    try:
        state = _state_decoder.decode(row.snapshot)
        order = _order_decoder.decode(row.input)
        events: list[Event] = [_event_decoder.decode(event) for _, event in row.history]
    except msgspec.MsgspecError as exc:
        v.append(f"{sid}: row cannot be decoded: {exc}")
        return out
    model = expected(order)
    out.state, out.order, out.model = state, order, model
    out.recoveries = sum(isinstance(e, Recovered) for e in events)
    out.resumes = sum(isinstance(e, Resumed) for e in events)
    out.compensated_order = tuple(e.step for e in events if isinstance(e, CompensationSucceeded))

    # The history: contiguous, started once, and it folds to the snapshot.
    seqs = [seq for seq, _ in row.history]
    if seqs != list(range(1, len(seqs) + 1)):
        v.append(f"{sid}: history seqs are not 1..n: {seqs}")
    if not (state.seq == row.seq == len(seqs)):
        v.append(f"{sid}: snapshot #{state.seq}, row #{row.seq}, {len(seqs)} history entries")
    started = [i for i, e in enumerate(events) if isinstance(e, SagaStarted)]
    if started != [0]:
        v.append(f"{sid}: SagaStarted at history positions {started}")
    if row.status != state.status.value:
        v.append(f"{sid}: status column {row.status!r}, snapshot {state.status}")
    try:
        folded, runs, out.suspensions = replay(saga, sid, events)
    except InvalidTransitionError as exc:
        v.append(f"{sid}: history does not fold: {exc}")
        return out
    if folded != state:
        v.append(f"{sid}: snapshot differs from the fold of its history")

    _check_ledger(sid, state, records, runs, v)
    _check_against_model(sid, state, model, v)
    if final:
        _check_final(sid, state, model, records, v)
    return out


def _check_ledger(
    sid: str,
    state: SagaState,
    records: Sequence[Record],
    runs: Counter[tuple[str, str, int]],
    v: list[str],
) -> None:
    effects = [r for r in records if r.kind == "effect"]
    undos = [r for r in records if r.kind == "compensation"]
    for r in effects:
        if r.idempotency_key != f"{sid}:{r.step}":
            v.append(f"{sid}: effect under key {r.idempotency_key!r}")
    for r in undos:
        if r.idempotency_key != f"{sid}:{r.step}:compensate":
            v.append(f"{sid}: compensation under key {r.idempotency_key!r}")
    # At-least-once, and no more: each run was commanded by a durable intent
    # (or by a recovery or resume that found it in flight).
    for key, count in Counter((r.kind, r.step, r.attempt) for r in records).items():
        if count > runs[key]:
            v.append(f"{sid}: {key} ran {count} times, commanded {runs[key]}")
    for r in effects:
        index = STEPS.index(r.step)
        step = state.steps[index]
        if step.status is StepStatus.PENDING:
            v.append(f"{sid}: {r.step} took effect with no durable intent")
        if step.status is StepStatus.FAILED:
            v.append(f"{sid}: {r.step} failed definitively yet took effect")
        if index and not any(e.step == STEPS[index - 1] and e.seq < r.seq for e in effects):
            v.append(f"{sid}: {r.step} took effect before {STEPS[index - 1]} did")
    if undos:
        first = min(r.seq for r in undos)
        late = [r for r in effects if r.seq > first]
        if late:
            v.append(f"{sid}: forward effect after compensation began: {late[0]}")
    for r in undos:
        step = state.steps[STEPS.index(r.step)]
        if step.compensation is CompensationStatus.NONE:
            v.append(f"{sid}: {r.step} compensated with no durable intent")
        if step.status not in MAY_HAVE_TAKEN_EFFECT:
            v.append(f"{sid}: compensated {r.step}, which is {step.status}")
        had_effect = any(e.step == r.step for e in effects)
        if not had_effect and step.status is not StepStatus.AMBIGUOUS:
            v.append(f"{sid}: compensated {r.step}: no effect, no ambiguous end")
        if r.has_result is not (step.status is StepStatus.SUCCEEDED):
            v.append(f"{sid}: compensation of {r.step} ({step.status}) given {r.has_result=}")


def _check_against_model(sid: str, state: SagaState, model: Expected, v: list[str]) -> None:
    """As far as the saga got, it went the way its plan says."""
    if state.status is SagaStatus.FAILED:
        v.append(f"{sid}: failed: {state.steps}")
    if state.status is SagaStatus.COMPLETED and model.status is not SagaStatus.COMPLETED:
        v.append(f"{sid}: completed; the model says {model.status}")
    if (
        state.status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED)
        and model.status is not SagaStatus.COMPENSATED
    ):
        v.append(f"{sid}: {state.status}; the model says {model.status}")
    for index, step in enumerate(state.steps):
        want_status, want_attempts = model.steps[index]
        name = STEPS[index]
        if step.status in (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.AMBIGUOUS):
            if (step.status, step.attempts) != (want_status, want_attempts):
                v.append(
                    f"{sid}: {name} {step.status} after {step.attempts} attempts; "
                    f"the model says {want_status} after {want_attempts}"
                )
        elif step.status in UNDER_WAY and want_status is StepStatus.PENDING:
            v.append(f"{sid}: {name} runs; the model says it never starts")
        if step.attempts > want_attempts:
            v.append(f"{sid}: {name} has {step.attempts} attempts > {want_attempts}")
        if step.compensation is not CompensationStatus.NONE and index not in model.compensated:
            v.append(f"{sid}: {name} compensation {step.compensation}; the model has none")
        if step.compensation_attempts > model.compensation_attempts[index]:
            v.append(f"{sid}: {name} compensated {step.compensation_attempts} times")


def _check_final(
    sid: str, state: SagaState, model: Expected, records: Sequence[Record], v: list[str]
) -> None:
    """The saga ended, exactly as the model says, with exactly the ledger's compensations."""
    if state.status is not model.status:
        v.append(f"{sid}: ended {state.status}; the model says {model.status}")
        return
    got = tuple((step.status, step.attempts) for step in state.steps)
    if got != model.steps:
        v.append(f"{sid}: steps {got}; the model says {model.steps}")
    compensated = tuple((step.compensation, step.compensation_attempts) for step in state.steps)
    want = tuple(
        (CompensationStatus.COMPENSATED if i in model.compensated else CompensationStatus.NONE, n)
        for i, n in enumerate(model.compensation_attempts)
    )
    if compensated != want:
        v.append(f"{sid}: compensations {compensated}; the model says {want}")
    if state.failed_step != model.failed_step:
        v.append(f"{sid}: failed step {state.failed_step}; the model says {model.failed_step}")
    failure = state.failure
    if model.failed_step is not None:
        if failure is None:
            v.append(f"{sid}: compensated with no recorded failure")
        elif model.timed_out and not failure.timed_out:
            v.append(f"{sid}: failure {failure}; the model says a timeout")
        elif model.failure_type is not None and failure.type != model.failure_type:
            v.append(f"{sid}: failure {failure.type}; the model says {model.failure_type}")

    effects = [r for r in records if r.kind == "effect"]
    undos = [r for r in records if r.kind == "compensation"]
    # Newest first, each compensation run to success before the next began.
    order = [step for step, _ in itertools.groupby(r.step for r in undos)]
    names = [STEPS[i] for i in model.compensated]
    if order != names:
        v.append(f"{sid}: compensations ran {order}; expected {names}")
    for index in model.compensated:
        mine = [r for r in undos if r.step == STEPS[index]]
        if mine and mine[-1].attempt != state.steps[index].compensation_attempts:
            v.append(f"{sid}: last compensation of {STEPS[index]} is attempt {mine[-1].attempt}")
    undone = {r.step for r in undos}
    for step in {r.step for r in effects} & COMPENSABLE:
        if model.status is SagaStatus.COMPENSATED and step not in undone:
            v.append(f"{sid}: {step} took effect and was never compensated")
    for index, (status, attempts) in enumerate(model.steps):
        if status is StepStatus.SUCCEEDED and not any(
            r.step == STEPS[index] and r.attempt == attempts for r in effects
        ):
            v.append(f"{sid}: {STEPS[index]} succeeded without its effect")


def check_output(sid: str, model: Expected, output: object, v: list[str]) -> None:
    """What `handle.result()` gave (an output, or the `SagaCompensated` it raised)."""
    if model.status is SagaStatus.COMPLETED and output != expected_output(sid):
        v.append(f"{sid}: result {output!r}")
    if model.status is SagaStatus.COMPENSATED:
        step = getattr(output, "step", None)
        if model.failed_step is None or step != STEPS[model.failed_step]:
            v.append(f"{sid}: result {output!r}; the model has {model.failed_step}")
