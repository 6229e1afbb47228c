"""Shared pieces of the long-running saga tests: a side-effect journal, gates, polling.

Everything here waits on events or polls the store with an overall bound;
nothing sleeps to let time pass (the tests move a `VirtualClock` instead).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import msgspec

from runtime import Runtime, SagaInfo, SagaStatus
from saga import Action, Compensation, NonRetryableError, StepContext
from saga.engine import Event
from saga.store import HistoryEntry

WAIT = 10.0
"""Generous bound on anything a test waits for; every wait ends far sooner."""

DAY = 86_400.0


class Approval(msgspec.Struct, frozen=True):
    """The manager's answer: the payload of the `approval` signal."""

    approved: bool
    by: str


class Rejected(NonRetryableError):
    """The refund was not approved: it proves nothing took effect."""


@dataclass(frozen=True)
class Call:
    kind: Literal["action", "compensate"]
    saga_id: str
    step: str
    attempt: int
    key: str
    results: dict[str, Any]
    given: Any = None
    """What a compensation was given (the recorded result or None)."""


@dataclass
class Journal:
    """Every side effect of every action and compensation, in order."""

    calls: list[Call] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    """Free-form (saga_id, what) marks, e.g. that an action was interrupted."""

    def record(self, kind: Literal["action", "compensate"], ctx: StepContext, given: Any) -> None:
        self.calls.append(
            Call(
                kind,
                ctx.saga_id,
                ctx.step,
                ctx.attempt,
                ctx.idempotency_key,
                dict(ctx.results),
                given,
            )
        )

    def of(self, saga_id: str) -> list[tuple[str, str]]:
        """(kind, step) of every call for `saga_id`, in order."""
        return [(c.kind, c.step) for c in self.calls if c.saga_id == saga_id]

    def actions(self, step: str, saga_id: str | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.kind == "action" and c.step == step and saga_id in (None, c.saga_id)
        ]

    def compensations(self, saga_id: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.kind == "compensate" and saga_id in (None, c.saga_id)]


def act(journal: Journal, produce: Callable[[StepContext, Any], Any] | None = None) -> Action:
    """An action that records its call, then returns `produce(ctx, input)` (or None)."""

    async def run(ctx: StepContext, saga_input: Any) -> Any:
        journal.record("action", ctx, None)
        return None if produce is None else produce(ctx, saga_input)

    return run


def undo(journal: Journal) -> Compensation:
    """A compensation that records its call and what it was given."""

    async def run(ctx: StepContext, saga_input: Any, result: Any) -> None:
        journal.record("compensate", ctx, result)

    return run


class Gate:
    """Per-saga events: `entered` when a call starts, `release` to let it return."""

    def __init__(self) -> None:
        self.entered: dict[str, anyio.Event] = {}
        self.release: dict[str, anyio.Event] = {}

    def _pair(self, saga_id: str) -> tuple[anyio.Event, anyio.Event]:
        if saga_id not in self.entered:
            self.entered[saga_id] = anyio.Event()
            self.release[saga_id] = anyio.Event()
        return self.entered[saga_id], self.release[saga_id]

    async def reached(self, saga_id: str) -> None:
        entered, _ = self._pair(saga_id)
        with anyio.fail_after(WAIT):
            await entered.wait()

    def open(self, saga_id: str) -> None:
        self._pair(saga_id)[1].set()

    def reset(self, saga_id: str) -> None:
        self.entered.pop(saga_id, None)
        self.release.pop(saga_id, None)

    def action(self, journal: Journal, value: Any = None) -> Action:
        """Records its call, waits for `open`, returns `value`; notes an interruption."""

        async def run(ctx: StepContext, saga_input: Any) -> Any:
            journal.record("action", ctx, None)
            entered, release = self._pair(ctx.saga_id)
            entered.set()
            try:
                await release.wait()
            except anyio.get_cancelled_exc_class():
                journal.notes.append((ctx.saga_id, f"{ctx.step} interrupted"))
                raise
            journal.notes.append((ctx.saga_id, f"{ctx.step} returned"))
            return value

        return run

    def compensation(self, journal: Journal) -> Compensation:
        """Records its call, waits for `open`; notes whether it finished or was interrupted."""

        async def run(ctx: StepContext, saga_input: Any, result: Any) -> None:
            journal.record("compensate", ctx, result)
            entered, release = self._pair(ctx.saga_id)
            entered.set()
            try:
                await release.wait()
            except anyio.get_cancelled_exc_class():
                journal.notes.append((ctx.saga_id, f"{ctx.step} compensation interrupted"))
                raise
            journal.notes.append((ctx.saga_id, f"{ctx.step} compensation finished"))

        return run


async def until(
    check: Callable[[], Awaitable[bool]], *, timeout: float = WAIT, what: str = "condition"
) -> None:
    """Poll `check` until it holds (for states that no event announces)."""
    try:
        with anyio.fail_after(timeout):
            while not await check():  # noqa: ASYNC110 - no event announces a stored state
                await anyio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def until_status(
    rt: Runtime,
    saga_id: str,
    status: SagaStatus,
    *,
    waiting_for: str | None = None,
) -> SagaInfo:
    """Wait until the stored saga has `status` (and, if given, waits for that signal)."""
    seen: list[SagaInfo] = []

    async def check() -> bool:
        info = await rt.status(saga_id)
        seen[:] = [info]
        return info.status is status and (waiting_for is None or info.waiting_for == waiting_for)

    await until(check, what=f"{saga_id} to be {status} (waiting for {waiting_for})")
    return seen[0]


def events(info: SagaInfo, kind: type[Event] | tuple[type[Event], ...]) -> list[Any]:
    return [entry.event for entry in info.history if isinstance(entry.event, kind)]


def assert_contiguous(history: tuple[HistoryEntry, ...]) -> None:
    """One history entry per durable snapshot, numbered 1, 2, 3...: no gap, no duplicate."""
    assert [entry.seq for entry in history] == list(range(1, len(history) + 1))


def texts(info: SagaInfo) -> list[str]:
    """The timeline without its time column."""
    lines = info.timeline()
    parsed = [re.fullmatch(r"\+\s*(\d+\.\d{3})s  (.+)", line) for line in lines]
    assert all(parsed), lines
    return [m[2] for m in parsed if m]


def offsets(info: SagaInfo) -> list[tuple[float, str]]:
    """The timeline as (seconds since start, text)."""
    out: list[tuple[float, str]] = []
    for line in info.timeline():
        match = re.fullmatch(r"\+\s*(\d+\.\d{3})s  (.+)", line)
        assert match, line
        out.append((float(match[1]), match[2]))
    return out
