"""`fault_injection(...)`: the kit's entry point, and `FaultInjection`, what it returns."""

from __future__ import annotations

import asyncio
import hashlib
import sys
import tempfile
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

import anyio
import hypothesis
from hypothesis import HealthCheck
from hypothesis import strategies as st

from saga import Saga

from ._errors import InvariantViolation
from ._harness import Example, Limits
from ._invariants import check_report
from ._plan import FAULT_KINDS, Crash, FaultKind, FaultPlan, StepFault, fault_plans, shape_of
from ._report import FaultReport

S = TypeVar("S")
I = TypeVar("I")  # noqa: E741 - the input type, as in Saga's input_type

Invariant = Callable[[S, FaultReport], None]
"""`invariant(services, report)`: raises `AssertionError` when the services are inconsistent."""


class FaultInjection(Generic[S, I]):
    """A saga under test, its services and invariants; `check` runs it under drawn faults.

    Built by `fault_injection`. Each example gets fresh services, a fresh
    SQLite file, a `VirtualClock` and a drawn `FaultPlan`; it spawns one to
    `sagas_per_example` sagas with drawn inputs, runs them to their end
    through the faults (crashes reopen a new runtime on the same file and
    services), then checks the kit's invariants and yours.
    """

    def __init__(
        self,
        saga: Saga | Callable[[S], Saga],
        *,
        inputs: st.SearchStrategy[I],
        services: Callable[[], S],
        invariants: Sequence[Invariant[S]] = (),
        sagas_per_example: int = 3,
        max_faults: int = 6,
        max_crashes: int = 4,
        faults: Collection[FaultKind] = FAULT_KINDS,
    ) -> None:
        if sagas_per_example < 1:
            raise ValueError("sagas_per_example must be >= 1")
        if max_faults < 0 or max_crashes < 0:
            raise ValueError("max_faults and max_crashes must be >= 0")
        self._saga = saga
        self._inputs = inputs
        self._services = services
        self._invariants = tuple(invariants)
        self._sagas_per_example = sagas_per_example
        self._limits = Limits(max_crashes=max_crashes)
        probe = self._build(services())
        wrapped = [step for step in probe.steps if step.wait is None]
        self._name = probe.name
        self._steps = frozenset(step.name for step in wrapped)
        self._compensable = frozenset(s.name for s in wrapped if s.compensate is not None)
        self._is_code = probe.body is not None
        self._max_faults = max_faults
        self._kinds = faults
        shape = shape_of([s.name for s in wrapped], self._compensable)
        self._plans = (
            []  # a code saga's steps are known once it runs: see `_plans_for`
            if self._is_code
            else [
                fault_plans(shape, sagas=count, max_faults=max_faults, kinds=faults)
                for count in range(1, sagas_per_example + 1)
            ]
        )

    def _plans_for(self, inputs: Sequence[I]) -> st.SearchStrategy[FaultPlan]:
        """Plans for sagas of `inputs`. A code saga is rehearsed first, without faults, to
        learn the steps its body calls for these inputs (its labels, `name#k` in loops)."""
        if not self._is_code:
            return self._plans[len(inputs) - 1]
        seen = self._rehearse(inputs)
        if not seen:
            return st.just(FaultPlan())
        shape = shape_of(list(seen), [label for label, undo in seen.items() if undo])
        return fault_plans(shape, sagas=len(inputs), max_faults=self._max_faults, kinds=self._kinds)

    def _rehearse(self, inputs: Sequence[I]) -> dict[str, bool]:
        saga = self._build(self._services())
        with tempfile.TemporaryDirectory(prefix="sagaloop-rehearsal-") as tmp:
            example = Example(saga, inputs, FaultPlan(), Path(tmp) / "sagas.db", self._limits)
            anyio.run(example.run, backend="asyncio")
        return example.steps_seen

    def _build(self, services: S) -> Saga:
        saga = self._saga if isinstance(self._saga, Saga) else self._saga(services)
        if not isinstance(saga, Saga):
            raise TypeError(f"expected a Saga or a callable returning one, got {saga!r}")
        return saga

    def check(
        self,
        max_examples: int = 50,
        *,
        seed: int | None = None,
        settings: hypothesis.settings | None = None,
    ) -> None:
        """Run `max_examples` Hypothesis examples; raise on the first (shrunk) violation.

        Call it from a synchronous test (each example runs its own event
        loop). `seed` fixes Hypothesis's seed; `settings` is a base
        `hypothesis.settings` (e.g. a profile, or `phases` without shrinking).
        Raises `InvariantViolation` with the failing sagas' timelines;
        Hypothesis prints the falsifying draws, `inputs` and `plan`, which
        `run(inputs, plan)` replays.
        """
        inputs = st.lists(self._inputs, min_size=1, max_size=self._sagas_per_example)

        def fault_injection_example(data: st.DataObject) -> None:
            drawn = data.draw(inputs, label="inputs")
            self.run(drawn, data.draw(self._plans_for(drawn), label="plan"))

        test = hypothesis.given(data=st.data())(fault_injection_example)
        test = hypothesis.settings(
            settings,
            max_examples=max_examples,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )(test)
        if seed is not None:
            test = hypothesis.seed(seed)(test)
        # Hypothesis keys its example database by the test's source; make it per call site.
        caller = sys._getframe(1).f_code  # noqa: SLF001 (CPython's documented frame hook)
        where = f"{caller.co_filename}:{caller.co_name}:{self._name}"
        inner = getattr(getattr(test, "hypothesis", None), "inner_test", None)
        if inner is not None:
            # Hypothesis has no public hook for the database key.
            digest = hashlib.sha256(where.encode()).digest()
            inner._hypothesis_internal_add_digest = digest  # noqa: SLF001
        test()

    def run(self, inputs: Sequence[I], plan: FaultPlan | None = None) -> FaultReport:
        """Run one example: sagas with `inputs` (saga i gets `inputs[i]`) under `plan`.

        Returns the report when every invariant holds. Raises
        `InvariantViolation` otherwise, `ValueError` for a plan naming a step
        the saga does not have (or cannot wrap), `RuntimeError` inside a running event loop.
        """
        plan = plan if plan is not None else FaultPlan()
        for fault in plan.faults:
            if self._is_code:
                break  # a code saga's step labels are known once it runs
            if isinstance(fault, StepFault | Crash) and fault.step is not None:
                known = self._compensable if fault.compensating else self._steps
                if isinstance(fault, StepFault) and fault.kind == "outage" and fault.compensating:
                    raise ValueError(f"{fault!r}: an outage hits actions only")
                if fault.step not in known:
                    raise ValueError(
                        f"{fault!r}: saga {self._name!r} has no such "
                        f"{'compensation' if fault.compensating else 'step'}"
                    )
        if not inputs:
            raise ValueError("give at least one input")
        if _in_event_loop():
            raise RuntimeError(
                "FaultInjection.run and .check start their own event loop: call them from a "
                "synchronous test (def, not async def)"
            )
        services = self._services()
        saga = self._build(services)
        with tempfile.TemporaryDirectory(prefix="sagaloop-faults-") as tmp:
            example = Example(saga, inputs, plan, Path(tmp) / "sagas.db", self._limits)
            report = anyio.run(example.run, backend="asyncio")
        self.verify(services, report)
        return report

    def verify(self, services: S, report: FaultReport) -> None:
        """Check the kit's invariants, then the user's; raise `InvariantViolation` on the first."""
        problems = check_report(report)
        if problems:
            text = "\n".join(line for found in problems.values() for line in found)
            raise InvariantViolation(report.explain(text, problems), report)
        for invariant in self._invariants:
            name = getattr(invariant, "__name__", repr(invariant))
            try:
                invariant(services, report)
            except Exception as exc:
                text = f"invariant {name} failed: {type(exc).__name__}: {exc}"
                raise InvariantViolation(report.explain(text, report.saga_ids), report) from exc


@overload
def fault_injection(
    saga: Saga,
    *,
    inputs: st.SearchStrategy[I],
    services: None = None,
    invariants: Sequence[Invariant[None]] = (),
    sagas_per_example: int = 3,
    max_faults: int = 6,
    max_crashes: int = 4,
    faults: Collection[FaultKind] = FAULT_KINDS,
) -> FaultInjection[None, I]: ...


@overload
def fault_injection(
    saga: Saga | Callable[[S], Saga],
    *,
    inputs: st.SearchStrategy[I],
    services: Callable[[], S],
    invariants: Sequence[Invariant[S]] = (),
    sagas_per_example: int = 3,
    max_faults: int = 6,
    max_crashes: int = 4,
    faults: Collection[FaultKind] = FAULT_KINDS,
) -> FaultInjection[S, I]: ...


def fault_injection(
    saga: Saga | Callable[[Any], Saga],
    *,
    inputs: st.SearchStrategy[Any],
    services: Callable[[], Any] | None = None,
    invariants: Sequence[Invariant[Any]] = (),
    sagas_per_example: int = 3,
    max_faults: int = 6,
    max_crashes: int = 4,
    faults: Collection[FaultKind] = FAULT_KINDS,
) -> FaultInjection[Any, Any]:
    """Put a saga under fault injection; call `.check()` on the result in a test.

    `saga` is a `Saga`, or `build(services) -> Saga` when its steps are
    bound to the services. `inputs` draws one saga input. `services` makes
    fresh fake services for each example: they play the outside world and
    survive the simulated crashes. `invariants` are your checks,
    `invariant(services, report)`, raising `AssertionError`. Up to
    `max_faults` faults of the kinds in `faults` are drawn per example, of
    which at most `max_crashes` crashes fire.

    Raises `ValueError` for bad limits or unknown fault kinds.
    """
    return FaultInjection(
        saga,
        inputs=inputs,
        services=services if services is not None else _no_services,
        invariants=invariants,
        sagas_per_example=sagas_per_example,
        max_faults=max_faults,
        max_crashes=max_crashes,
        faults=faults,
    )


def _no_services() -> None:
    return None


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
