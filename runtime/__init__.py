"""Embedding Sagaloop: the `Runtime`, its stores and its errors.

from runtime import Runtime, SagaCompensated, SagaFailed, SagaNotFound, DuplicateSagaError
"""

from typing import TYPE_CHECKING, Any

from saga import (
    Continue,
    CorruptSagaError,
    OnTimeout,
    PayloadError,
    SagaEndedError,
    SagaError,
    SagaNotFound,
    SagaStatus,
    Sleep,
    StoreError,
    VirtualClock,
    WaitForSignal,
)
from saga.store import LeaseLostError, StaleStateError

from ._delegate import DelegatingStore
from ._errors import (
    DuplicateSagaError,
    RuntimeNotRunningError,
    SagaCompensated,
    SagaFailed,
    SagaSuspendedError,
    SchemaVersionError,
    StoreLockedError,
    UnknownSagaError,
    UnknownSignalError,
)
from ._handle import SagaHandle
from ._info import SagaInfo, SagaPage, SagaSummary, StepInfo
from ._runtime import Runtime
from ._sqlite_store import SqliteStore, StoreClosedError

if TYPE_CHECKING:
    from ._pg_store import PostgresStore


def __getattr__(name: str) -> Any:
    # PostgresStore needs asyncpg (the `postgres` extra): imported on first use only.
    if name == "PostgresStore":
        from ._pg_store import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = (
    "SagaSummary",
    "SagaPage",
    "UnknownSignalError",
    "WaitForSignal",
    "VirtualClock",
    "Sleep",
    "SagaEndedError",
    "OnTimeout",
    "Continue",
    "DelegatingStore",
    "CorruptSagaError",
    "DuplicateSagaError",
    "PayloadError",
    "Runtime",
    "RuntimeNotRunningError",
    "SagaCompensated",
    "SagaError",
    "SagaFailed",
    "SagaHandle",
    "SagaInfo",
    "SagaNotFound",
    "SagaStatus",
    "SagaSuspendedError",
    "SchemaVersionError",
    "SqliteStore",
    "PostgresStore",
    "LeaseLostError",
    "StaleStateError",
    "StepInfo",
    "StoreClosedError",
    "StoreError",
    "StoreLockedError",
    "UnknownSagaError",
)
