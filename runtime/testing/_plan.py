"""Fault plans: which faults hit which saga, where; and the Hypothesis strategy that draws them.

A plan is plain, frozen data whose repr is the Python that builds it, so a
falsifying example printed by Hypothesis can be pasted into
`FaultInjection.run` to replay it. Each fault fires at most once.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from hypothesis import strategies as st

StepFaultKind = Literal[
    "transient", "permanent", "timeout", "effect_then_error", "duplicate", "outage"
]
CrashPoint = Literal["before_call", "after_effect", "after_record", "recovery"]
StoreFaultKind = Literal["write_failed", "ack_lost", "db_locked", "disk_full"]

STEP_FAULT_KINDS: tuple[StepFaultKind, ...] = get_args(StepFaultKind)
OUTAGE_ATTEMPTS = 10
"""The longest outage: what an outage does to a step whose policy retries forever."""
CRASH_POINTS: tuple[CrashPoint, ...] = get_args(CrashPoint)
STORE_FAULT_KINDS: tuple[StoreFaultKind, ...] = get_args(StoreFaultKind)

FaultKind = Literal[
    "transient",
    "permanent",
    "timeout",
    "effect_then_error",
    "duplicate",
    "outage",
    "crash_before_call",
    "crash_after_effect",
    "crash_after_record",
    "crash_in_recovery",
    "write_failed",
    "ack_lost",
    "db_locked",
    "disk_full",
]
"""Every kind of fault the kit draws; `fault_injection(faults=...)` picks among them."""

FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
CRASH_KINDS: dict[CrashPoint, FaultKind] = {
    "before_call": "crash_before_call",
    "after_effect": "crash_after_effect",
    "after_record": "crash_after_record",
    "recovery": "crash_in_recovery",
}


@dataclass(frozen=True)
class StepFault:
    """Attempt `attempt` of `step`'s action (or compensation) of saga number `saga` misbehaves.

    - "transient": raises `InjectedTransientError` before the real call.
    - "permanent": raises `InjectedPermanentError` (non-retryable) before the
      real call; skipped if an earlier attempt may have taken effect.
    - "timeout": the real call runs, then the attempt hangs until the step's
      timeout (shortened to a few milliseconds) cuts it: a reply that never came.
    - "effect_then_error": the real call runs, then `InjectedTransientError`.
    - "duplicate": the real call runs twice with the same context; the second
      result is returned (a redelivered request).
    - "outage" (actions only): this attempt and every later one raise
      `InjectedTransientError` before the real call, until the step's policy
      gives up (at most `OUTAGE_ATTEMPTS`): the step ends ambiguous without
      having taken effect, and its compensation must cope with nothing to undo.
    """

    saga: int
    step: str
    attempt: int
    kind: StepFaultKind
    compensating: bool = False

    def __repr__(self) -> str:
        extra = ", compensating=True" if self.compensating else ""
        return (
            f"StepFault(saga={self.saga}, step={self.step!r}, attempt={self.attempt}, "
            f"kind={self.kind!r}{extra})"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # Hypothesis prints falsifying examples with this

    @property
    def fault_kind(self) -> FaultKind:
        """This fault's kind among `FAULT_KINDS`."""
        return self.kind


@dataclass(frozen=True)
class Crash:
    """The runtime dies (its scope is cancelled and a new one opens on the same file).

    - "before_call": as attempt `attempt` of `step` (or its compensation) starts.
    - "after_effect": the real call returned; its outcome is not recorded.
    - "after_record": the attempt's outcome is durable; the saga has not acted on it.
    - "recovery": saga `saga` durably recorded a recovery, then the runtime died
      again before rerunning what was interrupted (`step` and `attempt` unused).
    """

    saga: int
    at: CrashPoint
    step: str | None = None
    attempt: int = 1
    compensating: bool = False

    def __repr__(self) -> str:
        if self.at == "recovery":
            return f"Crash(saga={self.saga}, at='recovery')"
        extra = ", compensating=True" if self.compensating else ""
        return (
            f"Crash(saga={self.saga}, at={self.at!r}, step={self.step!r}, "
            f"attempt={self.attempt}{extra})"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # Hypothesis prints falsifying examples with this

    @property
    def fault_kind(self) -> FaultKind:
        """This fault's kind among `FAULT_KINDS`."""
        return CRASH_KINDS[self.at]


@dataclass(frozen=True)
class StoreFault:
    """Write number `write` of saga number `saga` (its creation is write 1) fails.

    - "write_failed": `StoreError` before anything is written.
    - "ack_lost": the write commits, then `StoreError` (the caller cannot tell).
    - "db_locked" / "disk_full": `StoreError` from `sqlite3.OperationalError`
      ("database is locked", "database or disk is full"), nothing written.

    The saga's actor crashes and its supervisor restarts it from the
    snapshot; a failed creation makes `spawn` raise, and the harness retries it.
    """

    saga: int
    write: int
    kind: StoreFaultKind

    def __repr__(self) -> str:
        return f"StoreFault(saga={self.saga}, write={self.write}, kind={self.kind!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # Hypothesis prints falsifying examples with this

    @property
    def fault_kind(self) -> FaultKind:
        """This fault's kind among `FAULT_KINDS`."""
        return self.kind


Fault = StepFault | Crash | StoreFault


class FaultPlan:
    """The faults of one example, each firing at most once: `FaultPlan(fault, ...)`."""

    __slots__ = ("faults",)

    def __init__(self, *faults: Fault) -> None:
        self.faults: tuple[Fault, ...] = faults

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FaultPlan) and other.faults == self.faults

    def __hash__(self) -> int:
        return hash(self.faults)

    def __repr__(self) -> str:
        if len(self.faults) <= 1:
            return f"FaultPlan({', '.join(map(repr, self.faults))})"
        return "FaultPlan(\n" + "".join(f"    {fault!r},\n" for fault in self.faults) + ")"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


@dataclass(frozen=True)
class SagaShape:
    """What a plan can target in a saga: its (non-waiting) steps and which compensate."""

    steps: tuple[str, ...]
    compensable: frozenset[str]


def fault_plans(
    shape: SagaShape,
    *,
    sagas: int,
    max_faults: int = 6,
    kinds: Collection[FaultKind] = FAULT_KINDS,
    max_attempt: int = 3,
    max_write: int = 10,
) -> st.SearchStrategy[FaultPlan]:
    """Plans of 1 to `max_faults` faults of `kinds` against `sagas` sagas shaped as `shape`.

    Shrinks towards fewer faults, lower saga numbers, earlier steps and
    attempts, and step faults before crashes before store faults.
    Raises `ValueError` for an unknown kind or nothing to target.
    """
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {list(FAULT_KINDS)}")
    if not shape.steps:
        raise ValueError("the saga has no step the kit can wrap")
    saga = st.integers(0, max(sagas - 1, 0))
    # Most attempts never get past the first: aim half the faults there.
    attempt = st.one_of(st.just(1), st.integers(1, max_attempt))
    steps = st.sampled_from(shape.steps)
    undo_steps = st.sampled_from(sorted(shape.compensable))
    # (weight, strategy): one_of picks a branch uniformly, so a weight repeats it.
    options: list[tuple[int, st.SearchStrategy[Fault]]] = []

    step_kinds = [k for k in STEP_FAULT_KINDS if k in kinds]
    undo_kinds = [k for k in step_kinds if k != "outage"]  # compensations retry forever
    if step_kinds:
        action = st.builds(
            StepFault, saga=saga, step=steps, attempt=attempt, kind=st.sampled_from(step_kinds)
        )
        options.append((3, action))
    if undo_kinds and shape.compensable:
        undo = st.builds(
            StepFault,
            saga=saga,
            step=undo_steps,
            attempt=attempt,
            kind=st.sampled_from(undo_kinds),
            compensating=st.just(True),
        )
        options.append((1, undo))
    points = [p for p in CRASH_POINTS if CRASH_KINDS[p] in kinds and p != "recovery"]
    if points:
        at = st.sampled_from(points)
        options.append((2, st.builds(Crash, saga=saga, at=at, step=steps, attempt=attempt)))
        if shape.compensable:
            crash_undo = st.builds(
                Crash,
                saga=saga,
                at=at,
                step=undo_steps,
                attempt=attempt,
                compensating=st.just(True),
            )
            options.append((1, crash_undo))
    if CRASH_KINDS["recovery"] in kinds:
        options.append((1, st.builds(Crash, saga=saga, at=st.just("recovery"))))
    store_kinds = [k for k in STORE_FAULT_KINDS if k in kinds]
    if store_kinds:
        write = st.integers(1, max_write)
        store = st.builds(StoreFault, saga=saga, write=write, kind=st.sampled_from(store_kinds))
        options.append((2, store))
    if not options or max_faults == 0:
        return st.just(FaultPlan())
    # Hypothesis favours the first branches: the common faults go first.
    options.sort(key=lambda option: -option[0])
    fault = st.one_of([strategy for weight, strategy in options for _ in range(weight)])
    # At least one fault: a plan with none exercises nothing the kit is for.
    faults = st.lists(fault, min_size=1, max_size=max_faults, unique=True)
    return faults.map(lambda drawn: FaultPlan(*drawn))


def shape_of(step_names: Sequence[str], compensable: Collection[str]) -> SagaShape:
    return SagaShape(tuple(step_names), frozenset(compensable))
