"""Embedding Sagaloop: the `Runtime`, its stores and its errors.

    from runtime import Runtime, SagaCompensated, SagaFailed, SagaNotFound

Saga definitions come from `saga`; this package runs them. Test helpers are in
`runtime.testing`; the stores in `runtime.sqlite` and `runtime.postgres`.
"""

import warnings
from typing import TYPE_CHECKING, Any

from saga import (
    CorruptSagaError,
    PayloadError,
    SagaEndedError,
    SagaError,
    SagaNotFound,
    SagaStatus,
    StoreError,
    VirtualClock,
)
from saga.store import LeaseLostError, StaleStateError

from ._delegate import DelegatingStore
from ._errors import (
    CodecError,
    CommitOutcomeUnknownError,
    DuplicateSagaError,
    RuntimeNotRunningError,
    SagaCompensated,
    SagaFailed,
    SagaNotSuspendedError,
    SagaPrunedError,
    SagaSuspendedError,
    SchemaVersionError,
    StoreClosedError,
    StoreLockedError,
    UnknownSignalError,
    UnregisteredSagaError,
)
from ._handle import SagaHandle
from ._info import SagaInfo, SagaPage, SagaSummary, StepInfo
from ._runtime import Runtime
from .sqlite import SqliteStore

if TYPE_CHECKING:
    from .postgres import PostgresStore

# Names this package exported before 0.3, and where each went (README, "Changelog").
_MOVED = {
    "UnknownSagaError": ("UnregisteredSagaError", UnregisteredSagaError),
    "Sleep": ("saga.Sleep", None),
    "WaitForSignal": ("saga.WaitForSignal", None),
    "OnTimeout": ("saga.OnTimeout", None),
    "Continue": ("saga.Continue", None),
}


def __getattr__(name: str) -> Any:
    # PostgresStore needs asyncpg (the `postgres` extra): imported on first use only.
    if name == "PostgresStore":
        from .postgres import PostgresStore

        return PostgresStore
    if name in _MOVED:
        new_name, value = _MOVED[name]
        warnings.warn(
            f"runtime.{name} is deprecated; use {new_name}", DeprecationWarning, stacklevel=2
        )
        if value is None:
            import saga

            value = getattr(saga, new_name.removeprefix("saga."))
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = (
    # the runtime and what it hands out
    "Runtime",
    "SagaHandle",
    "SagaInfo",
    "SagaPage",
    "SagaStatus",
    "SagaSummary",
    "StepInfo",
    "VirtualClock",
    # stores
    "DelegatingStore",
    "PostgresStore",
    "SqliteStore",
    # outcomes and errors (README, "Errors")
    "CommitOutcomeUnknownError",
    "CorruptSagaError",
    "DuplicateSagaError",
    "SagaPrunedError",
    "CodecError",
    "LeaseLostError",
    "PayloadError",
    "RuntimeNotRunningError",
    "SagaCompensated",
    "SagaEndedError",
    "SagaError",
    "SagaFailed",
    "SagaNotFound",
    "SagaNotSuspendedError",
    "SagaSuspendedError",
    "SchemaVersionError",
    "StaleStateError",
    "StoreClosedError",
    "StoreError",
    "StoreLockedError",
    "UnknownSignalError",
    "UnregisteredSagaError",
)
