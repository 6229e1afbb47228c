"""A Hypothesis state machine over the whole runtime, on a real SQLite file.

Rules spawn checkout sagas (each with its own plan of failing steps), spawn
them again (the same input: exactly-once; another input: refused), arm store
faults for the next writes (a failed write, a lost acknowledgement, a real
"database is locked", a real disk full), arm a crash at the n-th next
service call (just before or after its effect), abandon and reopen the
runtime at once, move the virtual clock to the next wake-up, and resume
suspended sagas as an operator would. The runtime lives in a blocking
portal's event loop; each rule runs there and waits until the runtime is
idle (`World.settle`).

After every rule: nothing acknowledged is lost; every history is contiguous
and folds to its snapshot; the ledger shows no forward effect after a
saga's first compensation, compensations only of steps with an effect or an
ambiguous end, no step run more often than its durable intents and
recoveries commanded; and every saga went, as far as it got, the way its
plan says. At teardown the faults stop, the runtime runs every saga to its
end, and the outcome of each is compared with the reference model
(`checkout.expected`): status, each step's status and attempts, the
compensations (exactly those the ledger shows, newest first) and the result.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from msgspec.structs import replace

from runtime import (
    DelegatingStore,
    DuplicateSagaError,
    Runtime,
    SagaCompensated,
    SagaFailed,
    SagaNotSuspendedError,
    SagaStatus,
    SqliteStore,
    StoreError,
    VirtualClock,
)
from saga.engine import Event
from saga.store import InboxItem, SagaState

from .checkout import (
    COMPENSABLE,
    HAPPY,
    MAX_ATTEMPTS,
    RETRIED,
    STEPS,
    VIRTUAL,
    Fault,
    MemoryLedger,
    Order,
    StepPlan,
    Where,
    build_checkout,
    expected_output,
    make_order,
)
from .faults import FaultBoard, FaultKind
from .invariants import by_saga, check_output, check_saga, integrity, read_store
from .world import CrashHooks, World

SOAK = os.environ.get("SAGALOOP_SOAK") == "1"
FINAL_TIMEOUT = 60.0
RESULT_TIMEOUT = 10.0

# Hypothesis shrinks towards the first element: a plan that goes well.
FAULTS = (Fault.OK,) * 7 + (
    Fault.TRANSIENT,
    Fault.TRANSIENT_AFTER,
    Fault.DEFINITIVE,
    Fault.UNRECORDABLE,
    Fault.TIMEOUT,
)


@st.composite
def step_plans(draw: st.DrawFn, compensable: bool) -> StepPlan:
    fault = draw(st.sampled_from(FAULTS))
    failures = draw(st.integers(1, MAX_ATTEMPTS)) if fault in RETRIED else 0
    undo_failures = draw(st.integers(0, 2)) if compensable else 0
    after = undo_failures > 0 and draw(st.booleans())
    return StepPlan(
        fault=fault,
        failures=failures,
        compensation_failures=undo_failures,
        compensation_fails_after_undo=after,
    )


plans = st.tuples(*(step_plans(step in COMPENSABLE) for step in STEPS))


@dataclass
class Figures:
    examples: int = 0
    sagas: int = 0
    restarts: int = 0
    crash_hooks_fired: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    refused_by_sqlite: Counter[str] = field(default_factory=Counter)
    recoveries: int = 0
    suspensions: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    violations: int = 0

    def __str__(self) -> str:
        def show(counter: Counter[str]) -> str:
            return ", ".join(f"{k}: {n}" for k, n in sorted(counter.items())) or "none"

        return (
            f"runtime chaos machine: {self.examples} examples, {self.sagas} sagas, "
            f"{self.restarts} runtimes abandoned and reopened ({self.crash_hooks_fired} inside "
            f"a service call), faults injected: {show(self.faults)}; refused by SQLite: "
            f"{show(self.refused_by_sqlite)}; {self.recoveries} recoveries, {self.suspensions} "
            f"suspensions; outcomes: "
            f"{show(self.outcomes)}; {self.violations} violations"
        )


Final = tuple[SagaStatus, tuple[Any, ...], tuple[int, ...], tuple[int, ...], str | None]


class RuntimeChaos(RuleBasedStateMachine):
    """Set `portal`, `root` and `figures` on a subclass (see `bound`)."""

    portal: ClassVar[BlockingPortal]
    root: ClassVar[Path]
    figures: ClassVar[Figures]

    sagas = Bundle("sagas")

    def __init__(self) -> None:
        super().__init__()
        self.workdir = Path(tempfile.mkdtemp(dir=self.root))
        self.ledger = MemoryLedger()
        self.hooks = CrashHooks()
        self.board = FaultBoard()
        self.checkout = build_checkout(self.ledger, self.hooks, VIRTUAL)
        self.world = World(self.workdir / "sagas.db", self.checkout, self.board, self.hooks)
        self.orders: dict[str, Order] = {}
        self.acked: set[str] = set()
        self.healthy = True
        self._served, _ = self.portal.start_task(self.world.serve)
        self.portal.call(self.world.open)

    @contextmanager
    def step(self) -> Iterator[None]:
        """A rule: the teardown runs every saga to its end only if no rule failed."""
        self.healthy = False
        yield
        self.healthy = True

    # -- spawning --------------------------------------------------------------------

    def _spawn(self, order: Order) -> None:
        outcome = self.portal.call(
            self.world.call, lambda rt: rt.spawn(self.checkout, order, saga_id=order.order_id)
        )
        if outcome.error is not None and not isinstance(outcome.error, StoreError):
            raise outcome.error  # only a store fault (or a crash) may refuse a spawn
        if outcome.returned:
            self.acked.add(order.order_id)
        self.portal.call(self.world.settle)

    @rule(target=sagas, plan=plans)
    def spawn(self, plan: tuple[StepPlan, ...]) -> str:
        with self.step():
            sid = f"order-{len(self.orders):03d}"
            order = make_order(sid, plan, amount=100 + len(self.orders))
            self.orders[sid] = order
            self._spawn(order)
            return sid

    @rule(sid=sagas, same_input=st.booleans())
    def spawn_again(self, sid: str, same_input: bool) -> None:
        """A duplicate delivery of a spawn (the same saga, started once), or a clash."""
        with self.step():
            if same_input:
                self._spawn(self.orders[sid])
                return
            if sid not in self.acked:
                return  # it may not exist: another input could rightly start it
            other = replace(self.orders[sid], amount=self.orders[sid].amount + 1)
            outcome = self.portal.call(
                self.world.call, lambda rt: rt.spawn(self.checkout, other, saga_id=sid)
            )
            assert not outcome.returned, f"{sid}: a spawn with another input returned"
            if outcome.error is not None and not isinstance(outcome.error, StoreError):
                assert isinstance(outcome.error, DuplicateSagaError), outcome.error
            self.portal.call(self.world.settle)

    # -- faults ------------------------------------------------------------------------

    @rule(kind=st.sampled_from(FaultKind), count=st.integers(1, 5))
    def store_fault(self, kind: FaultKind, count: int) -> None:
        self.board.arm(kind, count)

    @rule(nth=st.integers(0, 5), where=st.sampled_from(("before", "after")))
    def crash(self, nth: int, where: Where) -> None:
        """Abandon the runtime now (nth=0), or at the nth next service call, and reopen it."""
        if nth:
            self.hooks.arm(nth, where)
            return
        with self.step():
            self.portal.call(self.world.restart)
            self.portal.call(self.world.settle)

    # -- time and the operator ---------------------------------------------------------

    @rule()
    def advance_clock(self) -> None:
        with self.step():
            self.portal.call(self.world.advance)

    @rule()
    def resume_suspended(self) -> None:
        with self.step():
            statuses = self.portal.call(self.world.statuses)
            for sid, status in sorted(statuses.items()):
                if status is not SagaStatus.SUSPENDED:
                    continue
                outcome = self.portal.call(self.world.resume, sid)
                error = outcome.error
                assert error is None or isinstance(error, StoreError | SagaNotSuspendedError), error
            self.portal.call(self.world.settle)

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def every_saga_is_consistent(self) -> None:
        if not self.healthy:
            return
        self.healthy = False  # until this check passes
        records = by_saga(self.ledger.records())  # the ledger first, then the store
        rows = read_store(self.world.path)
        violations = [f"acknowledged, then lost: {sid}" for sid in sorted(self.acked - rows.keys())]
        violations += [f"never spawned: {sid}" for sid in sorted(rows.keys() - self.orders.keys())]
        for sid, row in rows.items():
            checked = check_saga(self.checkout, row, records.get(sid, []), final=False)
            violations += checked.violations
        self.figures.violations += len(violations)
        assert not violations, "\n".join(violations)
        self.healthy = True

    def teardown(self) -> None:
        try:
            if self.healthy:
                self.healthy = False
                self._finish()
                self.healthy = True
        finally:
            self.portal.call(self.world.close)
            self._served.result()

    def _finish(self) -> None:
        self.portal.call(self.world.run_to_the_end, FINAL_TIMEOUT)
        records = by_saga(self.ledger.records())
        rows = read_store(self.world.path)
        assert self.acked <= rows.keys(), sorted(self.acked - rows.keys())
        results: dict[str, object] = {}
        for sid in sorted(rows):
            outcome = self.portal.call(
                self.world.call,
                lambda rt, sid=sid: result_of(rt, sid),
            )
            assert outcome.returned, outcome
            results[sid] = outcome.value
        violations: list[str] = []
        runtime_outcomes: dict[str, Final] = {}
        model_outcomes: dict[str, Final] = {}
        figures = self.figures
        for sid, row in sorted(rows.items()):
            checked = check_saga(self.checkout, row, records.get(sid, []), final=True)
            violations += checked.violations
            assert checked.state is not None, checked.violations
            assert checked.model is not None, checked.violations
            check_output(sid, checked.model, results[sid], violations)
            state, model = checked.state, checked.model
            runtime_outcomes[sid] = (
                state.status,
                tuple((s.status, s.attempts) for s in state.steps),
                tuple(s.compensation_attempts for s in state.steps),
                checked.compensated_order,
                None if state.failed_step is None else STEPS[state.failed_step],
            )
            model_outcomes[sid] = (
                model.status,
                model.steps,
                model.compensation_attempts,
                model.compensated,
                None if model.failed_step is None else STEPS[model.failed_step],
            )
            figures.recoveries += checked.recoveries
            figures.suspensions += checked.suspensions
            figures.outcomes[str(state.status)] += 1
        # Differential: the runtime's outcome of every saga equals the model's.
        figures.violations += len(violations) + sum(
            runtime_outcomes[sid] != model_outcomes[sid] for sid in rows
        )
        assert runtime_outcomes == model_outcomes
        assert not violations, "\n".join(violations)
        assert integrity(self.world.path) == "ok"
        figures.examples += 1
        figures.sagas += len(rows)
        figures.restarts += self.world.restarts
        figures.crash_hooks_fired += self.hooks.fired
        figures.faults.update({str(k): n for k, n in self.board.injected.items()})
        figures.refused_by_sqlite.update(self.board.refused_by_sqlite)


async def result_of(rt: Runtime, saga_id: str) -> object:
    """The saga's output, or the `SagaCompensated`/`SagaFailed` it ended with."""
    try:
        return await rt.handle(saga_id).result(timeout=RESULT_TIMEOUT)
    except (SagaCompensated, SagaFailed) as exc:
        return exc


def bound(portal: BlockingPortal, root: Path, figures: Figures) -> type[RuntimeChaos]:
    class Bound(RuntimeChaos):
        pass

    Bound.portal, Bound.root, Bound.figures = portal, root, figures
    return Bound


def run_machine(root: Path, *, examples: int, steps: int, derandomize: bool) -> Figures:
    figures = Figures()
    try:
        with start_blocking_portal("asyncio") as portal:
            run_state_machine_as_test(
                bound(portal, root, figures),
                settings=settings(
                    max_examples=examples,
                    stateful_step_count=steps,
                    deadline=None,
                    derandomize=derandomize,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                ),
            )
    finally:
        print(figures)
    return figures


def test_runtime_chaos_machine(tmp_path: Path) -> None:
    # The same examples every run (the soak explores); what a run hits still varies with timing.
    figures = run_machine(tmp_path, examples=15, steps=40, derandomize=True)
    assert figures.examples >= 15, figures
    assert figures.sagas >= 15, figures
    assert figures.restarts, figures
    assert figures.crash_hooks_fired, figures
    assert figures.recoveries, figures
    assert set(figures.faults) == {str(kind) for kind in FaultKind}, figures
    assert figures.refused_by_sqlite[FaultKind.LOCKED], figures


@pytest.mark.soak
@pytest.mark.timeout(900)
@pytest.mark.skipif(not SOAK, reason="set SAGALOOP_SOAK=1 for the long chaos run")
def test_runtime_chaos_machine_soak(tmp_path: Path) -> None:
    figures = run_machine(tmp_path, examples=300, steps=50, derandomize=False)
    assert figures.examples >= 300, figures


# -- a regression test for a bug the machine found (fixed in 1f30e74) ----------------------


class HeldRead(DelegatingStore):
    """The timer's first look at the store's wake-up index is slow to come back.

    Its read is taken at once and returned late: the window between a read's
    snapshot and its result, which a real read on another thread has too.
    """

    def __init__(self, inner: SqliteStore) -> None:
        super().__init__(inner)
        self.reading = anyio.Event()
        self.release = anyio.Event()
        self.retrying = anyio.Event()
        self.wake_at: float | None = None

    async def next_wake_at(self, after: float | None = None) -> float | None:
        found = await self.inner.next_wake_at(after)
        if not self.reading.is_set():
            self.reading.set()
            await self.release.wait()
        return found

    async def save(
        self,
        state: SagaState,
        event: Event,
        *,
        consumed: int | None = None,
        deliver: InboxItem | None = None,
    ) -> None:
        await self.inner.save(state, event, consumed=consumed, deliver=deliver)
        if state.wake_at is not None:
            self.wake_at = state.wake_at
            self.retrying.set()


async def test_a_saga_passivating_during_a_timer_sweep_wakes_on_time(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    checkout = build_checkout(ledger, timing=VIRTUAL)
    clock = VirtualClock()
    store = HeldRead(SqliteStore(tmp_path / "sagas.db"))
    retry = (StepPlan(fault=Fault.TRANSIENT, failures=1), *HAPPY[1:])
    ended = False
    async with Runtime(store, sagas=[checkout], clock=clock, keep_warm=0) as rt:
        with anyio.fail_after(10):
            await store.reading.wait()  # the timer's start-up sweep: nothing is due, or waits
            handle = await rt.spawn(checkout, make_order("order-1", retry), saga_id="order-1")
            await store.retrying.wait()  # its first attempt failed: it sleeps until a retry
        assert store.wake_at is not None
        store.release.set()
        clock.set(store.wake_at)
        with anyio.move_on_after(1.0):
            assert await handle.result() == expected_output("order-1")
            ended = True
    assert ended, "the retry never ran: its wake-up was lost"
