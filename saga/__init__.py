"""The saga domain: definitions, the pure state machine, the saga actor, the `Store` protocol.

from saga import Saga, Step, RetryPolicy, StepContext, NonRetryableError
"""

from ._actor import FreshStart, GetState, SagaActor, SagaActorDeps, SagaMessage
from ._clock import Clock, SystemClock
from ._commands import Command, Finish, RunCompensation, RunStep, ScheduleWakeup
from ._context import StepContext
from ._definition import Action, Compensation, Saga, Step
from ._errors import (
    CorruptSagaError,
    DefinitionError,
    InvalidTransitionError,
    NonRetryableError,
    PayloadError,
    SagaError,
    SagaNotFound,
    StaleStateError,
    StoreError,
)
from ._events import (
    CompensationFailed,
    CompensationSucceeded,
    Event,
    Recovered,
    Resumed,
    SagaStarted,
    StepFailed,
    StepSucceeded,
    Suspended,
    TimerFired,
)
from ._machine import Transition, initial_state, start, transition
from ._model import (
    CompensationStatus,
    ErrorInfo,
    FailureKind,
    SagaState,
    SagaStatus,
    StepState,
    StepStatus,
)
from ._payload import decode_payload, encode_payload
from ._policy import RetryPolicy
from ._store import HistoryEntry, Store, StoredSaga, UnfinishedSaga

__all__ = (
    "Action",
    "Clock",
    "Command",
    "Compensation",
    "CompensationFailed",
    "CompensationStatus",
    "CompensationSucceeded",
    "CorruptSagaError",
    "DefinitionError",
    "ErrorInfo",
    "Event",
    "FailureKind",
    "Finish",
    "FreshStart",
    "GetState",
    "HistoryEntry",
    "InvalidTransitionError",
    "NonRetryableError",
    "PayloadError",
    "Recovered",
    "Resumed",
    "RetryPolicy",
    "RunCompensation",
    "RunStep",
    "Saga",
    "SagaActor",
    "SagaActorDeps",
    "SagaError",
    "SagaMessage",
    "SagaNotFound",
    "SagaStarted",
    "SagaState",
    "SagaStatus",
    "ScheduleWakeup",
    "StaleStateError",
    "Step",
    "StepContext",
    "StepFailed",
    "StepState",
    "StepStatus",
    "StepSucceeded",
    "Store",
    "StoreError",
    "StoredSaga",
    "Suspended",
    "SystemClock",
    "TimerFired",
    "Transition",
    "UnfinishedSaga",
    "decode_payload",
    "encode_payload",
    "initial_state",
    "start",
    "transition",
)
