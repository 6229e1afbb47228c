"""`ActorRef`: ask/tell, stopping from outside and from inside, `is_alive`, `join`."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import pytest

from actors import (
    Actor,
    ActorError,
    ActorRef,
    ActorStoppedError,
    AskTimeoutError,
    RestartWithBackoff,
    Supervisor,
)

# Restart at once: these tests are about messaging, not about backoff.
RESTART_AT_ONCE = RestartWithBackoff(min_backoff=0.0, max_backoff=0.0, random_factor=0.0)


class Echo(Actor[object]):
    """Answers every message with itself, and raises the exceptions it is sent."""

    def __init__(self, starts: list[Echo] | None = None) -> None:
        self.starts = starts

    async def on_start(self) -> None:
        if self.starts is not None:
            self.starts.append(self)

    async def receive(self, message: object) -> object:
        if isinstance(message, Exception):
            raise message
        return message


@dataclass
class Journal:
    """What a `Blocker` saw, shared across its incarnations."""

    entered: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    stops: int = 0
    busy: anyio.Event = field(default_factory=anyio.Event)
    release: anyio.Event = field(default_factory=anyio.Event)


class Blocker(Actor[str]):
    """Holds on to "block" until released; "stop" stops the actor from inside."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def receive(self, message: str) -> object:
        self.journal.entered.append(message)
        if message == "block":
            self.journal.busy.set()
            try:
                await self.journal.release.wait()
            except anyio.get_cancelled_exc_class():
                self.journal.cancelled.append(message)
                raise
        elif message == "stop":
            self.stop()
        self.journal.finished.append(message)
        return f"done {message}"

    async def on_stop(self) -> None:
        self.journal.stops += 1


async def ask_into(ref: ActorRef[str], message: str, outcomes: dict[str, object]) -> None:
    """Record what `ask` returned or raised, without a timeout: a hang fails the test."""
    try:
        outcomes[message] = await ref.ask(message, timeout=None)
    except Exception as exc:
        outcomes[message] = exc


async def test_ask_returns_the_value_receive_returned() -> None:
    payload = {"order": [1, 2]}
    async with Supervisor() as supervisor:
        ref = supervisor.spawn(Echo, name="echo")
        assert await ref.ask(payload) is payload
        assert await ref.ask(None) is None
        assert await ref.ask(42) == 42
        assert ref.restarts == 0


async def test_ask_reraises_the_error_and_the_supervisor_restarts_the_actor() -> None:
    starts: list[Echo] = []
    error = ValueError("bad input")
    async with Supervisor(RESTART_AT_ONCE) as supervisor:
        ref = supervisor.spawn(lambda: Echo(starts), name="echo")
        with pytest.raises(ValueError, match="bad input") as info:
            await ref.ask(error)
        assert info.value is error

        # The next message is answered by a fresh incarnation behind the same ref.
        assert await ref.ask("ping") == "ping"
        assert ref.restarts == 1
        assert len(starts) == 2
        assert starts[0] is not starts[1]
        assert starts[1].ref is ref
        assert ref.is_alive


async def test_ask_error_keeps_its_cause() -> None:
    class Chained(Actor[str]):
        async def receive(self, message: str) -> object:
            try:
                raise KeyError(message)
            except KeyError as exc:
                raise ValueError("lookup failed") from exc

    async with Supervisor(RESTART_AT_ONCE) as supervisor:
        ref = supervisor.spawn(Chained, name="chained")
        with pytest.raises(ValueError, match="lookup failed") as info:
            await ref.ask("missing")
        await ref.stop()  # let the actor's side finish with the error first
    assert isinstance(info.value.__cause__, KeyError)


async def test_ask_times_out_when_the_actor_is_slow() -> None:
    journal = Journal()
    async with Supervisor() as supervisor:
        ref = supervisor.spawn(lambda: Blocker(journal), name="slow")
        started = anyio.current_time()
        with pytest.raises(AskTimeoutError) as info:
            await ref.ask("block", timeout=0.05)
        assert anyio.current_time() - started >= 0.049
        assert isinstance(info.value, TimeoutError)
        assert isinstance(info.value, ActorError)
        assert journal.entered == ["block"]
        assert journal.finished == []

        # The timeout gave up waiting; it did not crash or stop the actor.
        journal.release.set()
        assert await ref.ask("next", timeout=1) == "done next"
        assert journal.finished == ["block", "next"]
        assert ref.restarts == 0


async def test_a_stopped_actor_refuses_messages() -> None:
    async with Supervisor() as supervisor:
        ref = supervisor.spawn(Echo, name="echo")
        assert ref.is_alive
        assert "alive" in repr(ref)
        await ref.stop()
        assert not ref.is_alive
        assert "stopped" in repr(ref)
        with pytest.raises(ActorStoppedError):
            await ref.tell("hello")
        with pytest.raises(ActorStoppedError):
            ref.tell_nowait("hello")
        with pytest.raises(ActorStoppedError):
            await ref.ask("hello", timeout=1)


async def test_stop_from_outside_cancels_the_current_message_and_fails_queued_asks() -> None:
    journal = Journal()
    outcomes: dict[str, object] = {}
    async with Supervisor() as supervisor:
        ref = supervisor.spawn(lambda: Blocker(journal), name="blocker")
        with anyio.fail_after(2):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(ask_into, ref, "block", outcomes)
                await journal.busy.wait()
                task_group.start_soon(ask_into, ref, "queued-1", outcomes)
                task_group.start_soon(ask_into, ref, "queued-2", outcomes)
                await anyio.wait_all_tasks_blocked()
                assert outcomes == {}

                await ref.stop()
                assert not ref.is_alive

    assert journal.cancelled == ["block"]
    assert journal.entered == ["block"]  # the queued messages were never handled
    assert journal.stops == 1
    assert set(outcomes) == {"block", "queued-1", "queued-2"}
    for message, outcome in outcomes.items():
        assert isinstance(outcome, ActorStoppedError), (message, outcome)


async def test_stop_from_inside_finishes_the_current_message_then_drops_the_rest() -> None:
    journal = Journal()
    outcomes: dict[str, object] = {}
    async with Supervisor() as supervisor:
        ref = supervisor.spawn(lambda: Blocker(journal), name="blocker")
        with anyio.fail_after(2):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(ask_into, ref, "block", outcomes)
                await journal.busy.wait()
                # Queue "stop" and then "after", in that order.
                task_group.start_soon(ask_into, ref, "stop", outcomes)
                await anyio.wait_all_tasks_blocked()
                task_group.start_soon(ask_into, ref, "after", outcomes)
                await anyio.wait_all_tasks_blocked()
                journal.release.set()
            await ref.join()

    assert outcomes["block"] == "done block"
    assert outcomes["stop"] == "done stop"  # the message that stopped it still completes
    assert isinstance(outcomes["after"], ActorStoppedError)
    assert journal.entered == ["block", "stop"]
    assert journal.cancelled == []
    assert journal.stops == 1
    assert not ref.is_alive


async def test_join_waits_until_the_actor_has_stopped() -> None:
    joined = anyio.Event()
    async with Supervisor() as supervisor:
        ref = supervisor.spawn(Echo, name="echo")

        async def join() -> None:
            await ref.join()
            joined.set()

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(join)
            await anyio.wait_all_tasks_blocked()
            assert not joined.is_set()
            assert ref.is_alive

            with anyio.fail_after(1):
                await ref.stop()
                await joined.wait()
        assert not ref.is_alive
        with anyio.fail_after(1):  # both return at once on a stopped actor
            await ref.join()
            await ref.stop()


async def test_a_tell_blocked_on_a_full_mailbox_fails_when_the_actor_stops() -> None:
    journal = Journal()
    outcome: list[BaseException | None] = []
    async with Supervisor() as supervisor:
        ref = supervisor.spawn(lambda: Blocker(journal), name="blocker", mailbox_size=1)
        await ref.tell("block")
        await journal.busy.wait()
        await ref.tell("queued")  # fills the mailbox

        async def blocked_tell() -> None:
            try:
                await ref.tell("blocked")
            except ActorStoppedError as exc:
                outcome.append(exc)
            else:
                outcome.append(None)

        with anyio.fail_after(2):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(blocked_tell)
                await anyio.wait_all_tasks_blocked()
                assert outcome == []
                await ref.stop()

    # The message was never handled, so the sender must not be told it was queued.
    assert journal.entered == ["block"]
    assert len(outcome) == 1
    assert isinstance(outcome[0], ActorStoppedError)
