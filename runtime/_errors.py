"""The runtime's errors. Store and payload errors live in `saga` and are re-exported here."""

from __future__ import annotations

from saga import ErrorInfo, SagaError


class SagaCompensated(SagaError):
    """Raised by `SagaHandle.result` when the saga was rolled back: every step that
    may have taken effect was compensated. `step` is the step that failed for good
    and `error` its recorded error."""

    def __init__(self, saga_id: str, step: str | None, error: ErrorInfo | None) -> None:
        super().__init__(f"saga {saga_id!r} was compensated after step {step!r} failed: {error}")
        self.saga_id = saga_id
        self.step = step
        self.error = error


class SagaFailed(SagaError):
    """Raised by `SagaHandle.result` when a compensation failed definitively.

    The saga is `failed`: some effects may remain and an operator must look.
    `step` is the step whose compensation failed, `error` that failure, and
    `cause_step`/`cause` the forward failure that started compensation.
    """

    def __init__(
        self,
        saga_id: str,
        step: str | None,
        error: ErrorInfo | None,
        cause_step: str | None,
        cause: ErrorInfo | None,
    ) -> None:
        super().__init__(
            f"saga {saga_id!r} failed: compensation of step {step!r} failed ({error}) "
            f"while rolling back step {cause_step!r} ({cause})"
        )
        self.saga_id = saga_id
        self.step = step
        self.error = error
        self.cause_step = cause_step
        self.cause = cause


class DuplicateSagaError(SagaError):
    """Raised by `Runtime.spawn` when `saga_id` exists with another saga or another input."""

    def __init__(self, saga_id: str, detail: str) -> None:
        super().__init__(f"saga {saga_id!r} already exists {detail}")
        self.saga_id = saga_id


class UnknownSagaError(SagaError, LookupError):
    """Raised by `Runtime.spawn` for a saga definition the runtime was not given."""


class StoreLockedError(SagaError):
    """Raised when entering a `Runtime` whose SQLite file another runtime has open."""


class SchemaVersionError(SagaError):
    """Raised when entering a `Runtime` on a database written by a newer Sagaloop."""


class RuntimeNotRunningError(SagaError, RuntimeError):
    """Raised by `Runtime` methods called outside its `async with` block."""


class SagaSuspendedError(SagaError):
    """Raised by `Runtime.resume` for a saga that is not suspended."""


class UnknownSignalError(SagaError, LookupError):
    """Raised by `Runtime.signal` for a signal no step of the saga waits for."""
