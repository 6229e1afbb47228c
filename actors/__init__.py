"""A small generic actor kernel. It runs on asyncio: each actor is a plain asyncio task,
with anyio's cancel scopes and task groups inside it (anyio's asyncio backend; not trio).

Actors handle their messages one at a time from a bounded mailbox; a
`Supervisor` owns them and restarts, stops or escalates them when they
crash. Nothing here knows about sagas or storage.
"""

from ._actor import Actor
from ._errors import (
    ActorError,
    ActorNameTakenError,
    ActorStoppedError,
    AskTimeoutError,
    MailboxFullError,
    SupervisionEscalatedError,
    SupervisorNotRunningError,
)
from ._ref import ActorRef
from ._strategy import Escalate, RestartWithBackoff, Stop, SupervisorStrategy
from ._supervisor import EscalationHandler, Supervisor

__all__ = (
    "Actor",
    "ActorError",
    "ActorNameTakenError",
    "ActorRef",
    "ActorStoppedError",
    "AskTimeoutError",
    "Escalate",
    "EscalationHandler",
    "MailboxFullError",
    "RestartWithBackoff",
    "Stop",
    "Supervisor",
    "SupervisionEscalatedError",
    "SupervisorNotRunningError",
    "SupervisorStrategy",
)
