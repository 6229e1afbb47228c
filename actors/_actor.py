"""The `Actor` base class: subclass it and implement `receive`."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, TypeVarTuple, Unpack

from anyio.abc import TaskGroup

if TYPE_CHECKING:
    from ._ref import ActorRef

M = TypeVar("M")
Args = TypeVarTuple("Args")


class Actor(Generic[M]):
    """One unit of state that handles its messages one at a time.

    The supervisor builds a fresh instance from the factory given to
    `Supervisor.spawn` on every (re)start, then calls `on_start`, then
    `receive` for each message, then `on_stop` when it stops normally.
    An exception from any of them is a crash, handled by the supervisor.
    """

    spawns_children: ClassVar[bool] = True
    """False in a subclass that never calls `start_soon`: it then runs without a task group."""

    _ref: ActorRef[M]
    _task_group: TaskGroup | None = None
    _stop_requested: bool = False
    _children: bool = False

    @property
    def ref(self) -> ActorRef[M]:
        """This actor's reference: stable across restarts."""
        return self._ref

    async def on_start(self) -> None:
        """Called before the first message of each incarnation."""

    async def receive(self, message: M) -> object:
        """Handle one message; the return value answers an `ask`."""
        raise NotImplementedError

    async def on_stop(self) -> None:
        """Called when the actor stops normally (not after a crash)."""

    def stop(self) -> None:
        """Stop after the current message; queued messages are dropped."""
        self._stop_requested = True

    def start_soon(
        self, func: Callable[[Unpack[Args]], Coroutine[Any, Any, Any]], *args: *Args
    ) -> None:
        """Run `func` as a child task of this incarnation.

        The task is cancelled when the actor stops or crashes; an exception
        escaping it crashes the actor.
        """
        if self._task_group is None:
            raise RuntimeError(f"{type(self).__name__} declares spawns_children = False")
        self._children = True
        self._task_group.start_soon(func, *args)
