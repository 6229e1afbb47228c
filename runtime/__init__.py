"""Embedding Sagaloop: the `Runtime`, its stores and its errors.

from runtime import Runtime, SagaCompensated, SagaFailed, SagaNotFound, DuplicateSagaError
"""

from saga import (
    CorruptSagaError,
    PayloadError,
    SagaError,
    SagaNotFound,
    SagaStatus,
    StaleStateError,
    StoreError,
)

from ._errors import (
    DuplicateSagaError,
    RuntimeNotRunningError,
    SagaCompensated,
    SagaFailed,
    SagaSuspendedError,
    SchemaVersionError,
    StoreLockedError,
    UnknownSagaError,
)
from ._handle import SagaHandle
from ._info import SagaInfo, StepInfo
from ._runtime import Runtime
from ._sqlite_store import SqliteStore, StoreClosedError

__all__ = (
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
