"""The actor kernel's errors: one small tree, each says who raises it and when."""

from __future__ import annotations


class ActorError(Exception):
    """Base of every error the actor kernel raises."""


class ActorStoppedError(ActorError):
    """Raised by `ActorRef.tell`/`ask` when the target actor has stopped for good."""


class MailboxFullError(ActorError):
    """Raised by `ActorRef.tell_nowait` when the mailbox is at capacity."""


class AskTimeoutError(ActorError, TimeoutError):
    """Raised by `ActorRef.ask` when no reply arrived within the timeout."""


class ActorNameTakenError(ActorError):
    """Raised by `Supervisor.spawn` when a live actor already has that name."""


class SupervisionEscalatedError(ActorError):
    """Raised out of a `Supervisor` whose actor exhausted its restarts and no handler took it.

    The actor's last error is the `__cause__`.
    """

    def __init__(self, actor_name: str) -> None:
        super().__init__(f"actor {actor_name!r} failed and its supervisor escalated")
        self.actor_name = actor_name


class SupervisorNotRunningError(ActorError, RuntimeError):
    """Raised by `Supervisor.spawn` outside the supervisor's `async with` block."""
