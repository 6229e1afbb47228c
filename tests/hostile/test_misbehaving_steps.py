"""Steps that raise what a step should not: a BaseException that is not a stop is that
step's failure alone; Ctrl-C or `sys.exit` in a step is a clean stop of the runtime that
loses nothing (the step runs again on the next start)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from runtime import Runtime, SagaCompensated
from saga import RetryPolicy, Saga, Step, StepContext

from ..child_process import REPO
from .interrupted_child import STOPS

QUICK = RetryPolicy(initial_interval=0.01, maximum_attempts=2)


class Meltdown(BaseException):
    """A library's own BaseException subclass."""


async def fine(ctx: StepContext, value: int) -> int:
    return value


async def undo(ctx: StepContext, value: int, result: object) -> None:
    return None


def raising(error: BaseException) -> Saga:
    async def explode(ctx: StepContext, value: int) -> int:
        raise error

    return Saga("exploding", [Step("first", fine, compensate=undo), Step("explode", explode)])


CALM = Saga("calm", [Step("first", fine), Step("second", fine)])


@pytest.mark.parametrize("error", [Meltdown("boom"), GeneratorExit()], ids=type)
async def test_a_stray_base_exception_fails_its_step_and_no_one_else(
    tmp_path: Path, error: BaseException
) -> None:
    exploding = raising(error)
    async with Runtime(tmp_path / "sagas.db", sagas=[exploding, CALM]) as rt:
        calm = [await rt.spawn(CALM, n, saga_id=f"calm-{n}") for n in range(5)]
        bad = await rt.spawn(exploding, 1, saga_id="bad")
        with pytest.raises(SagaCompensated) as raised:
            await bad.result(timeout=10)
        assert raised.value.step == "explode"
        assert raised.value.error is not None
        assert type(error).__name__ in raised.value.error.type
        for n, handle in enumerate(calm):
            assert (await handle.result(timeout=10))["second"] == n
        assert (await rt.status("bad")).steps[1].attempts == 1  # failed, not retried


class Interrupt:
    """A step that raises `stop` (a Ctrl-C, a sys.exit) on its first run only."""

    def __init__(self, stop: type[BaseException]) -> None:
        self.stop = stop
        self.runs = 0

    async def __call__(self, ctx: StepContext, value: int) -> int:
        self.runs += 1
        if self.runs == 1:
            raise self.stop
        return value * 10


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_ctrl_c_in_a_step_stops_the_runtime_and_loses_nothing(
    tmp_path: Path, stop: type[BaseException]
) -> None:
    # asyncio lets these two out of the event loop itself, so the runtime runs under
    # its own `anyio.run`, as in an application.
    db = tmp_path / "sagas.db"
    step = Interrupt(stop)
    interrupted = Saga("interrupted", [Step("first", fine), Step("press", step)])

    async def until_stopped() -> None:
        async with Runtime(db, sagas=[interrupted, CALM]) as rt:
            await rt.spawn(CALM, 1, saga_id="calm")
            await rt.spawn(interrupted, 2, saga_id="pressed")
            await anyio.sleep_forever()  # the step's stop ends the runtime

    async def restarted() -> None:
        async with Runtime(db, sagas=[interrupted, CALM]) as rt:
            assert (await rt.handle("pressed").result(timeout=10))["press"] == 20
            assert (await rt.handle("calm").result(timeout=10))["second"] == 1

    with pytest.raises(stop):
        anyio.run(until_stopped)
    anyio.run(restarted)
    assert step.runs == 2  # it ran again: the stop lost nothing


async def test_a_step_that_swallows_its_timeout_once_is_cancelled_again(tmp_path: Path) -> None:
    swallowed: list[int] = []

    async def stubborn(ctx: StepContext, value: int) -> int:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            swallowed.append(ctx.attempt)  # and carries on, as a careless retry loop does
        await anyio.sleep(30)  # cancelled again: the timeout's scope is still cancelled
        return value

    saga = Saga(
        "stubborn",
        [Step("first", fine, compensate=undo), Step("hang", stubborn, timeout=0.05, retry=QUICK)],
    )
    async with Runtime(tmp_path / "sagas.db", sagas=[saga]) as rt:
        with pytest.raises(SagaCompensated) as raised:
            await (await rt.spawn(saga, 1, saga_id="s")).result(timeout=20)
    assert raised.value.error is not None
    assert raised.value.error.timed_out
    assert swallowed == [1, 2]  # each attempt swallowed once, then ended


class Deaf:
    """A step that swallows every cancellation until the test lets it go (for the runtime,
    for ever); released, it returns, so the test's own event loop can end."""

    def __init__(self) -> None:
        self.released = anyio.Event()
        self.cancellations = 0
        self.runs = 0
        self.running = anyio.Event()

    async def __call__(self, ctx: StepContext, value: int) -> int:
        self.runs += 1
        self.running.set()
        try:
            await self.released.wait()
        except anyio.get_cancelled_exc_class():
            self.cancellations += 1
            with anyio.CancelScope(shield=True):  # deaf to every cancellation from here on
                await self.released.wait()
        return value


async def test_a_step_deaf_to_its_timeout_is_abandoned_and_compensated(tmp_path: Path) -> None:
    deaf = Deaf()
    undone: list[object] = []

    async def undo_deaf(ctx: StepContext, value: int, result: object) -> None:
        undone.append(result)

    saga = Saga(
        "deaf",
        [
            Step("first", fine, compensate=undo),
            Step("deaf", deaf, compensate=undo_deaf, timeout=0.05, retry=QUICK),
        ],
    )
    try:
        async with Runtime(tmp_path / "sagas.db", sagas=[saga]) as rt:
            with pytest.raises(SagaCompensated) as raised:
                await (await rt.spawn(saga, 1, saga_id="s")).result(timeout=20)
            step = (await rt.status("s")).steps[1]
    finally:
        deaf.released.set()
    assert raised.value.error is not None
    assert raised.value.error.timed_out
    assert "abandoned" in raised.value.error.message
    assert deaf.cancellations == 1  # it was cancelled and would not stop
    assert deaf.runs == 1  # ambiguous: never retried beside itself
    assert step.attempts == 1
    assert undone == [None]  # it may have acted: compensated as ambiguous


async def test_leaving_the_runtime_is_bounded_by_a_step_deaf_to_cancellation(
    tmp_path: Path,
) -> None:
    deaf = Deaf()
    saga = Saga("deaf", [Step("first", fine), Step("deaf", deaf)])
    db = tmp_path / "sagas.db"
    try:
        started = anyio.current_time()
        async with Runtime(db, sagas=[saga], stop_timeout=0.3) as rt:
            await rt.spawn(saga, 1, saga_id="s")
            await deaf.running.wait()
        left_after = anyio.current_time() - started
        assert deaf.cancellations == 1
        assert not deaf.released.is_set()  # still running, unawaited
        assert left_after < 10  # bounded by stop_timeout, not by the step
        # Its outcome was never written: the next start runs it again.
        again = Saga("deaf", [Step("first", fine), Step("deaf", fine)])
        async with Runtime(db, sagas=[again]) as rt:
            assert (await rt.handle("s").result(timeout=10))["deaf"] == 1
    finally:
        deaf.released.set()
    assert deaf.runs == 1


@pytest.mark.parametrize("stop", sorted(STOPS))
def test_the_process_exits_after_a_ctrl_c_in_a_step(tmp_path: Path, stop: str) -> None:
    # anyio's worker threads outlived an interrupted event loop and the interpreter
    # waited for them at exit forever; the bound only turns that hang into a failure.
    child = "tests.hostile.interrupted_child"
    command = [sys.executable, "-m", child, str(tmp_path / "s.db"), stop]
    try:
        ended = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"the process never exited after the stop; it printed {hung.stdout!r}")
    assert ended.stdout.splitlines() == ["STOPPED"], ended.stderr
    assert ended.returncode == 0, ended.stderr
