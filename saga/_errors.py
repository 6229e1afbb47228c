"""The saga layer's errors.

`NonRetryableError` is for users to raise; the rest are raised to them.
"""

from __future__ import annotations

from ._errorinfo import ErrorInfo


class NonRetryableError(Exception):
    """Raise it (or a subclass) from a step to fail it definitively, whatever its policy says.

    A definitive failure proves the step took no effect: the step is not
    retried and is never compensated; the steps before it are.
    """


class StepTimeoutError(TimeoutError):
    """An attempt ran past its step's `timeout` (recorded as the attempt's error, never raised
    to a caller: the step is retried by its policy like any transient failure)."""

    def __init__(self, seconds: float | None, *, abandoned: bool = False) -> None:
        if abandoned:
            super().__init__(
                f"attempt timed out after {seconds} s and ignored its cancellation: abandoned"
            )
        else:
            super().__init__(f"attempt timed out after {seconds} s")
        self.abandoned = abandoned


class SagaError(Exception):
    """Base of every error Sagaloop raises to its users."""


class DefinitionError(SagaError, ValueError):
    """Raised by `Saga`, `Step` and `RetryPolicy` when a definition is invalid."""


class PayloadError(SagaError, TypeError):
    """Raised when a saga input or a step result is not a msgspec-serializable value.

    Raised by `Runtime.spawn` for an input; for a step result the saga
    records it as the step's error instead.
    """


class SagaNotFound(SagaError, LookupError):  # noqa: N818 (DESIGN.md's name)
    """Raised by stores and `Runtime.status` when no saga has the given id."""

    def __init__(self, saga_id: str) -> None:
        super().__init__(f"no saga with id {saga_id!r}")
        self.saga_id = saga_id


class InvalidTransitionError(SagaError):
    """Raised by the state machine for an event that does not apply to the saga's state."""


class StoreError(SagaError):
    """Base of the errors a `Store` raises: durable state could not be read or written."""


class StaleStateError(StoreError):
    """Raised by `Store.save` when the stored snapshot moved on: another writer owns the saga."""


class LeaseLostError(StaleStateError):
    """Raised by a shared store's `save` when another runtime has taken the saga over.

    This runtime's lease lapsed (a pause, a partition) and the saga's epoch
    moved on: the write is refused, and this runtime must drop the saga.
    """


class CorruptSagaError(StoreError):
    """Raised by `Store.load` when a stored snapshot cannot be decoded."""

    def __init__(self, saga_id: str, detail: str) -> None:
        super().__init__(f"saga {saga_id!r} has a corrupt snapshot: {detail}")
        self.saga_id = saga_id
        self.detail = detail


class SagaEndedError(SagaError):
    """Raised by `Runtime.signal`, `Runtime.cancel` and `Store.deliver` for an ended saga."""

    def __init__(self, saga_id: str, status: str) -> None:
        super().__init__(f"saga {saga_id!r} has ended ({status}); it takes no more signals")
        self.saga_id = saga_id
        self.status = status


class StepFailedError(SagaError):
    """Raised inside a code saga's body by an awaited `ctx` call that failed for good.

    `step` is the name as called, `error` the recorded error, `ambiguous`
    whether the call may have taken effect (retries exhausted, a timeout, a
    child that failed) or failed definitively (it took no effect). Raised by
    `ctx.step`, `ctx.child`, `ctx.wait_for_signal` (a timeout) and
    `ctx.parallel` (the first failed branch, in argument order).
    """

    def __init__(
        self, step: str, error: ErrorInfo, *, ambiguous: bool, position: int | None = None
    ) -> None:
        how = "may have taken effect" if ambiguous else "failed definitively"
        super().__init__(f"step {step!r} {how}: {error}")
        self.step = step
        self.error = error
        self.ambiguous = ambiguous
        self.position = position
        """The call's position (from 0): how the saga tells its own failures from the body's."""


class NonDeterminismError(SagaError):
    """Raised inside a code saga's body when, replaying its history, it makes a call other
    than the one recorded at that position (its code changed, or it branched on something
    not recorded). The saga is suspended; no action runs. `position` counts calls from 1.
    """

    def __init__(self, saga_id: str, position: int, recorded: str, new: str) -> None:
        super().__init__(
            f"saga {saga_id!r} is not deterministic at call {position}: "
            f"the history has {recorded}, the body now makes {new}"
        )
        self.saga_id = saga_id
        self.position = position
        self.recorded = recorded
        self.new = new
