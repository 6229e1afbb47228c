"""Sagaloop's saga layer: everything a saga author imports.

    from saga import Saga, Step, Parallel, RetryPolicy, StepContext, SagaContext

Definitions (a list of steps, or an async body), the contexts actions and
bodies receive, policies, waits, statuses and errors. The engine that runs
sagas (events, the state machine, the actor) is in `saga.engine`; what a
store implements is in `saga.store`. Neither is needed to write a saga.
"""

from ._calls import CallKind
from ._clock import Clock, SystemClock, VirtualClock
from ._context import StepContext
from ._definition import Action, Compensation, Parallel, Saga, Step
from ._errorinfo import ErrorInfo, FailureKind
from ._errors import (
    CorruptSagaError,
    DefinitionError,
    NonDeterminismError,
    NonRetryableError,
    PayloadError,
    SagaEndedError,
    SagaError,
    SagaNotFound,
    StepFailedError,
    StoreError,
)
from ._model import CompensationStatus, SagaStatus, StepStatus
from ._policy import RetryPolicy
from ._saga_context import SagaContext
from ._wait_steps import Sleep, WaitForSignal
from ._waits import Continue, OnTimeout

__all__ = (
    # definitions
    "Saga",
    "Step",
    "Parallel",
    "Sleep",
    "WaitForSignal",
    "Continue",
    "OnTimeout",
    "RetryPolicy",
    "Action",
    "Compensation",
    # what actions and bodies receive
    "StepContext",
    "SagaContext",
    # time
    "Clock",
    "SystemClock",
    "VirtualClock",
    # what a saga's state says
    "SagaStatus",
    "StepStatus",
    "CompensationStatus",
    "CallKind",
    "ErrorInfo",
    "FailureKind",
    # errors
    "SagaError",
    "NonRetryableError",
    "StepFailedError",
    "NonDeterminismError",
    "DefinitionError",
    "PayloadError",
    "SagaNotFound",
    "SagaEndedError",
    "CorruptSagaError",
    "StoreError",
)
