"""Persisted state of one saga instance: frozen msgspec Structs with explicit tags.

Tags (not class names) identify stored types, so renaming a class never
breaks stored data. `SagaState.v` is the snapshot schema version.

They are `gc=False`: frozen, holding only scalars, raw JSON and other such
Structs, they cannot form reference cycles, so the cycle collector need not
track the several a transition makes.
"""

from __future__ import annotations

import enum

import msgspec

from ._calls import CallSpec
from ._errorinfo import NULL, ErrorInfo, FailureKind

__all__ = (
    "NULL",
    "CompensationStatus",
    "ErrorInfo",
    "FailureKind",
    "ParentRef",
    "SagaState",
    "SagaStatus",
    "Signal",
    "StepState",
    "StepStatus",
)


class SagaStatus(enum.StrEnum):
    """Where a saga instance stands. Terminal: completed, compensated, failed."""

    RUNNING = "running"
    """Forward steps are running (or backing off before a retry)."""
    WAITING = "waiting"
    """Waiting for a timer or a signal; no step is running."""
    COMPENSATING = "compensating"
    """A step failed for good; compensations are running newest first."""
    COMPLETED = "completed"
    """Every step succeeded."""
    COMPENSATED = "compensated"
    """Every step that may have taken effect was compensated."""
    FAILED = "failed"
    """A compensation failed definitively: an operator must look."""
    SUSPENDED = "suspended"
    """Parked for an operator (crash loop, corrupt data); nothing is lost."""

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def is_live(self) -> bool:
        """Running, waiting or compensating: a runtime drives it."""
        return self in LIVE


_TERMINAL = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED})
FORWARD = frozenset({SagaStatus.RUNNING, SagaStatus.WAITING})
LIVE = FORWARD | {SagaStatus.COMPENSATING}


class StepStatus(enum.StrEnum):
    """The forward side of one step."""

    PENDING = "pending"
    """Never started."""
    RUNNING = "running"
    """An attempt's intent is durable; its outcome is not (yet)."""
    RETRYING = "retrying"
    """An attempt failed retryably; the next one is due at `retry_at`."""
    WAITING = "waiting"
    """A waiting step (sleep or signal) is waiting; see `wait_until`."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """Failed definitively: proven to have taken no effect."""
    AMBIGUOUS = "ambiguous"
    """Ended without success but may have taken effect (retries exhausted, timeout)."""


class CompensationStatus(enum.StrEnum):
    """The compensation side of one step."""

    NONE = "none"
    RUNNING = "running"
    RETRYING = "retrying"
    WAITING = "waiting"
    """A child saga's compensation was requested; the child reports when it is done."""
    COMPENSATED = "compensated"
    FAILED = "failed"


class StepState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """The forward and compensation sides of one step (or of a code saga's call), as persisted.

    `call` is the recorded call of a code saga (None in a step-list saga,
    whose definition says what each step is). `interrupted`: the current
    attempt's intent outlived an interruption (a crash, a restart), so its
    action may have run even if this runtime never started it.
    """

    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    retry_at: float | None = None
    wait_until: float | None = None
    result: msgspec.Raw = NULL
    error: ErrorInfo | None = None
    compensation: CompensationStatus = CompensationStatus.NONE
    compensation_attempts: int = 0
    compensation_retry_at: float | None = None
    compensation_error: ErrorInfo | None = None
    call: CallSpec | None = None
    interrupted: bool = False

    @property
    def open(self) -> bool:
        """Whether something is still to happen to it: an outcome, a retry, a compensation."""
        return self.status in _OPEN_STEP or self.compensation in _OPEN_COMPENSATION


_OPEN_STEP = frozenset({StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.WAITING})
_OPEN_COMPENSATION = frozenset(
    {CompensationStatus.RUNNING, CompensationStatus.RETRYING, CompensationStatus.WAITING}
)


class ParentRef(msgspec.Struct, frozen=True, gc=False):
    """The parent of a child saga: its id, and the position of the `ctx.child` call."""

    saga_id: str
    position: int


class Signal(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A signal kept in a saga's inbox until a step waits for it."""

    name: str
    payload: msgspec.Raw = NULL
    key: str | None = None
    at: float = 0.0


class SagaState(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="saga", gc=False
):
    """The snapshot: everything needed to carry on after a crash.

    A step-list saga's `steps` hold one state per step of its definition. A
    code saga's hold one per call its body made; in memory all of them, in
    the store only the open ones (`stored()`), so a saga of a thousand calls
    does not write its whole past at every transition: `partial` marks that
    stored form, which `saga.engine.restore` completes from the history.
    """

    v: int = 1
    saga_id: str
    saga_name: str
    definition_version: int = 1
    status: SagaStatus = SagaStatus.RUNNING
    seq: int = 0
    steps: tuple[StepState, ...]
    failed_step: int | None = None
    failure: ErrorInfo | None = None
    recoveries: int = 0
    suspended_reason: str | None = None
    resume_status: SagaStatus | None = None
    started_at: float = 0.0
    updated_at: float = 0.0
    deadline_at: float | None = None
    waiting_for: str | None = None
    inbox: tuple[Signal, ...] = ()
    signal_keys: tuple[str, ...] = ()
    output: msgspec.Raw = NULL
    """A completed code saga's return value (JSON)."""
    parent: ParentRef | None = None
    partial: bool = False

    @property
    def is_code(self) -> bool:
        """Whether the steps are a code saga's calls (they carry their `CallSpec`)."""
        return bool(self.steps) and self.steps[0].call is not None

    def stored(self) -> SagaState:
        """The form a store persists: itself, or for a code saga only its open calls."""
        if self.partial or not self.is_code:
            return self
        return msgspec.structs.replace(
            self, steps=tuple(step for step in self.steps if step.open), partial=True
        )

    @property
    def wake_at(self) -> float | None:
        """When the saga next needs waking without a message, if ever."""
        due = self.deadline_at if self.status in FORWARD else None
        # Plain loops, no tuple per step: the writer asks this of every snapshot.
        for step in self.steps:
            if step.retry_at is not None and (due is None or step.retry_at < due):
                due = step.retry_at
            if step.wait_until is not None and (due is None or step.wait_until < due):
                due = step.wait_until
            retry = step.compensation_retry_at
            if retry is not None and (due is None or retry < due):
                due = retry
        return due

    @property
    def in_flight(self) -> bool:
        """True when a step or compensation intent is durable but its outcome is not."""
        if self.status is SagaStatus.RUNNING:
            for step in self.steps:
                if step.status is StepStatus.RUNNING:
                    return True
        elif self.status is SagaStatus.COMPENSATING:
            for step in self.steps:
                if step.compensation is CompensationStatus.RUNNING:
                    return True
        return False
