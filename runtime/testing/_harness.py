"""`Example`: one run of N sagas under one fault plan, through crashes, to the end.

A run opens a `Runtime` on a SQLite file with a `VirtualClock`, spawns the
sagas and then repeats: wait until the runtime is idle (no saga actor in
memory, no store call in progress), resume what is suspended (as an
operator would), move the clock to the store's next wake-up. A crash
cancels the runtime's scope from inside (the runtime is abandoned mid-flight,
with whatever it had not written lost) and the run opens a new runtime on
the same file and the same services. Every wait is bounded in real time.
"""

from __future__ import annotations

import random
import unittest.mock
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import anyio
import anyio.lowlevel

from actors import RestartWithBackoff
from saga import Saga, SagaNotFound, SagaStatus, StoreError, VirtualClock, engine
from saga.store import SagaState

from .._errors import SagaNotSuspendedError
from .._info import SagaInfo
from .._runtime import Runtime
from ..sqlite import SqliteStore
from ._errors import InvariantViolation
from ._journal import CallKind, Journal
from ._plan import OUTAGE_ATTEMPTS, Crash, CrashPoint, Fault, FaultPlan, StepFault, StoreFault
from ._report import FaultReport
from ._store import FaultyStore
from ._wrap import wrap_saga

SUPERVISION = RestartWithBackoff(
    min_backoff=0.001, max_backoff=0.004, random_factor=0.0, max_restarts=2, within=60.0
)
"""Restart a crashed saga actor at once, and suspend it after the third crash in a row."""

REPLAY_LATER = 86_400.0
"""Seconds after the run's end at which the kit replays each code saga against its body."""

_POLL = 0.002
"""Seconds of real time between two looks at an idle-in-the-making runtime."""


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Bounds that make every run end: on crashes, and on real and virtual waits."""

    max_crashes: int = 4
    """Crashes per example; crash faults past it do not fire."""
    idle_timeout: float = 10.0
    """Real seconds the runtime may take to become idle between two clock moves."""
    stuck_after: float = 2.5
    """Real seconds an idle runtime may hold a live saga with nothing due before it is a bug.

    Longer than the runtime's first real-time retry of a saga it could not suspend (1 s).
    """
    max_advances: int = 1000
    """Clock moves per example (an endless retry loop would need more)."""
    max_resumes: int = 20
    max_spawn_attempts: int = 20
    max_recoveries: int = 5


class Example:
    """Runs one example; `run` returns its report, or raises `InvariantViolation` if it hangs."""

    def __init__(
        self,
        saga: Saga,
        inputs: Sequence[Any],
        plan: FaultPlan,
        database: Path,
        limits: Limits,
    ) -> None:
        self.clock = VirtualClock()
        self.journal = Journal(self.clock)
        self.store_calls = 0
        self.steps_seen: dict[str, bool] = {}
        """Each step label a code saga called, and whether it had a compensation."""
        self._user_saga = saga
        self._inputs = list(inputs)
        self._plan = plan
        self._database = database
        self._limits = limits
        self._ids = [f"{saga.name}-{i}" for i in range(len(inputs))]
        self._index = {saga_id: i for i, saga_id in enumerate(self._ids)}
        self._fired: list[Fault] = []
        self._writes: dict[str, int] = {}
        self._acknowledged: set[str] = set()
        self._resumed: list[str] = []
        self._crashes = 0
        self._runtimes = 0
        self._crashing = False
        self._crashes_allowed = True
        self._process: anyio.CancelScope | None = None
        self._violation: InvariantViolation | None = None
        self._wall_offset = 0.0
        timeouts = {
            (f.step, f.compensating)
            for f in plan.faults
            if isinstance(f, StepFault) and f.kind == "timeout"
        }
        self.saga = wrap_saga(saga, self, timeouts)

    # -- the injector side (called by the wrappers and the store) -----------

    async def alive(self) -> None:
        if self._crashing:
            await anyio.sleep_forever()

    def _take(self, wanted: Fault) -> bool:
        if wanted in self._plan.faults and wanted not in self._fired:
            self._fired.append(wanted)
            return True
        return False

    def take_step_fault(
        self, saga_id: str, step: str, attempt: int, compensating: bool
    ) -> StepFault | None:
        saga = self._index[saga_id]
        for fault in self._plan.faults:
            if (
                isinstance(fault, StepFault)
                and fault.kind == "outage"
                and (fault.saga, fault.step, fault.compensating) == (saga, step, compensating)
                and fault.attempt <= attempt < fault.attempt + OUTAGE_ATTEMPTS
            ):
                if self._take(fault):
                    self.journal.note(saga_id, f"FAULT 'outage': {step} is down from now on")
                return fault
        for fault in self._plan.faults:
            if (
                isinstance(fault, StepFault)
                and (fault.saga, fault.step, fault.attempt, fault.compensating)
                == (saga, step, attempt, compensating)
                and self._take(fault)
            ):
                what = "compensation" if compensating else "action"
                self.journal.note(
                    saga_id, f"FAULT {fault.kind!r} injected into {what} {step} attempt {attempt}"
                )
                return fault
        return None

    def take_crash(
        self, saga_id: str, at: CrashPoint, step: str, attempt: int, compensating: bool
    ) -> Crash | None:
        if self._crashing or not self._crashes_allowed:
            return None
        if self._crashes >= self._limits.max_crashes:
            return None
        saga = self._index[saga_id]
        if at == "recovery":
            wanted = Crash(saga=saga, at="recovery")
        else:
            wanted = Crash(saga=saga, at=at, step=step, attempt=attempt, compensating=compensating)
        return wanted if self._take(wanted) else None

    def take_store_fault(self, saga_id: str) -> StoreFault | None:
        write = self._writes[saga_id] = self._writes.get(saga_id, 0) + 1
        wanted_saga = self._index[saga_id]
        for fault in self._plan.faults:
            if (
                isinstance(fault, StoreFault)
                and (fault.saga, fault.write) == (wanted_saga, write)
                and self._take(fault)
            ):
                return fault
        return None

    def may_have_taken_effect(self, saga_id: str, step: str, kind: CallKind) -> bool:
        return any(
            call.took_effect is not False
            for call in self.journal.calls
            if (call.saga_id, call.step, call.kind) == (saga_id, step, kind)
        )

    def step_name(self, state: SagaState, index: int) -> str:
        call = state.steps[index].call
        return self.saga.steps[index].name if call is None else call.label

    def saw_step(self, label: str, compensable: bool) -> None:
        self.steps_seen.setdefault(label, compensable)

    async def crash(self, saga_id: str, why: str) -> NoReturn:
        self._crashes += 1
        self._crashing = True
        self.journal.note(
            None, f"CRASH #{self._crashes} ({saga_id}: {why}): runtime #{self._runtimes} abandoned"
        )
        assert self._process is not None, "a crash outside a runtime"
        self._process.cancel()
        await anyio.sleep_forever()
        raise AssertionError("unreachable: the runtime's scope was cancelled")

    # -- the run ------------------------------------------------------------

    async def run(self) -> FaultReport:
        """Run every saga to its end through the plan's faults; the report of what happened.

        Raises `InvariantViolation` when the sagas do not end (see `Limits`).
        """
        with unittest.mock.patch("time.time", self._wall_clock):
            return await self._run()

    def _wall_clock(self) -> float:
        """`time.time()` during an example: the virtual clock (so a body that reads it
        instead of `ctx.now()` is caught by the replay at the end, a day later)."""
        return self.clock.now() + self._wall_offset

    async def _run(self) -> FaultReport:
        while True:
            self._runtimes += 1
            self._crashing = False
            store = FaultyStore(SqliteStore(self._database, synchronous="OFF"), self)
            runtime = Runtime(
                store,
                sagas=[self.saga],
                clock=self.clock,
                keep_warm=0.0,
                supervision=SUPERVISION,
                max_recoveries=self._limits.max_recoveries,
                rng=random.Random(self._runtimes),
            )
            with anyio.CancelScope() as process:
                self._process = process
                try:
                    async with runtime:
                        self.journal.note(None, f"runtime #{self._runtimes} opened")
                        return await self._drive(runtime)
                finally:
                    self._process = None
            # Only a crash or a violation cancels the scope.
            assert process.cancelled_caught
            if self._violation is not None:
                raise self._violation

    async def _drive(self, rt: Runtime) -> FaultReport:
        await self._spawn_missing(rt)
        limits = self._limits
        advances = 0
        stuck_since: float | None = None
        while True:
            if await self._until_idle(rt):
                stuck_since = None  # something ran: whatever looked stuck moved
            rows = {r.saga_id: SagaStatus(r.status) for r in await rt.store.list_sagas(limit=1000)}
            lost = sorted(self._acknowledged - set(rows))
            if lost:
                await self._fail(rt, f"acknowledged sagas are gone from the store: {lost}")
            live = [sid for sid in self._ids if not rows[sid].is_terminal]
            if not live:
                self._crashes_allowed = False
                return await self._report(rt)
            suspended = [sid for sid in live if rows[sid] is SagaStatus.SUSPENDED]
            for saga_id in suspended:
                reason = (await rt.status(saga_id)).suspended_reason or ""
                if "is not deterministic at call" in reason:
                    await self._fail(rt, f"{saga_id}: its body is not deterministic: {reason}")
            if suspended:
                await self._resume(rt, suspended)
                stuck_since = None
                continue
            wake_at = await rt.store.next_wake_at()
            if wake_at is not None and wake_at > self.clock.now():
                advances += 1
                if advances > limits.max_advances:
                    await self._fail(
                        rt,
                        f"sagas {live} did not end after {limits.max_advances} moves of the "
                        "clock (an endless retry loop?)",
                    )
                self.clock.set(wake_at)
                stuck_since = None
                continue
            # Idle, yet a live saga and nothing due later: the timer service should be
            # waking a due saga right now; give it a moment.
            now = anyio.current_time()
            if stuck_since is None:
                stuck_since = now
            elif now - stuck_since > limits.stuck_after:
                why = (
                    "nothing in memory drives them and no wake-up is stored"
                    if wake_at is None
                    else "their wake-up is due but nothing woke them"
                )
                await self._fail(rt, f"sagas {live} are stuck: {why}")
            await anyio.sleep(_POLL)

    async def _spawn_missing(self, rt: Runtime) -> None:
        for saga_id, saga_input in zip(self._ids, self._inputs, strict=True):
            tries = 0
            while saga_id not in self._acknowledged:
                tries += 1
                try:
                    await rt.spawn(self.saga, saga_input, saga_id=saga_id)
                except StoreError as exc:
                    self.journal.note(saga_id, f"spawn raised {exc}; spawning it again")
                    if tries >= self._limits.max_spawn_attempts:
                        await self._fail(rt, f"spawn of {saga_id} kept failing: {exc}")
                else:
                    self._acknowledged.add(saga_id)
                    self.journal.note(saga_id, "spawn acknowledged")

    async def _until_idle(self, rt: Runtime) -> bool:
        """Wait until no saga actor is in memory and no store call is under way.

        Returns whether anything was running.
        """
        busy = False
        try:
            with anyio.fail_after(self._limits.idle_timeout):
                await anyio.lowlevel.checkpoint()
                # No event says "idle": the runtime has no such hook (see the report).
                while rt.live_actors or self.store_calls:
                    busy = True
                    await anyio.sleep(_POLL)
        except TimeoutError:
            await self._fail(
                rt,
                f"the runtime did not become idle within {self._limits.idle_timeout} s of real "
                f"time: {rt.live_actors} saga actor(s) in memory (a step or compensation that "
                "never returns and has no timeout?)",
            )
        return busy

    async def _resume(self, rt: Runtime, suspended: Sequence[str]) -> None:
        for saga_id in suspended:
            if len(self._resumed) >= self._limits.max_resumes:
                await self._fail(
                    rt, f"{saga_id} was suspended again after {len(self._resumed)} resumes"
                )
            info = await rt.status(saga_id)
            self.journal.note(
                saga_id, f"suspended ({info.suspended_reason}); the harness resumes it"
            )
            self._resumed.append(saga_id)
            try:
                await rt.resume(saga_id)
            except SagaNotSuspendedError:
                pass  # no longer suspended
            except StoreError as exc:
                self.journal.note(saga_id, f"resume raised {exc}; it will be resumed again")

    async def _report(self, rt: Runtime) -> FaultReport:
        sagas: dict[str, SagaInfo] = {}
        snapshots: dict[str, SagaState] = {}
        divergences: dict[str, str] = {}
        for saga_id in self._ids:
            try:
                sagas[saga_id] = await rt.status(saga_id)
                # complete: a code saga's stored snapshot holds only its open calls
                stored = await engine.restore(rt.store, self.saga, saga_id)
            except SagaNotFound:
                continue
            snapshots[saga_id] = stored.state
            # Replayed a day later: a body that reads the wall clock (or anything not
            # recorded) instead of going through `ctx` takes another path now.
            self._wall_offset = REPLAY_LATER
            diverged = engine.replay(
                self.saga, saga_id, stored.input, stored.state, at=self.clock.now() + REPLAY_LATER
            )
            self._wall_offset = 0.0
            if diverged is not None:
                divergences[saga_id] = str(diverged)
        return FaultReport(
            plan=self._plan,
            saga=self._user_saga,
            saga_ids=tuple(self._ids),
            inputs=dict(zip(self._ids, self._inputs, strict=True)),
            sagas=sagas,
            snapshots=snapshots,
            divergences=divergences,
            calls=tuple(self.journal.calls),
            notes=tuple(self.journal.notes),
            writes=tuple(self.journal.writes),
            fired=tuple(self._fired),
            crashes=self._crashes,
            runtimes=self._runtimes,
            resumed=tuple(self._resumed),
            acknowledged=frozenset(self._acknowledged),
        )

    async def _fail(self, rt: Runtime, problem: str) -> NoReturn:
        """Leave the runtime and raise `InvariantViolation` for `problem` from `run`."""
        self._crashes_allowed = False
        report = await self._report(rt)
        self._violation = InvariantViolation(report.explain(problem, report.saga_ids), report)
        assert self._process is not None
        self._process.cancel()  # raised by `run` once the runtime is closed
        await anyio.sleep_forever()
        raise AssertionError("unreachable: the runtime's scope was cancelled")
