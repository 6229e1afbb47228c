"""Properties of the state machine driving code sagas: drawn bodies, drawn outcomes, crashes.

A drawn `Program` (steps, parallel groups, loops, branches on the input, child
sagas, sleeps, failures caught in the body) becomes a real async body. A
simulated driver plays the saga actor: it runs the body through the engine's
own driver (`saga.engine.decide`), persists the stored snapshot (JSON) and the
history, gives every run command a drawn outcome, fires timers, answers for
child sagas, and crashes at drawn moments: it then rebuilds the saga from the
persisted JSON alone (`fold` of the history, checked against the snapshot),
replays the body from the top, and applies `Recovered`.

After every transition and at the end it checks the saga guarantees: only
what may have taken effect is compensated, all of it when the saga ends
compensated, newest group first; no forward step once compensation began;
no action run again once its outcome is durable; the replay never diverges;
the history folds to the snapshot.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saga import (
    CallKind,
    CompensationStatus,
    ErrorInfo,
    FailureKind,
    RetryPolicy,
    Saga,
    SagaContext,
    SagaStatus,
    StepContext,
    StepFailedError,
    StepStatus,
)
from saga.engine import (
    BodyRun,
    ChildEnded,
    CompensationFailed,
    CompensationSucceeded,
    CompensationWaiting,
    Event,
    Finish,
    Recovered,
    RunCompensation,
    RunStep,
    SagaStarted,
    ScheduleWakeup,
    StepFailed,
    StepSucceeded,
    StepWaiting,
    TimerFired,
    decide,
    fold,
    initial_state,
    transition,
)
from saga.store import HistoryEntry, SagaState

T0 = 1_000.0
MAY_HAVE_TAKEN_EFFECT = frozenset({StepStatus.SUCCEEDED, StepStatus.AMBIGUOUS})
_state_decoder = msgspec.json.Decoder(SagaState)
_encode = msgspec.json.Encoder().encode


# -- programs: what a drawn body does -------------------------------------------------


@dataclass(frozen=True)
class Op:
    kind: str  # "step" | "parallel" | "loop" | "branch" | "child" | "sleep"
    name: str = ""
    compensable: bool = False
    catch: bool = False
    """The body catches this op's StepFailedError and carries on (the manual style)."""
    branches: tuple[tuple[str, bool], ...] = ()
    """A parallel group's (name, compensable) branches."""
    times: int = 0
    bit: int = 0
    then: tuple[Op, ...] = ()
    otherwise: tuple[Op, ...] = ()


NAMES = st.sampled_from(["a", "b", "c", "pay", "ship"])


def _ops(depth: int) -> st.SearchStrategy[tuple[Op, ...]]:
    leaf = st.one_of(
        st.builds(
            Op, kind=st.just("step"), name=NAMES, compensable=st.booleans(), catch=st.booleans()
        ),
        st.builds(
            Op,
            kind=st.just("parallel"),
            branches=st.lists(st.tuples(NAMES, st.booleans()), min_size=1, max_size=3).map(tuple),
            catch=st.booleans(),
        ),
        st.builds(Op, kind=st.just("child"), name=st.just("child"), catch=st.booleans()),
        st.builds(Op, kind=st.just("sleep")),
    )
    if depth == 0:
        return st.lists(leaf, min_size=1, max_size=4).map(tuple)
    inner = _ops(depth - 1)
    nested = st.one_of(
        leaf,
        st.builds(Op, kind=st.just("loop"), times=st.integers(1, 3), then=inner),
        st.builds(Op, kind=st.just("branch"), bit=st.integers(0, 2), then=inner, otherwise=inner),
    )
    return st.lists(nested, min_size=1, max_size=4).map(tuple)


PROGRAMS = _ops(2)
INPUTS = st.lists(st.booleans(), min_size=3, max_size=3)


async def _action(ctx: StepContext) -> None:  # the simulation draws outcomes instead
    raise AssertionError("not run by the simulation")


async def _undo(ctx: StepContext, result: Any) -> None:
    raise AssertionError("not run by the simulation")


async def _child_body(ctx: SagaContext, _: Any) -> None:
    return None


CHILD = Saga("child", _child_body)


QUICK = RetryPolicy(maximum_attempts=2, initial_interval=1.0, backoff_coefficient=1.0)


def build(program: tuple[Op, ...]) -> Saga:
    async def run(ctx: SagaContext, ops: tuple[Op, ...], flags: list[bool]) -> None:
        for op in ops:
            if op.kind == "loop":
                for _ in range(op.times):
                    await run(ctx, op.then, flags)
            elif op.kind == "branch":
                await run(ctx, op.then if flags[op.bit] else op.otherwise, flags)
            elif op.kind == "sleep":
                await ctx.sleep(5)
            else:
                try:
                    await _call(ctx, op)
                except StepFailedError:
                    if not op.catch:
                        raise

    async def body(ctx: SagaContext, flags: list[bool]) -> str:
        await run(ctx, program, flags)
        return "done"

    return Saga("drawn", body)


async def _call(ctx: SagaContext, op: Op) -> Any:
    if op.kind == "step":
        return await ctx.step(
            op.name, _action, compensate=_undo if op.compensable else None, retry=QUICK
        )
    if op.kind == "child":
        return await ctx.child(CHILD, None)
    branches = [
        ctx.step(name, _action, compensate=_undo if compensable else None, retry=QUICK)
        for name, compensable in op.branches
    ]
    return await ctx.parallel(*branches)


# -- the simulated driver ----------------------------------------------------------------


class Stop(Exception):
    """The drawn run is over (its budget spent)."""


@dataclass
class Sim:
    saga: Saga
    flags: list[bool]
    data: st.DataObject
    saga_id: str = "s"
    now: float = T0
    state: SagaState = field(init=False)
    run: BodyRun = field(init=False)
    snapshot: bytes = b""
    history: list[HistoryEntry] = field(default_factory=list)
    todo: list[Any] = field(default_factory=list)
    """Commands issued and not yet carried out."""
    children: dict[int, str] = field(default_factory=dict)
    """Child calls started (position -> the child's saga status so far)."""
    compensation_began: bool = False
    compensations_started: list[int] = field(default_factory=list)
    moves: int = 0

    def __post_init__(self) -> None:
        self.state = initial_state(self.saga, self.saga_id)
        self.run = BodyRun(
            self.saga,
            self.saga_id,
            self.flags,
            self.state,
            now=lambda: self.now,
            rng=random.Random(0),
        )
        self.apply(SagaStarted(at=self.now))

    # -- persisting, as a store would --------------------------------------------------

    def apply(self, event: Event) -> None:
        before = self.state
        outcome, event = decide(self.saga, before, event, self.run)
        # The driver goes on from where the machine stopped for the body; the recorded
        # event applied in one go must give the same state and the same commands.
        again = transition(self.saga, before, event)
        assert again.state == outcome.state, "decide and transition disagree on the state"
        assert tuple(again.commands) == tuple(outcome.commands), "... on the commands"
        if outcome.state is not before:
            assert outcome.state.seq == before.seq + 1
            self.history.append(HistoryEntry(outcome.state.seq, event))
            self.snapshot = _encode(outcome.state.stored())
        self.state = outcome.state
        for command in outcome.commands:
            if isinstance(command, RunStep):
                assert not self.compensation_began, "a forward step after compensation began"
                step = self.state.steps[command.step]
                assert step.status is StepStatus.RUNNING, "a run for a step not in flight"
            if isinstance(command, RunCompensation):
                self.check_compensation_order(command.step)
                self.compensation_began = True
                self.compensations_started.append(command.step)
        self.todo = [c for c in outcome.commands if not isinstance(c, Finish | ScheduleWakeup)]
        self.check_folds()

    def check_folds(self) -> None:
        folded = fold(self.saga, self.saga_id, self.history)
        assert folded == self.state, "the history does not fold to the state"
        assert _state_decoder.decode(self.snapshot) == folded.stored()

    def check_compensation_order(self, index: int) -> None:
        state = self.state
        step = state.steps[index]
        call = step.call
        assert call is not None
        assert step.status in MAY_HAVE_TAKEN_EFFECT, "compensating what took no effect"
        assert call.compensable
        mine = index if call.group is None else call.group
        for later, other in enumerate(state.steps):
            other_call = other.call
            assert other_call is not None
            group = later if other_call.group is None else other_call.group
            if group > mine and other.status in MAY_HAVE_TAKEN_EFFECT and other_call.compensable:
                assert other.compensation is not CompensationStatus.NONE, (
                    f"compensation of {index} began before newer group {group} was undone"
                )

    # -- crashes -----------------------------------------------------------------------

    def crash(self) -> None:
        """Lose everything in memory; start again from the persisted JSON."""
        stored = _state_decoder.decode(self.snapshot)
        state = fold(self.saga, self.saga_id, self.history)
        assert state.stored() == stored
        self.state = state
        self.run = BodyRun(
            self.saga, self.saga_id, self.flags, state, now=lambda: self.now, rng=random.Random(0)
        )
        self.run.start()
        assert self.run.diverged is None, self.run.diverged
        self.apply(Recovered(at=self.now, max_recoveries=1000))

    # -- outcomes -------------------------------------------------------------------------

    def draw(self, strategy: st.SearchStrategy[Any], label: str) -> Any:
        self.moves += 1
        if self.moves > 400:
            raise Stop
        return self.data.draw(strategy, label=label)

    def carry_out(self, command: Any) -> Event:
        index, attempt = command.step, command.attempt
        step = self.state.steps[index]
        call = step.call
        assert call is not None
        if isinstance(command, RunStep):
            if call.kind is CallKind.CHILD:
                self.children[index] = "running"
                return StepWaiting(at=self.now, step=index, attempt=attempt)
            outcome = self.draw(
                st.sampled_from(["ok", "transient", "definitive", "ambiguous"]), "outcome"
            )
            if outcome == "ok":
                return StepSucceeded(
                    at=self.now, step=index, attempt=attempt, result=msgspec.Raw(b'"r"')
                )
            kind = {
                "transient": FailureKind.TRANSIENT,
                "definitive": FailureKind.DEFINITIVE,
                "ambiguous": FailureKind.AMBIGUOUS,
            }[outcome]
            return StepFailed(
                at=self.now,
                step=index,
                attempt=attempt,
                error=ErrorInfo(type="E", message=outcome),
                kind=kind,
                jitter=0.5,
            )
        if call.kind is CallKind.CHILD:
            self.children[index] = "compensating"
            return CompensationWaiting(at=self.now, step=index, attempt=attempt)
        if self.draw(st.booleans(), "compensation fails transiently"):
            return CompensationFailed(
                at=self.now,
                step=index,
                attempt=attempt,
                error=ErrorInfo(type="E", message="503"),
                kind=FailureKind.TRANSIENT,
                jitter=0.5,
            )
        return CompensationSucceeded(at=self.now, step=index, attempt=attempt)

    def child_reports(self) -> Event | None:
        """A child that is running or compensating may end now."""
        for index, phase in list(self.children.items()):
            step = self.state.steps[index]
            call = step.call
            assert call is not None
            assert call.target is not None
            if phase == "running" and step.status is StepStatus.WAITING:
                status = self.draw(
                    st.sampled_from(
                        [SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED]
                    ),
                    "child ends",
                )
                del self.children[index]
                return ChildEnded(
                    at=self.now,
                    step=index,
                    child=call.target,
                    status=status,
                    result=msgspec.Raw(b"1"),
                )
            if phase == "compensating" and step.compensation is CompensationStatus.WAITING:
                del self.children[index]
                return ChildEnded(
                    at=self.now, step=index, child=call.target, status=SagaStatus.COMPENSATED
                )
        return None

    def step_once(self) -> bool:
        """One move; False once the saga has ended."""
        if self.state.status.is_terminal:
            return False
        if self.draw(st.integers(0, 9), "crash?") == 0:
            self.crash()
            return True
        if self.todo:
            command = self.todo.pop(0)
            todo, self.todo = self.todo, []
            self.apply(self.carry_out(command))
            self.todo = todo + self.todo
            return True
        report = self.child_reports()
        if report is not None:
            self.apply(report)
            return True
        wake_at = self.state.wake_at
        if wake_at is not None:
            self.now = max(self.now, wake_at)
            self.apply(TimerFired(at=self.now))
            return True
        raise AssertionError(f"stuck: {self.state.status} with nothing to do")


def check_end(sim: Sim) -> None:
    state = sim.state
    for index, step in enumerate(state.steps):
        call = step.call
        assert call is not None
        if step.compensation is not CompensationStatus.NONE:
            assert step.status in MAY_HAVE_TAKEN_EFFECT, f"{index} compensated, took no effect"
            assert call.compensable
        undone = state.status is SagaStatus.COMPENSATED and call.compensable
        if undone and step.status in MAY_HAVE_TAKEN_EFFECT:
            assert step.compensation is CompensationStatus.COMPENSATED, f"{index} not undone"
        if step.status in (StepStatus.FAILED, StepStatus.PENDING):
            assert index not in sim.compensations_started
    if state.status is SagaStatus.COMPLETED:
        assert bytes(state.output) == b'"done"'
        assert not sim.compensation_began


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(program=PROGRAMS, flags=INPUTS, data=st.data())
def test_drawn_code_sagas_keep_every_compensation_guarantee_through_crashes(
    program: tuple[Op, ...], flags: list[bool], data: st.DataObject
) -> None:
    sim = Sim(build(program), flags, data)
    try:
        while sim.step_once():
            pass
    except Stop:
        pass
    check_end(sim)


def test_the_simulation_reaches_every_end() -> None:
    """The driver above is not vacuous: its outcomes reach completion and compensation."""
    program = (Op(kind="step", name="a", compensable=True), Op(kind="step", name="b"))

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        sim = Sim(build(program), [False, False, False], data)
        try:
            while sim.step_once():
                pass
        except Stop:
            return
        ends.add(sim.state.status)

    ends: set[SagaStatus] = set()
    run()
    assert {SagaStatus.COMPLETED, SagaStatus.COMPENSATED} <= ends


@pytest.mark.parametrize("crash_at", range(12))
def test_a_crash_at_every_transition_of_a_loop_with_a_group_replays_the_same_calls(
    crash_at: int,
) -> None:
    """Deterministic: crash after transition n of a fixed successful run, for each n."""
    program = (
        Op(kind="loop", times=2, then=(Op(kind="step", name="a", compensable=True),)),
        Op(kind="parallel", branches=(("b", True), ("c", False))),
        Op(kind="child", name="child"),
        Op(kind="sleep"),
    )

    class Script:
        """A data object that answers every draw: no crash but at `crash_at`, all succeed."""

        def __init__(self) -> None:
            self.transitions = 0

        def draw(self, strategy: st.SearchStrategy[Any], label: str | None = None) -> Any:
            if label == "crash?":
                self.transitions += 1
                return 0 if self.transitions == crash_at + 1 else 1
            if label == "outcome":
                return "ok"
            if label == "child ends":
                return SagaStatus.COMPLETED
            return False

    sim = Sim(build(program), [True, True, True], Script())  # type: ignore[arg-type]
    while sim.step_once():
        pass
    assert sim.state.status is SagaStatus.COMPLETED
    labels = [step.call.label for step in sim.state.steps if step.call is not None]
    assert labels == ["a", "a#2", "b", "c", "child", "sleep"]
