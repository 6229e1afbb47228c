"""`SagaInfo`: what `Runtime.status` reports about one saga."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from saga import (
    CallKind,
    CompensationStatus,
    CorruptSagaError,
    ErrorInfo,
    Saga,
    SagaStatus,
    StepStatus,
)
from saga.engine import check_fits, label, timeline
from saga.engine import kind_of as kind
from saga.store import HistoryEntry, SagaRow, SagaState


@dataclass(frozen=True, slots=True)
class StepInfo:
    """One step of a saga (a code saga: one call of its body) as `Runtime.status` reports it.

    `name` is the step's name (a code saga's k-th call of a name: `name#k`), `kind` what
    it is, `group` the position of the first call of its parallel group (None: alone),
    `child_id` a child saga's id.
    """

    name: str
    status: StepStatus
    attempts: int
    error: ErrorInfo | None
    compensation: CompensationStatus
    compensation_attempts: int
    compensation_error: ErrorInfo | None
    retry_at: float | None
    kind: CallKind = CallKind.STEP
    position: int = 0
    group: int | None = None
    child_id: str | None = None


@dataclass(frozen=True, slots=True)
class SagaInfo:
    """A saga's state as stored.

    `current_step` is the step running or backing off (or being compensated),
    `attempts` its attempt count, `last_error` the newest recorded error,
    `failure` the error that started compensation, `history` every transition.
    A waiting saga shows `waiting_for` (the signal; None for a sleep) and
    `wake_at` (when it wakes, or times out, if ever). A code saga's `steps` are
    the calls its body made, in order; `parent_id` and `children` link child
    sagas to their parent.
    """

    saga_id: str
    saga_name: str
    status: SagaStatus
    current_step: str | None
    attempts: int
    last_error: ErrorInfo | None
    failed_step: str | None
    failure: ErrorInfo | None
    steps: tuple[StepInfo, ...]
    wake_at: float | None
    waiting_for: str | None
    suspended_reason: str | None
    recoveries: int
    started_at: float
    updated_at: float
    history: tuple[HistoryEntry, ...]
    _definition: Saga
    parent_id: str | None = None
    """A child saga's parent."""
    children: tuple[str, ...] = ()
    """The ids of the child sagas this saga started."""
    version: int = 1
    """The definition version it runs on (to its end, whatever newer versions exist)."""
    input: Any = None
    """Its input as spawned, decoded from JSON (dicts and lists; opened by the payload
    codec when one sealed it)."""
    encrypted: bool = False
    """Its values are sealed by a payload codec this runtime cannot open (no codec, or
    not its key): only the columns kept in clear are shown, `input` is `<encrypted>`."""

    def timeline(self) -> list[str]:
        """The history as readable lines, one per thing that happened."""
        return timeline(self._definition, self.saga_id, [entry.event for entry in self.history])


_ACTIVE_STEP = frozenset({StepStatus.RUNNING, StepStatus.RETRYING})
_ACTIVE_COMPENSATION = frozenset({CompensationStatus.RUNNING, CompensationStatus.RETRYING})


def saga_info(
    saga: Saga, state: SagaState, history: Sequence[HistoryEntry], input: bytes = b"null"
) -> SagaInfo:
    """Raises `CorruptSagaError` for a snapshot that does not fit `saga`."""
    check_fits(saga, state)
    steps = tuple(_step_info(saga, state, index) for index in range(len(state.steps)))
    current: StepInfo | None = None
    attempts = 0
    for info in steps:
        if info.status in _ACTIVE_STEP:
            current, attempts = info, info.attempts
        elif info.compensation in _ACTIVE_COMPENSATION:
            current, attempts = info, info.compensation_attempts
    last_error = _last_error(history)
    failed = state.failed_step
    return SagaInfo(
        saga_id=state.saga_id,
        saga_name=state.saga_name,
        status=state.status,
        current_step=current.name if current else None,
        attempts=attempts,
        last_error=last_error,
        failed_step=steps[failed].name if failed is not None and failed < len(steps) else None,
        failure=state.failure,
        steps=steps,
        wake_at=state.wake_at,
        waiting_for=state.waiting_for,
        suspended_reason=state.suspended_reason,
        recoveries=state.recoveries,
        started_at=state.started_at,
        updated_at=state.updated_at,
        history=tuple(history),
        _definition=saga,
        parent_id=state.parent.saga_id if state.parent is not None else None,
        children=tuple(info.child_id for info in steps if info.child_id is not None),
        version=state.definition_version,
        input=_input(state.saga_id, input),
    )


ENCRYPTED = "<encrypted>"


def sealed_info(saga: Saga, row: SagaRow) -> SagaInfo:
    """What can be said of a saga whose values this runtime cannot open: its columns."""
    return SagaInfo(
        saga_id=row.saga_id,
        saga_name=row.saga_name,
        status=SagaStatus(row.status),
        current_step=None,
        attempts=0,
        last_error=None,
        failed_step=None,
        failure=None,
        steps=(),
        wake_at=row.wake_at,
        waiting_for=row.waiting_for,
        suspended_reason=None,
        recoveries=0,
        started_at=0.0,
        updated_at=row.updated_at,
        history=(),
        _definition=saga,
        version=row.version,
        input=ENCRYPTED,
        encrypted=True,
    )


def _input(saga_id: str, data: bytes) -> Any:
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise CorruptSagaError(saga_id, f"input column is not JSON: {exc}") from None


def _step_info(saga: Saga, state: SagaState, index: int) -> StepInfo:
    step = state.steps[index]
    call = step.call
    return StepInfo(
        name=label(saga, state, index),
        status=step.status,
        attempts=step.attempts,
        error=step.error,
        compensation=step.compensation,
        compensation_attempts=step.compensation_attempts,
        compensation_error=step.compensation_error,
        retry_at=step.retry_at if step.retry_at is not None else step.compensation_retry_at,
        kind=call.kind if call is not None else kind(saga, state, index),
        position=index,
        group=call.group if call is not None else saga.group_of[index],
        child_id=call.target if call is not None and call.kind is CallKind.CHILD else None,
    )


def _last_error(history: Sequence[HistoryEntry]) -> ErrorInfo | None:
    for entry in reversed(history):
        error = getattr(entry.event, "error", None)
        if isinstance(error, ErrorInfo):
            return error
    return None


@dataclass(frozen=True, slots=True)
class SagaSummary:
    """One saga in a `Runtime.list` page."""

    saga_id: str
    saga_name: str
    status: SagaStatus
    waiting_for: str | None
    wake_at: float | None
    updated_at: float
    version: int = 1
    """The definition version it runs on."""


@dataclass(frozen=True, slots=True)
class SagaPage:
    """A page of `Runtime.list`; `next_after` continues it (None: no more)."""

    items: tuple[SagaSummary, ...]
    next_after: str | None


STATUS_VALUES = frozenset(status.value for status in SagaStatus)


def not_a_time(column: str, shown: object) -> str:
    """The quarantine reason of a row whose `column` holds `shown`, not a time."""
    return f"its {column} column holds {shown}, not a time"


def row_problem(row: SagaRow) -> str | None:
    """Why a listed row cannot be a saga (a column edited by hand), or None."""
    if not isinstance(row.saga_name, str):
        return f"its saga_name column holds {row.saga_name!r}, not a name"
    if row.status not in STATUS_VALUES:
        return f"its status column holds {row.status!r}, not a saga status"
    if row.wake_at is not None and not _is_time(row.wake_at):
        return not_a_time("wake_at", repr(row.wake_at))
    if not _is_time(row.updated_at):
        return not_a_time("updated_at", repr(row.updated_at))
    if row.waiting_for is not None and not isinstance(row.waiting_for, str):
        return f"its waiting_for column holds {row.waiting_for!r}, not a signal name"
    if isinstance(row.version, bool) or not isinstance(row.version, int) or row.version < 1:
        return f"its version column holds {row.version!r}, not a definition version"
    return None


def _is_time(value: object) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool) and math.isfinite(value)
