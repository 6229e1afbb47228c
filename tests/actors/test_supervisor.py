"""`Supervisor`: lifecycles, child tasks, restarts with backoff, limits and escalation."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import (
    Actor,
    ActorError,
    ActorNameTakenError,
    ActorStoppedError,
    Escalate,
    RestartWithBackoff,
    Stop,
    SupervisionEscalatedError,
    Supervisor,
)

# Restart at once: for tests about what a restart does, not when it happens.
RESTART_AT_ONCE = RestartWithBackoff(min_backoff=0.0, max_backoff=0.0, random_factor=0.0)


@dataclass
class Life:
    """What happened to one supervised actor, across all its incarnations."""

    incarnations: list[Worker] = field(default_factory=list)
    start_times: list[float] = field(default_factory=list)
    received: list[tuple[int, str]] = field(default_factory=list)  # (incarnation, message)
    stops: int = 0
    crash_on_start: int = 0  # the first N incarnations raise from on_start
    errors: list[Exception] = field(default_factory=list)  # what each crash raised
    started: anyio.Event = field(default_factory=anyio.Event)  # set by a clean on_start
    restarted: anyio.Event = field(default_factory=anyio.Event)  # ... of a later incarnation
    busy: anyio.Event = field(default_factory=anyio.Event)
    child_started: anyio.Event = field(default_factory=anyio.Event)
    child_cancelled: int = 0
    child_trigger: anyio.Event = field(default_factory=anyio.Event)


class Worker(Actor[str]):
    """A configurable test actor. Messages:

    - "crash": raise; "block": wait until cancelled; "stop": stop from inside;
    - "spawn-child": start a child that waits until cancelled;
    - "spawn-failing-child": start a child that raises once `child_trigger` is set;
    - anything else is recorded and echoed.
    """

    def __init__(self, life: Life) -> None:
        self.life = life

    @property
    def incarnation(self) -> int:
        return self.life.incarnations.index(self)

    async def on_start(self) -> None:
        self.life.incarnations.append(self)
        self.life.start_times.append(anyio.current_time())
        if len(self.life.incarnations) <= self.life.crash_on_start:
            self._crash(f"on_start crash {len(self.life.incarnations)}")
        self.life.started.set()
        if len(self.life.incarnations) > 1:
            self.life.restarted.set()

    async def receive(self, message: str) -> object:
        self.life.received.append((self.incarnation, message))
        if message == "crash":
            self._crash(f"receive crash in incarnation {self.incarnation}")
        elif message == "block":
            self.life.busy.set()
            await anyio.sleep_forever()
        elif message == "stop":
            self.stop()
        elif message == "spawn-child":
            self.start_soon(self._child)
        elif message == "spawn-failing-child":
            self.start_soon(self._failing_child)
        return (self.incarnation, message)

    async def on_stop(self) -> None:
        self.life.stops += 1

    def _crash(self, text: str) -> None:
        error = RuntimeError(text)
        self.life.errors.append(error)
        raise error

    async def _child(self) -> None:
        self.life.child_started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.life.child_cancelled += 1
            raise

    async def _failing_child(self) -> None:
        self.life.child_started.set()
        await self.life.child_trigger.wait()
        self._crash("child crash")


class EscalationLog:
    """An `on_escalate` handler that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Exception]] = []
        self.called = anyio.Event()

    async def __call__(self, name: str, error: Exception) -> None:
        self.calls.append((name, error))
        self.called.set()


class _RestartScheduled(logging.Handler):
    """Sets `event` when the supervisor logs that it scheduled a restart."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.event = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.WARNING:
            self.event.set()


@contextmanager
def watch_restarts() -> Iterator[anyio.Event]:
    handler = _RestartScheduled()
    logger = logging.getLogger("actors")
    logger.addHandler(handler)
    try:
        yield handler.event
    finally:
        logger.removeHandler(handler)


# --- restarts -----------------------------------------------------------------


async def test_restart_builds_a_fresh_instance_behind_the_same_ref_and_mailbox() -> None:
    life = Life()
    async with Supervisor(RESTART_AT_ONCE) as supervisor:
        ref = supervisor.spawn(lambda: Worker(life), name="worker")
        await ref.tell("before")  # handled by incarnation 0
        await ref.tell("crash")
        # Queued behind the crash: the next incarnation must receive them.
        await ref.tell("after-1")
        assert await ref.ask("after-2") == (1, "after-2")

        assert ref.restarts == 1
        assert len(life.incarnations) == 2
        first, second = life.incarnations
        assert first is not second
        assert first.ref is ref
        assert second.ref is ref
        assert supervisor.get("worker") is ref
        assert life.received == [
            (0, "before"),
            (0, "crash"),
            (1, "after-1"),
            (1, "after-2"),
        ]
        assert life.stops == 0  # a crash is not a normal stop

        await ref.tell("crash")
        assert await ref.ask("again") == (2, "again")
        assert ref.restarts == 2
        assert len(life.incarnations) == 3


async def test_a_crashing_on_start_is_restarted_too() -> None:
    life = Life(crash_on_start=2)
    async with Supervisor(RESTART_AT_ONCE) as supervisor:
        ref = supervisor.spawn(lambda: Worker(life), name="worker")
        assert await ref.ask("hello") == (2, "hello")
        assert ref.restarts == 2


async def test_backoff_grows_geometrically_with_jitter_within_bounds() -> None:
    strategy = RestartWithBackoff(
        min_backoff=0.04, max_backoff=0.32, random_factor=0.25, max_restarts=10, within=60.0
    )
    seed = 1234
    crashes = 5
    # Documented: the n-th restart waits min_backoff * 2**n, capped at max_backoff,
    # stretched by up to random_factor, the jitter drawn from the supervisor's rng.
    replica = random.Random(seed)
    bases = [min(0.32, 0.04 * 2**n) for n in range(crashes)]
    expected = [base * (1 + 0.25 * replica.random()) for base in bases]
    slack = 0.1  # scheduling latency on a loaded machine

    life = Life(crash_on_start=crashes)
    async with Supervisor(strategy, rng=random.Random(seed)) as supervisor:
        ref = supervisor.spawn(lambda: Worker(life), name="worker")
        with anyio.fail_after(10):
            await life.started.wait()
        assert ref.restarts == crashes

    times = life.start_times
    gaps = [later - earlier for earlier, later in pairwise(times)]
    assert len(gaps) == crashes
    for n, (gap, wanted, base) in enumerate(zip(gaps, expected, bases, strict=True)):
        assert gap >= wanted - 1e-3, f"restart {n} came early: {gap:.4f} < {wanted:.4f}"
        assert gap <= wanted + slack, f"restart {n} came late: {gap:.4f} > {wanted:.4f}"
        assert base <= wanted <= base * 1.25
    # So the gaps' lower bounds double (0.04, 0.08, 0.16, 0.32) until the cap
    # holds the last one at 0.32 * 1.25 + slack, below the uncapped 0.64.
    assert gaps[4] < 0.64


@settings(max_examples=200, deadline=None)
@given(
    min_backoff=st.one_of(st.just(0.0), st.floats(1e-3, 10.0)),
    spread=st.floats(0.0, 100.0),
    random_factor=st.floats(0.0, 2.0),
    restart_index=st.integers(0, 200),
    seed=st.integers(0, 2**32),
)
def test_backoff_delay_follows_the_documented_formula(
    min_backoff: float, spread: float, random_factor: float, restart_index: int, seed: int
) -> None:
    strategy = RestartWithBackoff(
        min_backoff=min_backoff, max_backoff=min_backoff + spread, random_factor=random_factor
    )
    base = min(strategy.max_backoff, min_backoff * 2.0**restart_index)
    jitter = random.Random(seed).random()
    delay = strategy.delay(restart_index, random.Random(seed))
    assert delay == pytest.approx(base * (1 + random_factor * jitter))
    assert base <= delay <= base * (1 + random_factor)


def test_backoff_strategy_rejects_nonsense_and_with_limit_copies() -> None:
    with pytest.raises(ValueError, match="min_backoff"):
        RestartWithBackoff(min_backoff=2.0, max_backoff=1.0)
    with pytest.raises(ValueError, match="min_backoff"):
        RestartWithBackoff(min_backoff=-1.0)
    with pytest.raises(ValueError, match="random_factor"):
        RestartWithBackoff(random_factor=-0.1)
    with pytest.raises(ValueError, match="max_restarts"):
        RestartWithBackoff(max_restarts=-1)
    with pytest.raises(ValueError, match="within"):
        RestartWithBackoff(within=0.0)

    original = RestartWithBackoff(min_backoff=0.5)
    limited = original.with_limit(3, 10.0)
    assert (limited.max_restarts, limited.within, limited.min_backoff) == (3, 10.0, 0.5)
    assert (original.max_restarts, original.within) == (5, 60.0)


# --- restart limit and escalation ---------------------------------------------------


async def test_too_many_restarts_escalate_to_the_handler_once_with_the_last_error() -> None:
    life = Life(crash_on_start=10)
    escalations = EscalationLog()
    strategy = RESTART_AT_ONCE.with_limit(max_restarts=2, within=60.0)
    async with Supervisor(strategy, on_escalate=escalations) as supervisor:
        ref = supervisor.spawn(lambda: Worker(life), name="worker")
        with anyio.fail_after(5):
            await ref.join()
        assert supervisor.live_actors == 0
        with pytest.raises(ActorStoppedError):
            await ref.ask("anyone?")
    # Leaving the block raised nothing: the handler took the escalation.

    assert ref.restarts == 2
    assert len(life.incarnations) == 3  # the first start and two restarts
    assert len(escalations.calls) == 1
    name, error = escalations.calls[0]
    assert name == "worker"
    assert error is life.errors[-1]
    assert str(error) == "on_start crash 3"
    assert not ref.is_alive


async def test_crashes_that_left_the_window_do_not_count_towards_the_limit() -> None:
    # One restart allowed per 0.05 s; every restart waits 0.08 s, so each
    # crash finds the previous one already outside the window.
    life = Life(crash_on_start=4)
    escalations = EscalationLog()
    strategy = RestartWithBackoff(
        min_backoff=0.08, max_backoff=0.08, random_factor=0.0, max_restarts=1, within=0.05
    )
    async with Supervisor(strategy, on_escalate=escalations) as supervisor:
        ref = supervisor.spawn(lambda: Worker(life), name="worker")
        with anyio.fail_after(5):
            await life.started.wait()
        assert await ref.ask("survived") == (4, "survived")
    assert ref.restarts == 4
    assert escalations.calls == []


async def test_the_same_crashes_within_the_window_escalate() -> None:
    life = Life(crash_on_start=4)
    escalations = EscalationLog()
    strategy = RestartWithBackoff(
        min_backoff=0.0, max_backoff=0.0, random_factor=0.0, max_restarts=1, within=60.0
    )
    async with Supervisor(strategy, on_escalate=escalations) as supervisor:
        ref = supervisor.spawn(lambda: Worker(life), name="worker")
        with anyio.fail_after(5):
            await escalations.called.wait()
    assert ref.restarts == 1
    assert [error for _, error in escalations.calls] == [life.errors[1]]


async def crash_under_escalate_without_handler(life: Life) -> None:
    async with Supervisor(Escalate()) as supervisor:
        ref = supervisor.spawn(lambda: Worker(life), name="worker")
        with anyio.fail_after(5):
            await ref.join()


async def test_without_a_handler_escalation_raises_out_of_the_supervisor() -> None:
    life = Life(crash_on_start=1)
    escalated: list[BaseException] = []
    try:
        await crash_under_escalate_without_handler(life)
    except* SupervisionEscalatedError as group:
        escalated.extend(group.exceptions)

    assert len(escalated) == 1
    error = escalated[0]
    assert isinstance(error, SupervisionEscalatedError)
    assert isinstance(error, ActorError)
    assert error.actor_name == "worker"
    assert error.__cause__ is life.errors[0]


async def test_without_a_handler_escalation_raises_the_bare_error() -> None:
    life = Life(crash_on_start=1)
    with pytest.raises(SupervisionEscalatedError) as info:
        await crash_under_escalate_without_handler(life)
    assert info.value.__cause__ is life.errors[0]


async def test_stop_strategy_stops_the_actor_without_escalating() -> None:
    life = Life()
    escalations = EscalationLog()
    async with Supervisor(Stop(), on_escalate=escalations) as supervisor:
        ref = supervisor.spawn(lambda: Worker(life), name="worker")
        with pytest.raises(RuntimeError):
            await ref.ask("crash")
        with anyio.fail_after(5):
            await ref.join()
        with pytest.raises(ActorStoppedError):
            await ref.tell("hello")
    assert escalations.calls == []
    assert ref.restarts == 0
    assert len(life.incarnations) == 1
    assert life.stops == 0  # stopped by a crash, not normally


async def test_stop_strategy_without_a_handler_raises_nothing() -> None:
    life = Life(crash_on_start=1)
    async with Supervisor(Stop()) as supervisor:
        ref = supervisor.spawn(lambda: Worker(life), name="worker")
        with anyio.fail_after(5):
            await ref.join()
        assert supervisor.live_actors == 0
    assert len(life.incarnations) == 1


async def test_escalate_strategy_escalates_at_the_first_crash() -> None:
    life = Life()
    escalations = EscalationLog()
    async with Supervisor(Escalate(), on_escalate=escalations) as supervisor:
        ref = supervisor.spawn(lambda: Worker(life), name="worker")
        with pytest.raises(RuntimeError):
            await ref.ask("crash")
        with anyio.fail_after(5):
            await ref.join()
    assert escalations.calls == [("worker", life.errors[0])]
    assert ref.restarts == 0
    assert len(life.incarnations) == 1


async def test_a_strategy_given_to_spawn_overrides_the_supervisor_default() -> None:
    restarted, escalated = Life(), Life()
    escalations = EscalationLog()
    async with Supervisor(Escalate(), on_escalate=escalations) as supervisor:
        a = supervisor.spawn(lambda: Worker(restarted), name="a", strategy=RESTART_AT_ONCE)
        b = supervisor.spawn(lambda: Worker(escalated), name="b")
        await a.tell("crash")
        await b.tell("crash")
        assert await a.ask("still here") == (1, "still here")
        with anyio.fail_after(5):
            await b.join()
    assert a.restarts == 1
    assert escalations.calls == [("b", escalated.errors[0])]


async def test_stopping_during_the_backoff_is_prompt_and_skips_the_restart() -> None:
    life = Life(crash_on_start=1)
    strategy = RestartWithBackoff(min_backoff=30.0, max_backoff=30.0)
    async with Supervisor(strategy) as supervisor:
        with watch_restarts() as restart_scheduled:
            ref = supervisor.spawn(lambda: Worker(life), name="worker")
            with anyio.fail_after(5):
                await restart_scheduled.wait()
        with anyio.fail_after(2):  # not after the 30 s backoff
            await ref.stop()
        assert not ref.is_alive
        assert supervisor.live_actors == 0
    assert len(life.incarnations) == 1


async def test_a_restart_cut_short_by_stop_is_not_counted() -> None:
    life = Life(crash_on_start=1)
    strategy = RestartWithBackoff(min_backoff=30.0, max_backoff=30.0)
    async with Supervisor(strategy) as supervisor:
        with watch_restarts() as restart_scheduled:
            ref = supervisor.spawn(lambda: Worker(life), name="worker")
            with anyio.fail_after(5):
                await restart_scheduled.wait()
        with anyio.fail_after(2):
            await ref.stop()
    assert len(life.incarnations) == 1
    assert ref.restarts == 0


# --- child tasks ------------------------------------------------------------------


async def test_child_tasks_are_cancelled_when_the_actor_is_stopped_from_outside() -> None:
    life = Life()
    async with Supervisor() as supervisor:
        ref = supervisor.spawn(lambda: Worker(life), name="worker")
        await ref.ask("spawn-child")
        with anyio.fail_after(2):
            await life.child_started.wait()
            await ref.stop()
    assert life.child_cancelled == 1
    assert life.stops == 1


async def test_child_tasks_are_cancelled_when_the_actor_stops_itself() -> None:
    life = Life()
    async with Supervisor() as supervisor:
        ref = supervisor.spawn(lambda: Worker(life), name="worker")
        await ref.ask("spawn-child")
        with anyio.fail_after(2):
            await life.child_started.wait()
            assert await ref.ask("stop") == (0, "stop")
            await ref.join()
    assert life.child_cancelled == 1
    assert life.stops == 1


async def test_a_crashing_child_task_crashes_the_actor() -> None:
    life = Life()
    escalations = EscalationLog()
    async with Supervisor(Escalate(), on_escalate=escalations) as supervisor:
        ref = supervisor.spawn(lambda: Worker(life), name="worker")
        await ref.ask("spawn-failing-child")
        await life.child_started.wait()
        assert ref.is_alive
        life.child_trigger.set()
        with anyio.fail_after(2):
            await ref.join()
    # The child's own error is reported, not a task-group wrapper.
    assert escalations.calls == [("worker", life.errors[0])]
    assert str(life.errors[0]) == "child crash"


async def test_a_crashing_child_task_gets_the_actor_restarted() -> None:
    life = Life()
    async with Supervisor(RESTART_AT_ONCE) as supervisor:
        ref = supervisor.spawn(lambda: Worker(life), name="worker")
        await ref.ask("spawn-failing-child")
        await life.child_started.wait()
        life.child_trigger.set()
        with anyio.fail_after(2):
            await life.restarted.wait()
        assert len(life.incarnations) == 2
        assert await ref.ask("after") == (1, "after")
        assert ref.restarts == 1


# --- names, spawning, leaving the block ---------------------------------------------


async def test_a_live_name_cannot_be_taken_twice_but_is_free_once_stopped() -> None:
    first_life, second_life = Life(), Life()
    async with Supervisor() as supervisor:
        first = supervisor.spawn(lambda: Worker(first_life), name="worker")
        with pytest.raises(ActorNameTakenError):
            supervisor.spawn(lambda: Worker(second_life), name="worker")
        assert issubclass(ActorNameTakenError, ActorError)
        assert await first.ask("still mine") == (0, "still mine")
        assert supervisor.live_actors == 1

        await first.stop()
        second = supervisor.spawn(lambda: Worker(second_life), name="worker")
        assert second is not first
        assert await second.ask("hello") == (0, "hello")
        assert supervisor.get("worker") is second
        assert not first.is_alive  # the old ref does not come back to life
        with pytest.raises(ActorStoppedError):
            await first.tell("hello")
    assert first_life.received == [(0, "still mine")]
    assert second_life.received == [(0, "hello")]


async def test_spawn_outside_the_block_raises_runtime_error() -> None:
    supervisor = Supervisor()
    life = Life()
    with pytest.raises(RuntimeError):
        supervisor.spawn(lambda: Worker(life), name="early")
    async with supervisor:
        supervisor.spawn(lambda: Worker(life), name="inside")
    with pytest.raises(RuntimeError):
        supervisor.spawn(lambda: Worker(life), name="late")
    assert len(life.incarnations) <= 1  # only "inside" may ever have started


async def test_leaving_the_block_stops_every_actor() -> None:
    idle, busy, parent = Life(), Life(), Life()
    backing_off = Life(crash_on_start=1)
    outcome: list[object] = []

    async def ask_busy() -> None:
        try:
            outcome.append(await busy_ref.ask("block", timeout=None))
        except ActorStoppedError as exc:
            outcome.append(exc)

    with anyio.fail_after(5):  # also proves the 30 s backoff did not hold the exit
        async with anyio.create_task_group() as task_group:
            async with Supervisor() as supervisor:
                idle_ref = supervisor.spawn(lambda: Worker(idle), name="idle")
                busy_ref = supervisor.spawn(lambda: Worker(busy), name="busy")
                parent_ref = supervisor.spawn(lambda: Worker(parent), name="parent")
                slow_ref = supervisor.spawn(
                    lambda: Worker(backing_off),
                    name="backing-off",
                    strategy=RestartWithBackoff(min_backoff=30.0, max_backoff=30.0),
                )
                task_group.start_soon(ask_busy)
                await busy.busy.wait()
                await parent_ref.ask("spawn-child")
                await parent.child_started.wait()
                await idle_ref.ask("hello")
                assert supervisor.live_actors == 4
            assert supervisor.live_actors == 0

    refs = (idle_ref, busy_ref, parent_ref, slow_ref)
    assert [ref.is_alive for ref in refs] == [False] * 4
    assert (idle.stops, busy.stops, parent.stops) == (1, 1, 1)
    assert parent.child_cancelled == 1
    assert len(outcome) == 1
    assert isinstance(outcome[0], ActorStoppedError)
    assert len(backing_off.incarnations) == 1


async def test_live_actors_counts_down_as_actors_stop() -> None:
    lives = [Life(), Life(), Life()]
    async with Supervisor(Stop()) as supervisor:
        refs = [
            supervisor.spawn(partial(Worker, life), name=f"w{i}") for i, life in enumerate(lives)
        ]
        assert supervisor.live_actors == 3

        await refs[0].stop()  # from outside
        assert supervisor.live_actors == 2
        assert supervisor.get("w0") is None

        await refs[1].ask("stop")  # from inside
        await refs[1].join()
        assert supervisor.live_actors == 1
        assert supervisor.get("w1") is None

        with pytest.raises(RuntimeError):
            await refs[2].ask("crash")  # stopped by the Stop strategy
        await refs[2].join()
        assert supervisor.live_actors == 0
        assert supervisor.get("w2") is None


class Deaf(Actor[str]):
    """Swallows every cancellation until `released`, as a careless retry loop does."""

    def __init__(
        self, inside: anyio.Event, released: anyio.Event, cancellations: list[int]
    ) -> None:
        self.inside = inside
        self.released = released
        self.cancellations = cancellations

    async def receive(self, message: str) -> None:
        self.inside.set()
        try:
            await self.released.wait()
        except anyio.get_cancelled_exc_class():
            self.cancellations.append(1)
            with anyio.CancelScope(shield=True):  # deaf to every cancellation from here on
                await self.released.wait()


async def test_leaving_waits_at_most_stop_timeout_for_an_actor_deaf_to_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inside, released = anyio.Event(), anyio.Event()
    cancellations: list[int] = []
    try:
        async with Supervisor(stop_timeout=0.1) as supervisor:
            ref = supervisor.spawn(partial(Deaf, inside, released, cancellations), name="deaf")
            ref.tell_nowait("work")
            await inside.wait()
        assert cancellations == [1]  # asked to stop; it did not
        assert not released.is_set()
        assert "'deaf' ignored its cancellation for 0.1 s" in caplog.text
    finally:
        released.set()


def test_stop_timeout_must_be_a_duration() -> None:
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="stop_timeout"):
            Supervisor(stop_timeout=bad)
