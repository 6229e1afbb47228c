"""The engine that runs sagas: events, commands, the pure state machine, its driver, the actor.

In general you should not need any of this: `runtime.Runtime` drives sagas
and `runtime.testing` checks them. It is public so that tools can replay a
history (`fold`, `timeline`), tests can drive the machine directly
(`transition`), and a runtime can host saga actors (`SagaActor`,
`SagaActorDeps`, `FreshStart`).
"""

from ._actor import SagaActor
from ._body import BodyRun, PendingCall
from ._calls import Backoff, Calls, CallSpec, Raised, Reaction, Returned
from ._commands import Advance, Command, Finish, RunCompensation, RunStep, ScheduleWakeup
from ._definition import InterceptedStep, StepInterceptor
from ._driver import (
    Begun,
    ChildReport,
    begin,
    check_fits,
    commit,
    complete,
    decide,
    fold,
    replay,
    report,
    restore,
    resume,
    suspend,
)
from ._errors import InvalidTransitionError
from ._events import (
    CancelRequested,
    ChildEnded,
    CompensateRequested,
    CompensationFailed,
    CompensationSucceeded,
    CompensationWaiting,
    Event,
    Recovered,
    Resumed,
    SagaStarted,
    SignalReceived,
    StepFailed,
    StepSucceeded,
    StepWaiting,
    Suspended,
    TimerFired,
)
from ._hosting import FreshStart, Nudge, Nudges, SagaActorDeps, SagaMessage, WakeUp
from ._machine import accepted_statuses, initial_state, transition
from ._payload import check_size, decode_payload, encode_payload
from ._program import kind as kind_of
from ._program import label
from ._timeline import timeline
from ._transitions import Transition

__all__ = (
    # the machine
    "transition",
    "Transition",
    "initial_state",
    "accepted_statuses",
    "label",
    "kind_of",
    "InvalidTransitionError",
    # events
    "Event",
    "SagaStarted",
    "StepSucceeded",
    "StepFailed",
    "StepWaiting",
    "SignalReceived",
    "CancelRequested",
    "CompensateRequested",
    "ChildEnded",
    "CompensationSucceeded",
    "CompensationFailed",
    "CompensationWaiting",
    "TimerFired",
    "Recovered",
    "Suspended",
    "Resumed",
    # commands
    "Command",
    "RunStep",
    "RunCompensation",
    "ScheduleWakeup",
    "Finish",
    "Advance",
    # a code saga's recorded calls and reactions
    "CallSpec",
    "Backoff",
    "Reaction",
    "Calls",
    "Returned",
    "Raised",
    "BodyRun",
    "PendingCall",
    # the driver: the one place a saga's state changes
    "decide",
    "commit",
    "begin",
    "Begun",
    "restore",
    "complete",
    "fold",
    "check_fits",
    "resume",
    "suspend",
    "report",
    "ChildReport",
    "replay",
    "InterceptedStep",
    "StepInterceptor",
    # hosting a saga actor
    "SagaActor",
    "SagaActorDeps",
    "FreshStart",
    "Nudges",
    "Nudge",
    "WakeUp",
    "SagaMessage",
    # payloads and history
    "encode_payload",
    "decode_payload",
    "check_size",
    "timeline",
)
