"""The fault-injection kit itself: each fault really happens and shows in the report, the
harness survives crashes, suspensions and failed writes, and broken sagas are caught.

Most tests replay one explicit `FaultPlan` with `FaultInjection.run`, so each
asserts exactly what that fault must do. A few run `check()` to show that
Hypothesis finds a planted bug on its own.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runtime.testing
from demo.checkout import FakeServices, build_checkout, order
from runtime import SagaStatus
from runtime.testing import (
    FAULT_KINDS,
    Crash,
    FaultInjection,
    FaultPlan,
    FaultReport,
    InvariantViolation,
    StepFault,
    StoreFault,
    fault_injection,
)
from runtime.testing._harness import Limits
from runtime.testing._journal import Call
from runtime.testing._plan import STORE_FAULT_KINDS
from saga import NonRetryableError, RetryPolicy, Saga, Sleep, Step, StepContext, StepStatus
from saga.engine import CompensationFailed, Recovered, Resumed, StepFailed, Suspended

REPO = Path(__file__).resolve().parents[2]
BOOK = order("o1", ("book", 1))
DECLINED = order("o2", ("book", 1), total_cents=250_000)  # the card is declined


def checkout_kit(**options: Any) -> FaultInjection[FakeServices, Any]:
    return fault_injection(build_checkout, inputs=st.just(BOOK), services=FakeServices, **options)


def events(report: FaultReport, saga_id: str = "checkout-0") -> list[str]:
    return [type(entry.event).__name__ for entry in report.sagas[saga_id].history]


def calls(report: FaultReport, step: str, kind: str = "action") -> list[Call]:
    return [c for c in report.calls if c.step == step and c.kind == kind]


def timeline(report: FaultReport, saga_id: str = "checkout-0") -> str:
    return "\n".join(report.timeline(saga_id))


# -- step faults -----------------------------------------------------------------------


def test_a_plan_without_faults_runs_every_saga_to_its_end() -> None:
    report = checkout_kit().run([BOOK, DECLINED])
    assert report.status("checkout-0") is SagaStatus.COMPLETED
    assert report.status("checkout-1") is SagaStatus.COMPENSATED
    assert (report.fired, report.crashes, report.runtimes) == ((), 0, 1)
    assert [c.step for c in report.calls if c.saga_id == "checkout-0"] == [
        "create_order",
        "charge_payment",
        "reserve_inventory",
        "send_confirmation",
    ]
    assert all(c.took_effect for c in report.calls_of("checkout-0"))


def test_transient_fault_fails_the_attempt_before_the_real_call() -> None:
    fault = StepFault(saga=0, step="charge_payment", attempt=1, kind="transient")
    report = checkout_kit().run([BOOK], FaultPlan(fault))
    assert report.fired == (fault,)
    first, second = calls(report, "charge_payment")
    assert (first.attempt, first.took_effect, first.fault) == (1, False, "transient")
    assert "InjectedTransientError" in str(first.error)
    assert (second.attempt, second.took_effect) == (2, True)
    assert report.status("checkout-0") is SagaStatus.COMPLETED
    assert report.sagas["checkout-0"].steps[1].attempts == 2
    assert "FAULT 'transient' injected into action charge_payment attempt 1" in timeline(report)


def test_permanent_fault_fails_the_step_definitively_and_compensates_the_earlier_ones() -> None:
    fault = StepFault(saga=0, step="charge_payment", attempt=1, kind="permanent")
    report = checkout_kit().run([BOOK], FaultPlan(fault))
    info = report.sagas["checkout-0"]
    assert info.status is SagaStatus.COMPENSATED
    assert info.steps[1].status is StepStatus.FAILED
    assert info.failure is not None
    assert info.failure.type == "runtime.testing.InjectedPermanentError"
    assert [c.step for c in report.calls if c.kind == "compensation"] == ["create_order"]
    assert calls(report, "charge_payment")[0].took_effect is False


def test_permanent_fault_is_not_injected_once_the_step_may_have_taken_effect() -> None:
    plan = FaultPlan(
        StepFault(saga=0, step="charge_payment", attempt=1, kind="effect_then_error"),
        StepFault(saga=0, step="charge_payment", attempt=2, kind="permanent"),
    )
    report = checkout_kit().run([BOOK], plan)
    assert report.status("checkout-0") is SagaStatus.COMPLETED  # attempt 2 ran for real
    assert "fault 'permanent' not injected into action charge_payment attempt 2" in timeline(report)


def test_timeout_fault_hangs_after_the_effect_until_the_shortened_timeout() -> None:
    fault = StepFault(saga=0, step="charge_payment", attempt=1, kind="timeout")
    report = checkout_kit().run([BOOK], FaultPlan(fault))
    failed = [
        e.event for e in report.sagas["checkout-0"].history if isinstance(e.event, StepFailed)
    ]
    assert [f.error.timed_out for f in failed] == [True]
    first, second = calls(report, "charge_payment")
    assert (first.took_effect, first.fault) == (True, "timeout")
    assert (second.attempt, second.took_effect) == (2, True)  # found the charge by its key
    assert report.status("checkout-0") is SagaStatus.COMPLETED


def test_effect_then_error_fault_raises_after_the_real_call() -> None:
    fault = StepFault(saga=0, step="reserve_inventory", attempt=1, kind="effect_then_error")
    report = checkout_kit().run([BOOK], FaultPlan(fault))
    first, second = calls(report, "reserve_inventory")
    assert first.took_effect is True
    assert "InjectedTransientError" in str(first.error)
    assert (second.attempt, second.took_effect) == (2, True)
    assert report.status("checkout-0") is SagaStatus.COMPLETED


def test_duplicate_fault_delivers_the_call_twice_with_the_same_context() -> None:
    fault = StepFault(saga=0, step="charge_payment", attempt=1, kind="duplicate")
    report = checkout_kit().run([BOOK], FaultPlan(fault))
    first, second = calls(report, "charge_payment")
    assert (first.attempt, second.attempt) == (1, 1)
    assert first.idempotency_key == second.idempotency_key == "checkout-0:charge_payment"
    assert (first.took_effect, second.took_effect) == (True, True)
    assert report.sagas["checkout-0"].steps[1].attempts == 1
    assert report.status("checkout-0") is SagaStatus.COMPLETED


def test_an_outage_fails_every_attempt_until_the_step_gives_up() -> None:
    plan = FaultPlan(
        StepFault(saga=0, step="reserve_inventory", attempt=1, kind="effect_then_error"),
        StepFault(saga=0, step="reserve_inventory", attempt=2, kind="outage"),
    )
    services = FakeServices()
    kit = fault_injection(build_checkout, inputs=st.just(BOOK), services=lambda: services)
    report = kit.run([BOOK], plan)
    reserve = calls(report, "reserve_inventory")
    assert [(c.attempt, c.took_effect) for c in reserve] == [(1, True), (2, False), (3, False)]
    assert [c.fault for c in reserve] == ["effect_then_error", "outage", "outage"]
    info = report.sagas["checkout-0"]
    assert info.steps[2].status is StepStatus.AMBIGUOUS  # retries exhausted: it may have run
    assert info.status is SagaStatus.COMPENSATED
    undo = calls(report, "reserve_inventory", "compensation")
    assert [c.given_result for c in undo] == [False]  # ambiguous: given None...
    assert services.stock["book"] == 10  # ...and found the reservation by its key


def test_faults_hit_compensations_too() -> None:
    plan = FaultPlan(
        StepFault(saga=0, step="create_order", attempt=1, kind="transient", compensating=True),
        StepFault(saga=0, step="create_order", attempt=2, kind="duplicate", compensating=True),
    )
    report = checkout_kit().run([DECLINED], plan)
    undo = calls(report, "create_order", "compensation")
    assert [(c.attempt, c.took_effect, c.fault) for c in undo] == [
        (1, False, "transient"),
        (2, True, "duplicate"),
        (2, True, "duplicate"),
    ]
    assert all(c.given_result for c in undo)
    info = report.sagas["checkout-0"]
    assert info.status is SagaStatus.COMPENSATED
    assert info.steps[0].compensation_attempts == 2


def test_permanent_compensation_fault_ends_the_saga_failed() -> None:
    fault = StepFault(saga=0, step="create_order", attempt=1, kind="permanent", compensating=True)
    report = checkout_kit().run([DECLINED], FaultPlan(fault))
    assert report.status("checkout-0") is SagaStatus.FAILED
    assert "CompensationFailed" in events(report)


# -- crashes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "runs"),
    [
        ("before_call", [False, True]),  # never called, then run on recovery
        ("after_effect", [True, True]),  # called, outcome lost, run again
        ("after_record", [True]),  # outcome durable: never run again
    ],
)
def test_a_crash_abandons_the_runtime_and_a_new_one_carries_on(at: Any, runs: list[bool]) -> None:
    crash = Crash(saga=0, at=at, step="charge_payment", attempt=1)
    report = checkout_kit().run([BOOK], FaultPlan(crash))
    assert report.fired == (crash,)
    assert (report.crashes, report.runtimes) == (1, 2)
    assert [c.took_effect for c in calls(report, "charge_payment")] == runs
    assert all(c.attempt == 1 for c in calls(report, "charge_payment"))  # a crash costs none
    info = report.sagas["checkout-0"]
    assert info.status is SagaStatus.COMPLETED
    assert info.steps[1].attempts == 1
    assert "Recovered" in events(report)
    text = timeline(report)
    assert "CRASH #1" in text
    assert "runtime #2 opened" in text


@pytest.mark.parametrize("at", ["before_call", "after_effect", "after_record"])
def test_a_crash_during_a_compensation(at: Any) -> None:
    crash = Crash(saga=0, at=at, step="create_order", attempt=1, compensating=True)
    report = checkout_kit().run([DECLINED], FaultPlan(crash))
    assert report.crashes == 1
    undo = calls(report, "create_order", "compensation")
    assert len(undo) == (1 if at == "after_record" else 2)
    assert report.status("checkout-0") is SagaStatus.COMPENSATED


def test_a_crash_during_recovery_itself() -> None:
    plan = FaultPlan(
        Crash(saga=0, at="after_effect", step="reserve_inventory", attempt=1),
        Crash(saga=0, at="recovery"),
    )
    report = checkout_kit().run([BOOK], plan)
    assert (report.crashes, report.runtimes) == (2, 3)
    assert events(report).count("Recovered") == 2
    assert report.sagas["checkout-0"].steps[2].attempts == 1
    assert report.status("checkout-0") is SagaStatus.COMPLETED


def test_crashes_stop_at_the_cap() -> None:
    plan = FaultPlan(
        *(Crash(saga=0, at="after_effect", step=s, attempt=1) for s in ("create_order",)),
        Crash(saga=0, at="after_record", step="charge_payment", attempt=1),
        Crash(saga=0, at="before_call", step="reserve_inventory", attempt=1),
        Crash(saga=0, at="before_call", step="send_confirmation", attempt=1),
    )
    report = checkout_kit(max_crashes=2).run([BOOK], plan)
    assert (report.crashes, report.runtimes) == (2, 3)
    assert len(report.fired) == 2
    assert report.status("checkout-0") is SagaStatus.COMPLETED


# -- store faults ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("write_failed", "failed"),
        ("ack_lost", "acknowledgement was lost"),
        ("db_locked", "database is locked"),
        ("disk_full", "database or disk is full"),
    ],
)
def test_a_store_fault_crashes_the_actor_and_its_supervisor_restarts_it(
    kind: Any, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    fault = StoreFault(saga=0, write=3, kind=kind)  # the record of charge_payment's success
    with caplog.at_level(logging.WARNING, logger="actors"):
        report = checkout_kit().run([BOOK], FaultPlan(fault))
    assert report.fired == (fault,)
    assert report.runtimes == 1  # not a crash of the runtime: of one actor
    crashed = [r.getMessage() for r in caplog.records if "crashed" in r.getMessage()]
    assert len(crashed) == 1, crashed
    assert message in crashed[0]
    charges = calls(report, "charge_payment")
    # A lost write reran the step (same attempt); a lost acknowledgement did not.
    assert len(charges) == (1 if kind == "ack_lost" else 2)
    # Either way the restarted actor recovers: an intent is in flight in the snapshot.
    assert events(report).count("Recovered") == 1
    assert report.status("checkout-0") is SagaStatus.COMPLETED
    assert f"store fault {kind!r}" in timeline(report)


def test_repeated_store_faults_suspend_the_saga_and_the_harness_resumes_it() -> None:
    plan = FaultPlan(*(StoreFault(saga=0, write=w, kind="db_locked") for w in (2, 3, 4)))
    report = checkout_kit().run([BOOK], plan)
    assert report.resumed == ("checkout-0",)
    names = events(report)
    assert names.index("Suspended") < names.index("Resumed")
    suspended = next(
        e.event for e in report.sagas["checkout-0"].history if isinstance(e.event, Suspended)
    )
    assert "database is locked" in suspended.reason
    assert report.status("checkout-0") is SagaStatus.COMPLETED
    text = timeline(report)
    assert "the harness resumes it" in text
    assert "resumed by an operator" in text


def test_a_failed_creation_makes_spawn_raise_and_the_harness_spawns_again() -> None:
    report = checkout_kit().run([BOOK], FaultPlan(StoreFault(saga=0, write=1, kind="disk_full")))
    text = timeline(report)
    assert "spawn raised" in text
    assert "spawn acknowledged" in text
    assert events(report)[0] == "SagaStarted"
    assert report.status("checkout-0") is SagaStatus.COMPLETED


# -- time ----------------------------------------------------------------------------------


@dataclass
class Parcel:
    """A fake courier: deduplicates by key."""

    booked: dict[str, int] = field(default_factory=dict)
    sent: list[str] = field(default_factory=list)

    async def book(self, ctx: StepContext, weight: int) -> int:
        self.booked.setdefault(ctx.idempotency_key, weight)
        return weight

    async def cancel(self, ctx: StepContext, weight: int, booked: int | None) -> None:
        self.booked.pop(ctx.idempotency_key.removesuffix(":compensate"), None)

    async def send(self, ctx: StepContext, weight: int) -> None:
        if ctx.idempotency_key not in self.sent:
            self.sent.append(ctx.idempotency_key)


def build_shipping(parcel: Parcel) -> Saga:
    slow = RetryPolicy(initial_interval=30.0)
    return Saga(
        "shipping",
        [
            Step("book", parcel.book, compensate=parcel.cancel, retry=slow),
            Sleep("cool_off", seconds=3 * 86_400.0),
            Step("send", parcel.send, retry=slow),
        ],
        input_type=int,
    )


def test_sleeps_and_retry_backoffs_pass_on_virtual_time() -> None:
    kit = fault_injection(build_shipping, inputs=st.just(2), services=Parcel)
    plan = FaultPlan(StepFault(saga=0, step="send", attempt=1, kind="transient"))
    report = kit.run([2], plan)
    info = report.sagas["shipping-0"]
    assert info.status is SagaStatus.COMPLETED
    assert info.updated_at - info.started_at >= 3 * 86_400 + 30 * 0.9  # the sleep, the backoff
    assert report.calls_of("shipping-0", "cool_off") == []  # waiting steps are not wrapped


# -- broken sagas are caught ---------------------------------------------------------------


@dataclass
class Bank:
    """A fake bank that deduplicates payments by idempotency key, as real ones do."""

    paid: dict[str, int] = field(default_factory=dict)
    refunded: Counter[str] = field(default_factory=Counter)

    async def pay(self, ctx: StepContext, amount: int) -> int:
        self.paid.setdefault(ctx.idempotency_key, amount)
        return amount

    async def refund(self, ctx: StepContext, amount: int, paid: int | None) -> None:
        key = ctx.idempotency_key.removesuffix(":compensate")
        if self.paid.pop(key, None) is not None:
            self.refunded[key] += 1

    async def audit(self, ctx: StepContext, amount: int) -> None:
        if amount > 1000:
            raise Flagged(f"{amount} needs a human")


class Flagged(NonRetryableError):
    """The audit refused the transfer."""


class DoubleRefundBank(Bank):
    """BUG: refunds on every call, not once per payment."""

    async def refund(self, ctx: StepContext, amount: int, paid: int | None) -> None:
        key = ctx.idempotency_key.removesuffix(":compensate")
        self.paid.pop(key, None)
        self.refunded[key] += 1


class DuplicateDecliningBank(Bank):
    """BUG: a replayed payment is declined "as a duplicate" instead of answered."""

    async def pay(self, ctx: StepContext, amount: int) -> int:
        if ctx.idempotency_key in self.paid:
            raise Flagged("duplicate payment")
        return await super().pay(ctx, amount)


def build_transfer(bank: Bank) -> Saga:
    fast = RetryPolicy(initial_interval=0.1)
    return Saga(
        "transfer",
        [
            Step("pay", bank.pay, compensate=bank.refund, retry=fast),
            Step("audit", bank.audit, retry=fast),
        ],
        input_type=int,
    )


def refunded_at_most_once(bank: Bank, report: FaultReport) -> None:
    twice = {key: n for key, n in bank.refunded.items() if n > 1}
    assert not twice, f"refunded more than once: {twice}"


def transfer_kit(bank: type[Bank], **options: Any) -> FaultInjection[Bank, int]:
    return fault_injection(
        build_transfer,
        inputs=st.integers(1, 2000),
        services=bank,
        invariants=[refunded_at_most_once],
        **options,
    )


def test_a_correct_bank_passes_the_plan_that_breaks_the_double_refund() -> None:
    crash = Crash(saga=0, at="after_effect", step="pay", attempt=1, compensating=True)
    report = transfer_kit(Bank).run([1500], FaultPlan(crash))
    assert report.status("transfer-0") is SagaStatus.COMPENSATED
    assert len(calls(report, "pay", "compensation")) == 2


def test_a_double_refund_is_caught_with_the_timeline() -> None:
    crash = Crash(saga=0, at="after_effect", step="pay", attempt=1, compensating=True)
    with pytest.raises(InvariantViolation) as caught:
        transfer_kit(DoubleRefundBank).run([1500], FaultPlan(crash))
    text = str(caught.value)
    assert text.startswith("invariant refunded_at_most_once failed")
    assert "refunded more than once: {'transfer-0:pay': 2}" in text
    assert "plan: FaultPlan(Crash(saga=0, at='after_effect', step='pay'" in text
    assert "saga transfer-0 (compensated), input 1500:" in text
    lines = text.splitlines()
    crash_line = next(i for i, line in enumerate(lines) if "CRASH #1" in line)
    undo = [i for i, line in enumerate(lines) if "call: compensation of pay attempt 1" in line]
    assert len(undo) == 2
    assert undo[0] < crash_line < undo[1]
    report = caught.value.report
    assert isinstance(report, FaultReport)
    assert report.crashes == 1


def test_check_finds_the_double_refund_and_shrinks_it() -> None:
    # Step faults and crashes only: a smaller search that still finds it, in seconds.
    kinds = [k for k in FAULT_KINDS if k not in STORE_FAULT_KINDS]
    kit = transfer_kit(DoubleRefundBank, sagas_per_example=2, faults=kinds)
    with pytest.raises(InvariantViolation, match="refunded more than once") as caught:
        kit.check(max_examples=300, seed=1, settings=settings(database=None))
    report = caught.value.report
    assert report is not None
    # Shrunk to one saga, one fault: whatever made its refund run a second time.
    assert report.saga_ids == ("transfer-0",)
    assert len(report.plan.faults) == 1
    refunds = [c for c in report.calls_of("transfer-0", "pay", "compensation") if c.took_effect]
    assert len(refunds) == 2


def test_a_definitive_failure_after_an_effect_is_caught_as_a_leak() -> None:
    fault = StepFault(saga=0, step="pay", attempt=1, kind="effect_then_error")
    with pytest.raises(InvariantViolation) as caught:
        transfer_kit(DuplicateDecliningBank).run([10], FaultPlan(fault))
    text = str(caught.value)
    assert "transfer-0: step pay failed definitively (so it is never compensated), yet " in text
    assert "attempt(s) [1] took effect: that effect leaks" in text
    assert "saga transfer-0 (compensated)" in text


def test_a_failing_user_invariant_reports_every_saga() -> None:
    def every_transfer_is_paid(bank: Bank, report: FaultReport) -> None:
        unpaid = [sid for sid in report.saga_ids if f"{sid}:pay" not in bank.paid]
        assert not unpaid, f"not paid: {unpaid}"

    kit = fault_injection(
        build_transfer, inputs=st.just(5), services=Bank, invariants=[every_transfer_is_paid]
    )
    with pytest.raises(InvariantViolation) as caught:
        kit.run([5, 1200, 999])
    text = str(caught.value)
    assert text.startswith(
        "invariant every_transfer_is_paid failed: AssertionError: not paid: ['transfer-1']"
    )
    for saga_id in ("transfer-0", "transfer-1", "transfer-2"):
        status = "compensated" if saga_id == "transfer-1" else "completed"
        assert f"saga {saga_id} ({status})" in text


# -- the kit's own invariants fire on a report that breaks them ----------------------------


def _compensated_report() -> tuple[FaultReport, FaultInjection[Bank, int]]:
    kit = transfer_kit(Bank)
    report = kit.run([1500])
    assert report.status("transfer-0") is SagaStatus.COMPENSATED
    return report, kit


def _moved(call: Call, order: int) -> Call:
    return dataclasses.replace(call, order=order)


def _tamper(report: FaultReport, name: str) -> FaultReport:
    pay, audit, refund = report.calls
    last = max(c.order for c in report.calls) + 100
    match name:
        case "forward after compensation":
            return dataclasses.replace(report, calls=(*report.calls, _moved(audit, last)))
        case "compensation never called":
            return dataclasses.replace(report, calls=(pay, audit))
        case "succeeded without effect":
            undone = dataclasses.replace(pay, took_effect=False)
            return dataclasses.replace(report, calls=(undone, audit, refund))
        case "ran again after durable success":
            return dataclasses.replace(report, calls=(*report.calls, _moved(pay, last)))
        case "compensation given none":
            blind = dataclasses.replace(refund, given_result=False)
            return dataclasses.replace(report, calls=(pay, audit, blind))
        case "snapshot differs from history":
            odd = msgspec.structs.replace(report.snapshots["transfer-0"], recoveries=7)
            return dataclasses.replace(report, snapshots={"transfer-0": odd})
        case "saga lost":
            return dataclasses.replace(report, sagas={}, snapshots={})
    raise AssertionError(name)


@pytest.mark.parametrize(
    ("tampering", "message"),
    [
        ("forward after compensation", "ran after compensation began"),
        ("compensation never called", "recorded as done, but its last call did not return"),
        ("succeeded without effect", "but no call of that attempt returned"),
        ("ran again after durable success", "ran again (attempt 1) after its success"),
        ("compensation given none", "was given None instead of the recorded result"),
        ("snapshot differs from history", "snapshot differs from the fold of its history"),
        ("saga lost", "its spawn was acknowledged, yet the saga is gone"),
    ],
)
def test_builtin_invariants_catch(tampering: str, message: str) -> None:
    report, kit = _compensated_report()
    kit.verify(Bank(), report)  # the genuine report holds
    with pytest.raises(InvariantViolation, match=re.escape(message)):
        kit.verify(Bank(), _tamper(report, tampering))


# -- a hung or endless saga fails fast, with the report ------------------------------------


class HangingBank(Bank):
    async def audit(self, ctx: StepContext, amount: int) -> None:
        await anyio.sleep_forever()


class StubbornBank(Bank):
    async def refund(self, ctx: StepContext, amount: int, paid: int | None) -> None:
        raise ConnectionError("the bank is down")


def test_a_hung_step_fails_with_a_clear_message() -> None:
    kit = transfer_kit(HangingBank)
    kit._limits = Limits(idle_timeout=0.3)
    with pytest.raises(InvariantViolation) as caught:
        kit.run([10])
    text = str(caught.value)
    assert text.startswith("the runtime did not become idle within 0.3 s")
    assert "step audit attempt 1 started" in text


def test_endless_compensation_retries_are_reported() -> None:
    kit = transfer_kit(StubbornBank)
    kit._limits = Limits(max_advances=20)
    with pytest.raises(InvariantViolation) as caught:
        kit.run([1500])
    text = str(caught.value)
    assert "did not end after 20 moves of the clock" in text
    assert "compensation attempt 20 failed: builtins.ConnectionError" in text


# -- plans ---------------------------------------------------------------------------------


@given(st.data())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_drawn_plans_target_the_saga_and_replay_from_their_repr(data: st.DataObject) -> None:
    kit = checkout_kit(sagas_per_example=2)
    plan = data.draw(kit._plans[1])
    assert eval(repr(plan), vars(runtime.testing)) == plan
    steps = {"create_order", "charge_payment", "reserve_inventory", "send_confirmation"}
    compensable = {"create_order", "charge_payment", "reserve_inventory"}
    for fault in plan.faults:
        assert 0 <= fault.saga < 2
        if isinstance(fault, StepFault | Crash) and fault.step is not None:
            assert fault.step in (compensable if fault.compensating else steps)


def test_a_plan_naming_an_unknown_step_is_refused() -> None:
    plan = FaultPlan(
        StepFault(saga=0, step="send_confirmation", attempt=1, kind="transient", compensating=True)
    )
    with pytest.raises(ValueError, match="has no such compensation"):
        checkout_kit().run([BOOK], plan)


def test_unknown_fault_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault kinds"):
        checkout_kit(faults=["transient", "meteor"])


# -- the public surface --------------------------------------------------------------------


def test_exports_exist_and_are_documented() -> None:
    names = runtime.testing.__all__
    assert isinstance(names, tuple)
    assert len(set(names)) == len(names)
    for name in names:
        obj = getattr(runtime.testing, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert (obj.__doc__ or "").strip(), name
    assert issubclass(InvariantViolation, AssertionError)
    assert issubclass(runtime.testing.InjectedPermanentError, NonRetryableError)


def test_importing_the_runtime_does_not_need_hypothesis() -> None:
    code = "import runtime, sys; assert 'hypothesis' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_compensation_failed_is_recorded_for_a_permanent_compensation_fault() -> None:
    fault = StepFault(saga=0, step="pay", attempt=1, kind="permanent", compensating=True)
    report = transfer_kit(Bank).run([1500], FaultPlan(fault))
    failed = [
        e.event
        for e in report.sagas["transfer-0"].history
        if isinstance(e.event, CompensationFailed)
    ]
    assert [f.error.type for f in failed] == ["runtime.testing.InjectedPermanentError"]
    assert report.status("transfer-0") is SagaStatus.FAILED
    assert [type(e.event) for e in report.sagas["transfer-0"].history].count(Recovered) == 0
    assert Resumed not in {type(e.event) for e in report.sagas["transfer-0"].history}


async def test_run_refuses_to_start_inside_a_running_event_loop() -> None:
    with pytest.raises(RuntimeError, match="call them from a synchronous test"):
        checkout_kit().run([BOOK])
