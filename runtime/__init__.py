"""Embedding Sagaloop: the `Runtime`, its stores and its errors.

from runtime import Runtime, SagaCompensated, SagaFailed, SagaNotFound, DuplicateSagaError
"""

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
    StaleStateError,
    StoreError,
    VirtualClock,
    WaitForSignal,
)

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
    "StaleStateError",
    "StepInfo",
    "StoreClosedError",
    "StoreError",
    "StoreLockedError",
    "UnknownSagaError",
)
