"""The contract between a saga actor and the runtime that hosts it.

`SagaActorDeps` is what the actor needs from its runtime (the store, the
clock, callbacks for timers and child sagas), `Nudges` the flags both sides
set for work that arrives out of band, `WakeUp` and `Nudge` the two messages
of its mailbox, and `FreshStart` a saga whose latest transition is durable
and already in hand (spawned or resumed), so the actor need not reload it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from ._clock import Clock
from ._model import ParentRef, SagaState
from ._store import Store, StoredSaga
from ._transitions import Transition

if TYPE_CHECKING:
    from ._body import BodyRun
    from ._definition import Saga

StartChild = Callable[["Saga[Any, Any]", str, bytes, ParentRef], Awaitable[None]]
"""`start_child(definition, child_id, input_json, parent)`: create a child saga (exactly
once by id) and start it. Raises a `SagaError` (not a `StoreError`) when it cannot start,
for good: the child call then fails definitively."""

CompensateChild = Callable[[str, str], Awaitable[bool]]
"""`compensate_child(child_id, reason)`: ask a child saga to roll back as a unit; False if
there is no such child (it never started: nothing to undo)."""


@dataclass(frozen=True, slots=True)
class SagaActorDeps:
    """What a saga actor needs from the runtime that hosts it."""

    store: Store
    clock: Clock
    rng: random.Random
    max_recoveries: int
    on_stopped: Callable[[str, SagaState | None], Awaitable[None]]
    """Called when the actor stops driving a saga: with its final state, or None."""
    schedule_wakeup: Callable[[str, float], None]
    """Ask the runtime's timer service to wake this (live) actor at a time."""
    note_passivated: Callable[[float], None]
    """Tell the timer service a passivated saga needs waking at a time."""
    keep_warm: float = 1.0
    """Waits shorter than this keep the actor in memory; longer ones passivate it."""
    start_child: StartChild | None = None
    compensate_child: CompensateChild | None = None
    max_payload_bytes: int | None = None
    """A step result over this many bytes of JSON is the step's ambiguous failure."""
    definition_of: Callable[[str, int], Saga[Any, Any] | None] | None = None
    """The definition of a saga name and version, None when not given to this runtime (no
    lookup: every snapshot runs on the actor's own definition)."""
    unregistered: Callable[[StoredSaga], Awaitable[None]] | None = None
    """Called with a restarted saga whose version `definition_of` does not know; the
    actor then stops without running anything."""


class Nudges:
    """Shared by the runtime and one saga's actor: work that arrived out of band.

    `in_step` counts the forward actions running: a cancellation then
    interrupts the actor (`ActorRef.interrupt`), which starts again from its
    snapshot and applies the cancellation before anything else.
    """

    __slots__ = ("cancel", "in_step", "inbox")

    def __init__(self) -> None:
        self.inbox = False
        self.cancel = False
        self.in_step = 0

    def notify(self, *, cancel: bool = False) -> bool:
        """New inbox items are durable; True if the actor must be interrupted."""
        self.inbox = True
        if cancel:
            self.cancel = True
        return cancel and self.in_step > 0


@dataclass(frozen=True, slots=True)
class WakeUp:
    """A wake-up the saga asked for is due."""


@dataclass(frozen=True, slots=True)
class Nudge:
    """New work is in `Nudges`: look at it."""


SagaMessage = WakeUp | Nudge

_UNDECODED: Any = object()


class FreshStart(msgspec.Struct, frozen=True):
    """A saga whose latest transition is durable and in hand (spawned or resumed)."""

    transition: Transition
    input: bytes
    resumed: bool = False
    """Resumed by an operator: its in-flight step may have run; its inbox may hold items."""
    decoded: Any = _UNDECODED
    """`input` decoded already (by a spawn, which checks it), or `_UNDECODED`."""
    run: BodyRun | None = None
    """A code saga's body, already run up to its first calls (a spawn)."""

    @property
    def has_decoded(self) -> bool:
        return self.decoded is not _UNDECODED
