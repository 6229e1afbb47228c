"""Stopping and interrupting actors that run without children (`spawns_children = False`):
from outside and from inside, when the actor swallows the cancellation, and when someone
else cancels its task."""

from __future__ import annotations

import asyncio

import anyio

from actors import Actor, Supervisor


class Sleeper(Actor[str]):
    """Sleeps in `on_start`; `swallow` CancelledErrors are caught and ignored first."""

    spawns_children = False

    def __init__(self, log: list[str], swallow: int = 0) -> None:
        self.log = log
        self.swallow = swallow

    async def on_start(self) -> None:
        self.log.append("start")
        while True:
            try:
                await anyio.sleep(30)
            except asyncio.CancelledError:
                if self.swallow == 0:
                    self.log.append("cancelled")
                    raise
                self.swallow -= 1
                self.log.append("swallowed")

    async def on_stop(self) -> None:
        self.log.append("stop")


async def test_stop_cancels_a_bare_actor_and_runs_on_stop() -> None:
    log: list[str] = []
    async with Supervisor() as supervisor:
        ref = supervisor.spawn(lambda: Sleeper(log), name="sleeper")
        await anyio.sleep(0.01)
        with anyio.fail_after(2):
            await ref.stop()
    assert log == ["start", "cancelled", "stop"]


async def test_an_actor_that_swallows_the_cancellation_is_cancelled_again() -> None:
    log: list[str] = []
    async with Supervisor() as supervisor:
        ref = supervisor.spawn(lambda: Sleeper(log, swallow=2), name="stubborn")
        await anyio.sleep(0.01)
        with anyio.fail_after(2):
            await ref.stop()
    assert log == ["start", "swallowed", "swallowed", "cancelled", "stop"]


async def test_an_interrupt_restarts_and_leaves_the_next_incarnation_alone() -> None:
    log: list[str] = []
    async with Supervisor() as supervisor:
        ref = supervisor.spawn(lambda: Sleeper(log), name="sleeper")
        await anyio.sleep(0.01)
        ref.interrupt()
        # Many loop turns: the interrupted incarnation's cancellation must not reach the
        # new one (the same task runs it).
        await anyio.sleep(0.3)
        assert log == ["start", "cancelled", "start"]
        with anyio.fail_after(2):
            await ref.stop()
    assert log == ["start", "cancelled", "start", "cancelled", "stop"]


async def test_a_cancellation_from_elsewhere_is_not_swallowed() -> None:
    log: list[str] = []
    async with Supervisor() as supervisor:
        ref = supervisor.spawn(lambda: Sleeper(log), name="sleeper")
        await anyio.sleep(0.01)
        task = next(t for t in asyncio.all_tasks() if t.get_name() == "sleeper")
        task.cancel()  # not the cell's: the task ends cancelled, on_stop never runs
        with anyio.fail_after(2):
            await ref.join()
        assert task.cancelled()
    assert log == ["start", "cancelled"]


class SelfStopper(Actor[str]):
    """Stops or interrupts itself through its own ref, from inside `receive`."""

    spawns_children = False

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def on_start(self) -> None:
        self.log.append("start")

    async def receive(self, message: str) -> object:
        if message == "stop yourself":
            await self.ref.stop()  # the current message is cancelled: no line after it
            self.log.append("went on after ref.stop()")
        elif message == "interrupt yourself":
            self.ref.interrupt()
            await anyio.sleep(0.05)
            self.log.append("went on after ref.interrupt()")
        elif message == "stop":
            self.stop()
        return None

    async def on_stop(self) -> None:
        self.log.append("stop")


async def test_a_bare_actor_can_stop_itself_through_its_ref() -> None:
    log: list[str] = []
    async with Supervisor() as supervisor:
        ref = supervisor.spawn(lambda: SelfStopper(log), name="a")
        await ref.tell("stop yourself")
        with anyio.fail_after(2):
            await ref.join()
    assert log == ["start", "stop"]


async def test_an_interrupt_from_inside_restarts_at_the_next_await_and_a_stop_still_stops() -> None:
    log: list[str] = []
    async with Supervisor() as supervisor:
        ref = supervisor.spawn(lambda: SelfStopper(log), name="b")
        await ref.tell("interrupt yourself")
        await ref.tell("stop")
        with anyio.fail_after(2):
            await ref.join()
    assert log == ["start", "start", "stop"]
