"""The runtime's errors, in one place. Store and payload errors live in `saga` and are
re-exported by `runtime`; the README's "Errors" table says when each is raised."""

from __future__ import annotations

from saga import CorruptSagaError, ErrorInfo, PayloadError, SagaError, SagaNotFound, StoreError


# `SagaCompensated` and `SagaFailed` are outcomes, named in DESIGN.md's contract: no
# "Error" suffix, as `SagaNotFound` in `saga`.
class SagaCompensated(SagaError):  # noqa: N818
    """Raised by `SagaHandle.result` when the saga was rolled back: every step that
    may have taken effect was compensated. `step` is the step that failed for good
    and `error` its recorded error."""

    def __init__(self, saga_id: str, step: str | None, error: ErrorInfo | None) -> None:
        super().__init__(f"saga {saga_id!r} was compensated after step {step!r} failed: {error}")
        self.saga_id = saga_id
        self.step = step
        self.error = error


class SagaFailed(SagaError):  # noqa: N818
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


class SagaPrunedError(SagaNotFound):
    """Raised by `status`, `result` and the store's reads for a saga that ended and was
    pruned by retention: only its tombstone is left (it ran; nothing of it is kept).

    A `SagaNotFound`, so code that treats a missing saga as missing keeps working."""

    def __init__(self, saga_id: str) -> None:
        super().__init__(saga_id)
        self.args = (f"saga {saga_id!r} ended and was pruned (retention); only its id is kept",)


class UnregisteredSagaError(SagaError, LookupError):
    """Raised by `Runtime.spawn` (and `status`, `result`) for a saga definition this runtime
    was not given. Not `SagaNotFound`: the instance may well exist, its code is missing here."""


class StoreLockedError(SagaError):
    """Raised when entering a `Runtime` whose SQLite file another runtime has open."""


class SchemaVersionError(SagaError):
    """Raised when entering a `Runtime` on a database written by a newer Sagaloop."""


class RuntimeNotRunningError(SagaError, RuntimeError):
    """Raised by `Runtime` methods called outside its `async with` block."""


class SagaSuspendedError(SagaError):
    """Raised by `SagaHandle.result` / `Runtime.result` when the saga is suspended: it stopped
    for an operator (`reason`), who may `Runtime.resume` it; then ask for its result again."""

    def __init__(self, saga_id: str, reason: str | None) -> None:
        super().__init__(f"saga {saga_id!r} is suspended: {reason}")
        self.saga_id = saga_id
        self.reason = reason


class SagaNotSuspendedError(SagaError):
    """Raised by `Runtime.resume` for a saga that is not suspended (nothing to resume), or
    that another caller resumed meanwhile."""


class StoreClosedError(StoreError):
    """Raised by a store's methods once it is closed (or before it is opened)."""


class CommitOutcomeUnknownError(StoreError):
    """PostgreSQL's connection failed during COMMIT: the batch may or may not be durable.
    Never retried blindly; the runtime reloads the saga to learn which."""


class UnknownSignalError(SagaError, LookupError):
    """Raised by `Runtime.signal` for a signal no step of the saga waits for."""


class CodecError(CorruptSagaError, PayloadError):
    """A stored value the payload codec cannot open: written under a key not given here,
    altered, or encoded while this runtime has no codec. The saga is suspended with this
    reason (never run on what it cannot read); give the key and `Runtime.resume` it.
    `missing_key`: the codec or key is missing here (not a value altered)."""

    def __init__(self, saga_id: str, detail: str, missing_key: bool = False) -> None:
        super().__init__(saga_id, detail)
        self.missing_key = missing_key
