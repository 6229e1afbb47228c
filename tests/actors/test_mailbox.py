"""The bounded mailbox: backpressure on `tell`, `tell_nowait` refusing, nothing dropped."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
import pytest

from actors import (
    Actor,
    ActorStoppedError,
    AskTimeoutError,
    MailboxFullError,
    Supervisor,
)
from actors._envelope import Envelope, Reply
from actors._mailbox import Mailbox


@dataclass
class Gate:
    """Lets a `Gated` actor finish one message per released permit."""

    permits: anyio.Semaphore = field(default_factory=lambda: anyio.Semaphore(0))
    taken: list[int] = field(default_factory=list)
    processed: list[int] = field(default_factory=list)


class Gated(Actor[int]):
    """Takes a message out of the mailbox, then waits for a permit to finish it."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def receive(self, message: int) -> object:
        self.gate.taken.append(message)
        await self.gate.permits.acquire()
        self.gate.processed.append(message)
        return message


def release(gate: Gate, permits: int) -> None:
    for _ in range(permits):
        gate.permits.release()


async def test_full_mailbox_blocks_tell_until_the_actor_takes_a_message() -> None:
    gate = Gate()
    async with Supervisor() as supervisor:
        ref = supervisor.spawn(lambda: Gated(gate), name="gated", mailbox_size=2)
        await ref.tell(0)
        await anyio.wait_all_tasks_blocked()
        assert gate.taken == [0]  # the actor holds 0; the mailbox is empty

        with anyio.fail_after(1):  # room for two: these must not wait
            await ref.tell(1)
            await ref.tell(2)
        with pytest.raises(MailboxFullError):
            ref.tell_nowait(99)

        sent = anyio.Event()

        async def send_three() -> None:
            await ref.tell(3)
            sent.set()

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(send_three)
            await anyio.wait_all_tasks_blocked()
            assert not sent.is_set(), "tell returned although the mailbox is full"

            release(gate, 1)  # the actor finishes 0 and takes 1: one slot frees up
            with anyio.fail_after(1):
                await sent.wait()
            assert gate.processed == [0]
            assert gate.taken == [0, 1]

        release(gate, 3)
        await anyio.wait_all_tasks_blocked()
        # The refused message was not queued; everything else arrived, in order.
        assert gate.processed == [0, 1, 2, 3]

        ref.tell_nowait(4)  # room again: accepted without waiting
        release(gate, 1)
        await anyio.wait_all_tasks_blocked()
        assert gate.processed == [0, 1, 2, 3, 4]


async def test_concurrent_senders_lose_nothing_and_keep_their_own_order() -> None:
    received: list[tuple[int, int]] = []
    senders, per_sender = 3, 30

    class Sink(Actor[tuple[int, int] | None]):
        async def receive(self, message: tuple[int, int] | None) -> object:
            if message is None:  # a flush: every earlier message has been handled
                return len(received)
            await anyio.lowlevel.checkpoint()  # slower than the senders: they must wait
            received.append(message)
            return None

    async with Supervisor() as supervisor:
        ref = supervisor.spawn(Sink, name="sink", mailbox_size=2)

        async def send_all(sender: int) -> None:
            for index in range(per_sender):
                await ref.tell((sender, index))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as task_group:
                for sender in range(senders):
                    task_group.start_soon(send_all, sender)
            assert await ref.ask(None) == senders * per_sender

    assert sorted(received) == [(s, i) for s in range(senders) for i in range(per_sender)]
    for sender in range(senders):
        assert [i for s, i in received if s == sender] == list(range(per_sender))


async def test_ask_timing_out_while_waiting_for_room_is_never_delivered() -> None:
    gate = Gate()
    async with Supervisor() as supervisor:
        ref = supervisor.spawn(lambda: Gated(gate), name="gated", mailbox_size=1)
        await ref.tell(0)
        await ref.tell(1)  # the actor holds 0, the mailbox holds 1: full
        await anyio.wait_all_tasks_blocked()

        with pytest.raises(AskTimeoutError):
            await ref.ask(2, timeout=0.05)

        release(gate, 3)  # enough for 0, 1 and a wrongly queued 2
        await anyio.wait_all_tasks_blocked()
        assert gate.processed == [0, 1]


async def test_mailbox_capacity_must_be_positive() -> None:
    async with Supervisor() as supervisor:
        with pytest.raises(ValueError, match="capacity"):
            supervisor.spawn(lambda: Gated(Gate()), name="gated", mailbox_size=0)
        assert supervisor.live_actors == 0
        assert supervisor.get("gated") is None
        # The failed spawn did not reserve the name.
        ref = supervisor.spawn(lambda: Gated(Gate()), name="gated", mailbox_size=1)
        assert ref.is_alive


async def test_closing_fails_queued_replies_and_refuses_new_messages() -> None:
    mailbox: Mailbox[str] = Mailbox("m", 2)
    reply = Reply()
    mailbox.put_nowait(Envelope("asked", reply))
    mailbox.put_nowait(Envelope("told"))
    assert len(mailbox) == 2
    with pytest.raises(MailboxFullError):
        mailbox.put_nowait(Envelope("refused"))

    mailbox.close()

    with anyio.fail_after(1), pytest.raises(ActorStoppedError):
        await reply.wait()
    with pytest.raises(ActorStoppedError):
        mailbox.put_nowait(Envelope("late"))
    with pytest.raises(ActorStoppedError):
        await mailbox.put(Envelope("late"))


async def test_mailbox_delivers_in_fifo_order() -> None:
    mailbox: Mailbox[int] = Mailbox("m", 3)
    for message in range(3):
        await mailbox.put(Envelope(message))
    assert [(await mailbox.get()).message for _ in range(3)] == [0, 1, 2]
    assert len(mailbox) == 0
    mailbox.close()
