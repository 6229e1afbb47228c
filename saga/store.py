"""For store implementers: the `Store` protocol, the rows it deals in, the persisted state.

A saga author never needs this module; `runtime` implements it for SQLite and
PostgreSQL. A store persists `SagaState.stored()` (for a code saga only its
open calls; `saga.engine.restore` completes it from the history) and the
history of events, and keeps each saga's inbox.
"""

from ._errors import LeaseLostError, StaleStateError
from ._model import ParentRef, SagaState, Signal, StepState
from ._store import (
    DueSaga,
    HistoryEntry,
    InboxItem,
    Notice,
    OwnedSaga,
    Prunable,
    RetainingStore,
    SagaRow,
    SharedStore,
    Store,
    StoredSaga,
    UnfinishedSaga,
)

__all__ = (
    "Store",
    "SharedStore",
    "RetainingStore",
    "Prunable",
    "StoredSaga",
    "SagaState",
    "StepState",
    "Signal",
    "ParentRef",
    "HistoryEntry",
    "InboxItem",
    "SagaRow",
    "DueSaga",
    "Notice",
    "OwnedSaga",
    "UnfinishedSaga",
    "StaleStateError",
    "LeaseLostError",
)
