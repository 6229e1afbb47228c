"""`FaultReport`: what happened in one example, and its readable timelines."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from saga import CallKind as Kind
from saga import RetryPolicy, Saga, SagaStatus
from saga.store import SagaState

from .._info import SagaInfo
from ._journal import Call, CallKind, Note, Write
from ._plan import Fault, FaultPlan

_DEFAULT_RETRY = RetryPolicy().backoff  # what a call recorded without `retry` runs by


@dataclass(frozen=True)
class Position:
    """One position of a saga as the invariants see it: a step of a list, or a call of a
    code saga's body. `wrapped`: the kit wraps its callables (a step, not a wait or child)."""

    name: str
    compensable: bool
    wrapped: bool
    maximum_attempts: int | None
    group: int | None = None
    """The parallel group's first position (None: not in one): its compensations may run
    in any order among themselves."""


@dataclass(frozen=True)
class FaultReport:
    """One example's run: the plan, each saga's final state, and the kit's journal.

    `sagas` maps each saga id to its final `SagaInfo` (status, steps,
    history; a saga missing from it was lost), `snapshots` to its stored
    `SagaState`. `saga` is the definition under test, `inputs` each saga's
    input. `calls` is every wrapped call of an action or compensation in
    order, `notes` every fault, crash, runtime start and resume, `writes`
    every history entry the store acknowledged. `fired` lists the faults
    that fired (the others never found their target). `divergences` maps a
    code saga to the `NonDeterminismError` its body hit when the kit replayed
    its history at the end (a day later on the virtual clock).
    """

    plan: FaultPlan
    saga: Saga
    saga_ids: tuple[str, ...]
    inputs: Mapping[str, Any]
    sagas: Mapping[str, SagaInfo]
    snapshots: Mapping[str, SagaState]
    divergences: Mapping[str, str]
    calls: tuple[Call, ...]
    notes: tuple[Note, ...]
    writes: tuple[Write, ...]
    fired: tuple[Fault, ...]
    crashes: int
    runtimes: int
    resumed: tuple[str, ...]
    acknowledged: frozenset[str]

    def positions(self, saga_id: str) -> list[Position]:
        """What each position of the saga's final snapshot is (a code saga's from its calls)."""
        if self.saga.body is None:
            return [
                Position(
                    s.name,
                    s.compensate is not None,
                    s.wait is None,
                    s.retry.maximum_attempts,
                    self.saga.group_of[i],
                )
                for i, s in enumerate(self.saga.steps)
            ]
        positions = []
        for step in self.snapshots[saga_id].steps:
            call = step.call
            assert call is not None
            retry = call.retry or _DEFAULT_RETRY
            wrapped = call.kind is Kind.STEP
            positions.append(
                Position(call.label, call.compensable, wrapped, retry.maximum_attempts, call.group)
            )
        return positions

    def status(self, saga_id: str) -> SagaStatus | None:
        """The saga's final status (None: the saga does not exist)."""
        info = self.sagas.get(saga_id)
        return None if info is None else info.status

    def with_status(self, *statuses: SagaStatus | str) -> list[str]:
        """The ids of the sagas that ended with one of `statuses`."""
        return [sid for sid in self.saga_ids if self.status(sid) in statuses]

    def calls_of(
        self, saga_id: str, step: str | None = None, kind: CallKind | None = None
    ) -> list[Call]:
        """The saga's wrapped calls, optionally of one step and one kind, in order."""
        return [
            call
            for call in self.calls
            if call.saga_id == saga_id and step in (None, call.step) and kind in (None, call.kind)
        ]

    def timeline(self, saga_id: str) -> list[str]:
        """The saga's timeline interleaved with its calls and the kit's faults and crashes.

        Lines from the saga's history read as `SagaInfo.timeline()`; calls
        start with "->", the kit's notes with "!!".
        """
        info = self.sagas.get(saga_id)
        entries: list[tuple[float, int, str]] = []
        origin = _origin(info, self.notes, saga_id)
        if info is not None:
            entries += _history_lines(info, self.writes)
        for call in self.calls:
            if call.saga_id == saga_id:
                stamp = _stamp(call.at - origin)
                entries.append((call.order, 0, f"{stamp}  -> {call.describe()}"))
        # Runtime-wide notes (crashes, reopens) only while the saga was live.
        end: float = max((w.order for w in self.writes if w.saga_id == saga_id), default=0)
        if info is None or not info.status.is_terminal:
            end = math.inf
        for note in self.notes:
            if note.saga_id == saga_id or (note.saga_id is None and note.order < end):
                stamp = _stamp(note.at - origin)
                entries.append((note.order, 0, f"{stamp}  !! {note.text}"))
        entries.sort(key=lambda entry: entry[:2])
        return [text for _, _, text in entries]

    def explain(self, problem: str, saga_ids: Iterable[str]) -> str:
        """`problem`, then the plan, what fired, and the timeline of each saga in `saga_ids`."""
        lines = [problem, "", f"plan: {self.plan!r}"]
        fired = ", ".join(map(repr, self.fired)) or "none"
        lines.append(f"fired: {fired}")
        lines.append(
            f"crashes: {self.crashes}, runtimes opened: {self.runtimes}, "
            f"resumed by the harness: {list(self.resumed) or 'none'}"
        )
        for saga_id in dict.fromkeys(saga_ids):
            info = self.sagas.get(saga_id)
            status = "MISSING" if info is None else str(info.status)
            lines += ["", f"saga {saga_id} ({status}), input {self.inputs.get(saga_id)!r}:"]
            lines += [f"  {line}" for line in self.timeline(saga_id)]
        return "\n".join(lines)


def _stamp(seconds: float) -> str:
    return f"+{seconds:8.3f}s"


def _origin(info: SagaInfo | None, notes: Sequence[Note], saga_id: str) -> float:
    if info is not None and info.history:
        return info.history[0].event.at
    return next((n.at for n in notes if n.saga_id == saga_id), 0.0)


def _history_lines(info: SagaInfo, writes: Sequence[Write]) -> list[tuple[float, int, str]]:
    """Each history entry's timeline lines, placed at the order its write was acknowledged.

    An entry whose acknowledgement the kit never saw (a write in flight when
    the runtime crashed, or one whose acknowledgement was lost) goes right
    after the entry before it.
    """
    acknowledged = {w.seq: w.order for w in writes if w.saga_id == info.saga_id}
    lines: list[tuple[float, int, str]] = []
    previous: list[str] = []
    place = 0.0
    for count in range(1, len(info.history) + 1):
        entry = info.history[count - 1]
        prefix = dataclasses.replace(info, history=info.history[:count])
        rendered = prefix.timeline()
        new = rendered[len(previous) :] if rendered[: len(previous)] == previous else rendered
        previous = rendered
        place = acknowledged.get(entry.seq, place + 0.001)
        lines += [(place, sub, text) for sub, text in enumerate(new, start=1)]
    return lines
