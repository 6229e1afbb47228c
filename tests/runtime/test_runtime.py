"""Behaviour of `Runtime` on real databases: SQLite files and PostgreSQL.

Each test drives real sagas through `Runtime`: steps that succeed, retry, time
out or fail for good; compensations newest first; exactly-once spawn; status
and timeline; restarts of the runtime mid-step; supervision of crashing
actors; corrupt rows. Tests taking `database` run on both stores; those about
SQLite itself (the file lock, raw rows, probes around a `SqliteStore`) take
`db`. Nothing here sleeps to wait: tests wait on events the steps set, on the
saga's outcome, or on what the store made durable.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import msgspec
import pytest

from actors import RestartWithBackoff
from runtime import (
    CorruptSagaError,
    DelegatingStore,
    DuplicateSagaError,
    PayloadError,
    Runtime,
    RuntimeNotRunningError,
    SagaCompensated,
    SagaFailed,
    SagaInfo,
    SagaNotFound,
    SagaNotSuspendedError,
    SagaStatus,
    SagaSuspendedError,
    SqliteStore,
    StoreError,
    StoreLockedError,
    UnregisteredSagaError,
)
from saga import (
    Action,
    Compensation,
    CompensationStatus,
    ErrorInfo,
    FailureKind,
    NonRetryableError,
    RetryPolicy,
    Saga,
    Step,
    StepContext,
    StepStatus,
)
from saga.engine import (
    CompensationFailed,
    Event,
    Recovered,
    Resumed,
    SagaStarted,
    StepFailed,
    StepSucceeded,
    Suspended,
)
from saga.store import HistoryEntry, InboxItem, SagaState

FAST = RetryPolicy(initial_interval=0.001, maximum_interval=0.01, maximum_attempts=3)
FAST_COMPENSATION = RetryPolicy(
    initial_interval=0.001, maximum_interval=0.01, maximum_attempts=None
)
FAST_SUPERVISION = RestartWithBackoff(
    min_backoff=0.001, max_backoff=0.01, max_restarts=2, within=10
)
WAIT = 5.0  # generous bound on anything a test waits for; every wait ends far sooner


# -- what the steps saw ---------------------------------------------------------


@dataclass(frozen=True)
class Call:
    kind: Literal["action", "compensate"]
    ctx: StepContext
    saga_input: Any
    result: Any = None  # what a compensation was given

    @property
    def step(self) -> str:
        return self.ctx.step


class Journal:
    """Every call of every action and compensation, in order."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def actions(self, step: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.kind == "action" and step in (None, c.step)]

    def compensations(self) -> list[Call]:
        return [c for c in self.calls if c.kind == "compensate"]


Behaviour = Callable[[StepContext], Any]


def returns(value: Any) -> Behaviour:
    return lambda ctx: value


def raises(make: Callable[[StepContext], Exception | None], value: Any = None) -> Behaviour:
    """Raise `make(ctx)` unless it is None, in which case return `value`."""

    def behave(ctx: StepContext) -> Any:
        error = make(ctx)
        if error is not None:
            raise error
        return value

    return behave


def action(journal: Journal, behave: Behaviour | None = None) -> Action:
    async def run(ctx: StepContext, saga_input: Any) -> Any:
        journal.calls.append(Call("action", ctx, saga_input))
        return behave(ctx) if behave is not None else None

    return run


def compensation(journal: Journal, behave: Behaviour | None = None) -> Compensation:
    async def run(ctx: StepContext, saga_input: Any, result: Any) -> None:
        journal.calls.append(Call("compensate", ctx, saga_input, result))
        if behave is not None:
            behave(ctx)

    return run


def hangs(journal: Journal, entered: dict[str, anyio.Event]) -> Action:
    """An action that signals `entered[saga_id]` and then waits on an event that never fires."""

    async def run(ctx: StepContext, saga_input: Any) -> Any:
        journal.calls.append(Call("action", ctx, saga_input))
        entered[ctx.saga_id].set()
        await anyio.Event().wait()

    return run


class CardDeclined(Exception):
    pass


class FraudSuspected(NonRetryableError):
    pass


def qualname(cls: type[BaseException]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def texts(info: SagaInfo) -> list[str]:
    """The timeline without its time column, which is checked here too."""
    lines = info.timeline()
    parsed = [re.fullmatch(r"\+\s*(\d+\.\d{3})s  (.+)", line) for line in lines]
    assert all(parsed), lines
    offsets = [float(m[1]) for m in parsed if m]
    assert offsets == sorted(offsets)
    return [m[2] for m in parsed if m]


def assert_history_is_contiguous(history: tuple[HistoryEntry, ...]) -> None:
    """One history entry per durable snapshot, numbered 1, 2, 3...: no gap, no duplicate."""
    assert [entry.seq for entry in history] == list(range(1, len(history) + 1))


def event_types(info: SagaInfo) -> list[type[Event]]:
    return [type(entry.event) for entry in info.history]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A SQLite file, for the tests that are about SQLite (raw rows, the lock, probes)."""
    return tmp_path / "sagas.db"


# -- a real store behind a delegate -------------------------------------------------


class ProbeStore(DelegatingStore):
    """A real `SqliteStore` behind a delegate that records what became durable.

    `fail_next` fails that many of the next saves; `broken` fails every save
    except the runtime's own `Suspended` record (a store that can no longer
    record a saga's progress, yet lets the operator-facing parking land).
    """

    def __init__(self, path: Path) -> None:
        super().__init__(SqliteStore(path))
        self.fail_next = 0
        self.broken = False
        self.failures = 0
        self.saved: list[tuple[SagaState, Event]] = []
        self.quarantined: list[str] = []
        self._changed = anyio.Event()

    async def save(
        self,
        state: SagaState,
        event: Event,
        *,
        consumed: int | None = None,
        deliver: InboxItem | None = None,
    ) -> None:
        if self.fail_next or (self.broken and not isinstance(event, Suspended)):
            self.fail_next = max(0, self.fail_next - 1)
            self.failures += 1
            raise StoreError("disk on fire")
        await self.inner.save(state, event, consumed=consumed, deliver=deliver)
        self.saved.append((state, event))
        self._notify()

    async def quarantine(self, saga_id: str, reason: str) -> None:
        await self.inner.quarantine(saga_id, reason)
        self.quarantined.append(saga_id)
        self._notify()

    def status_of(self, saga_id: str) -> SagaStatus | None:
        states = [state for state, _ in self.saved if state.saga_id == saga_id]
        return states[-1].status if states else None

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        with anyio.fail_after(WAIT):
            while not predicate():
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


# -- the success path ---------------------------------------------------------------


async def test_success_returns_each_steps_result_and_gives_each_step_its_context(
    database: str,
) -> None:
    journal = Journal()
    order = {"order": 42, "amount": 1999}
    checkout = Saga(
        "checkout",
        [
            Step(
                "create_order",
                action(journal, returns({"order_id": "o-42"})),
                compensate=compensation(journal),
            ),
            Step(
                "charge_payment",
                action(journal, returns({"charge_id": "ch-1"})),
                compensate=compensation(journal),
            ),
            Step("send_confirmation", action(journal)),
        ],
    )
    async with Runtime(database, sagas=[checkout]) as rt:
        handle = await rt.spawn(checkout, order, saga_id="order-42")
        assert handle.saga_id == "order-42"
        output = await handle.result(timeout=WAIT)
        info = await rt.status("order-42")
        assert await handle.status() == info

    assert output == {
        "create_order": {"order_id": "o-42"},
        "charge_payment": {"charge_id": "ch-1"},
        "send_confirmation": None,
    }
    assert [c.kind for c in journal.calls] == ["action"] * 3
    assert [
        (c.ctx.saga_id, c.step, c.ctx.attempt, c.ctx.idempotency_key) for c in journal.calls
    ] == [
        ("order-42", "create_order", 1, "order-42:create_order"),
        ("order-42", "charge_payment", 1, "order-42:charge_payment"),
        ("order-42", "send_confirmation", 1, "order-42:send_confirmation"),
    ]
    assert [dict(c.ctx.results) for c in journal.calls] == [
        {},
        {"create_order": {"order_id": "o-42"}},
        {"create_order": {"order_id": "o-42"}, "charge_payment": {"charge_id": "ch-1"}},
    ]
    assert all(c.saga_input == order and not c.ctx.compensating for c in journal.calls)

    assert info.status is SagaStatus.COMPLETED
    as_text: str = info.status
    assert as_text == "completed"  # a StrEnum: equal to its string
    assert (info.saga_id, info.saga_name) == ("order-42", "checkout")
    assert info.current_step is None
    assert info.attempts == 0
    assert info.last_error is None
    assert info.failed_step is None
    assert [(s.name, s.status, s.attempts) for s in info.steps] == [
        ("create_order", StepStatus.SUCCEEDED, 1),
        ("charge_payment", StepStatus.SUCCEEDED, 1),
        ("send_confirmation", StepStatus.SUCCEEDED, 1),
    ]
    assert_history_is_contiguous(info.history)
    assert event_types(info) == [SagaStarted, StepSucceeded, StepSucceeded, StepSucceeded]
    assert texts(info) == [
        "saga started",
        "step create_order attempt 1 started",
        "step create_order succeeded",
        "step charge_payment attempt 1 started",
        "step charge_payment succeeded",
        "step send_confirmation attempt 1 started",
        "step send_confirmation succeeded",
        "saga completed",
    ]


async def test_spawn_without_an_id_makes_a_unique_one(database: str) -> None:
    journal = Journal()
    saga = Saga("one", [Step("only", action(journal, returns(1)))])
    async with Runtime(database, sagas=[saga]) as rt:
        first = await rt.spawn(saga, {"n": 1})
        second = await rt.spawn("one", {"n": 1})  # by name, same input: still another saga
        assert first.saga_id != second.saga_id
        assert await first.result(timeout=WAIT) == await second.result(timeout=WAIT) == {"only": 1}
    assert {c.ctx.saga_id for c in journal.calls} == {first.saga_id, second.saga_id}


async def test_struct_input_is_validated_and_decoded_for_every_step(database: str) -> None:
    class Order(msgspec.Struct, frozen=True):
        sku: str
        quantity: int

    journal = Journal()
    saga = Saga(
        "typed",
        [Step("reserve", action(journal, lambda ctx: "reserved"))],
        input_type=Order,
    )
    async with Runtime(database, sagas=[saga]) as rt:
        from_struct = await rt.spawn(saga, Order("apple", 3), saga_id="s1")
        from_dict = await rt.spawn(saga, {"sku": "pear", "quantity": 1}, saga_id="s2")
        await from_struct.result(timeout=WAIT)
        await from_dict.result(timeout=WAIT)
    assert [c.saga_input for c in journal.calls] == [Order("apple", 3), Order("pear", 1)]


# -- retries ---------------------------------------------------------------------


async def test_transient_failures_are_retried_with_the_policy_then_succeed(database: str) -> None:
    journal = Journal()
    saga = Saga(
        "pay",
        [
            Step("create_order", action(journal, returns("o-1")), compensate=compensation(journal)),
            Step(
                "charge",
                action(
                    journal,
                    raises(
                        lambda ctx: (
                            ConnectionError(f"503 on attempt {ctx.attempt}")
                            if ctx.attempt <= 2
                            else None
                        ),
                        value="ch-1",
                    ),
                ),
                compensate=compensation(journal),
                retry=RetryPolicy(
                    initial_interval=0.001, maximum_interval=0.01, maximum_attempts=5
                ),
            ),
        ],
    )
    async with Runtime(database, sagas=[saga]) as rt:
        output = await (await rt.spawn(saga, None, saga_id="p")).result(timeout=WAIT)
        info = await rt.status("p")

    assert output == {"create_order": "o-1", "charge": "ch-1"}
    charges = journal.actions("charge")
    assert [c.ctx.attempt for c in charges] == [1, 2, 3]
    assert {c.ctx.idempotency_key for c in charges} == {"p:charge"}
    assert all(dict(c.ctx.results) == {"create_order": "o-1"} for c in charges)
    assert journal.compensations() == []
    assert info.status is SagaStatus.COMPLETED
    assert info.steps[1].attempts == 3
    assert info.last_error == ErrorInfo(type="builtins.ConnectionError", message="503 on attempt 2")
    failures = [e.event for e in info.history if isinstance(e.event, StepFailed)]
    assert [(f.attempt, f.kind) for f in failures] == [
        (1, FailureKind.TRANSIENT),
        (2, FailureKind.TRANSIENT),
    ]
    assert_history_is_contiguous(info.history)
    lines = texts(info)
    assert "step charge attempt 1 failed: builtins.ConnectionError: 503 on attempt 1" in lines
    assert "step charge attempt 3 started" in lines
    assert lines[-1] == "saga completed"


async def test_status_of_a_running_retry_shows_the_step_its_attempt_and_last_error(
    database: str,
) -> None:
    journal = Journal()
    entered, release = anyio.Event(), anyio.Event()

    async def charge(ctx: StepContext, saga_input: Any) -> Any:
        journal.calls.append(Call("action", ctx, saga_input))
        if ctx.attempt == 1:
            raise ConnectionError("gateway timeout")
        entered.set()
        await release.wait()
        return "charged"

    saga = Saga(
        "pay",
        [Step("create_order", action(journal, returns(1))), Step("charge", charge, retry=FAST)],
    )
    async with Runtime(database, sagas=[saga]) as rt:
        handle = await rt.spawn(saga, None, saga_id="live")
        with anyio.fail_after(WAIT):
            await entered.wait()
        info = await rt.status("live")
        assert info.status is SagaStatus.RUNNING
        assert info.current_step == "charge"
        assert info.attempts == 2
        assert info.steps[1].status is StepStatus.RUNNING  # the intent is durable before the run
        assert info.last_error == ErrorInfo(
            type="builtins.ConnectionError", message="gateway timeout"
        )
        release.set()
        assert await handle.result(timeout=WAIT) == {"create_order": 1, "charge": "charged"}


# -- compensation --------------------------------------------------------------------


async def test_retries_exhausted_leave_the_step_ambiguous_and_it_is_compensated(
    database: str,
) -> None:
    journal = Journal()
    saga = Saga(
        "checkout",
        [
            Step(
                "create_order",
                action(journal, returns({"id": 1})),
                compensate=compensation(journal),
            ),
            Step(
                "charge",
                action(journal, raises(lambda ctx: ConnectionError(f"503 #{ctx.attempt}"))),
                compensate=compensation(journal),
                retry=FAST,
            ),
            Step("ship", action(journal), compensate=compensation(journal)),
        ],
    )
    async with Runtime(database, sagas=[saga]) as rt:
        handle = await rt.spawn(saga, {"o": 1}, saga_id="c")
        with pytest.raises(SagaCompensated) as caught:
            await handle.result(timeout=WAIT)
        info = await rt.status("c")

    assert caught.value.saga_id == "c"
    assert caught.value.step == "charge"
    assert caught.value.error == ErrorInfo(type="builtins.ConnectionError", message="503 #3")
    assert [c.ctx.attempt for c in journal.actions("charge")] == [1, 2, 3]
    assert journal.actions("ship") == []
    undone = journal.compensations()
    assert [(c.step, c.result, c.ctx.idempotency_key, c.ctx.attempt) for c in undone] == [
        ("charge", None, "c:charge:compensate", 1),  # ambiguous: compensated with None
        ("create_order", {"id": 1}, "c:create_order:compensate", 1),
    ]
    assert all(c.ctx.compensating and c.saga_input == {"o": 1} for c in undone)

    assert info.status is SagaStatus.COMPENSATED
    assert info.failed_step == "charge"
    assert info.failure == caught.value.error
    assert [(s.status, s.compensation) for s in info.steps] == [
        (StepStatus.SUCCEEDED, CompensationStatus.COMPENSATED),
        (StepStatus.AMBIGUOUS, CompensationStatus.COMPENSATED),
        (StepStatus.PENDING, CompensationStatus.NONE),
    ]
    assert_history_is_contiguous(info.history)
    lines = texts(info)
    assert "step charge gave up (retries exhausted); it may have taken effect" in lines
    assert lines.index("compensation of charge attempt 1 started") < lines.index(
        "compensation of create_order attempt 1 started"
    )
    assert lines[-1] == "saga compensated"


@pytest.mark.parametrize(
    "error_type", [CardDeclined, FraudSuspected], ids=["listed-type", "NonRetryableError"]
)
async def test_definitive_failure_is_not_compensated_and_earlier_steps_are_newest_first(
    database: str, error_type: type[Exception]
) -> None:
    journal = Journal()
    saga = Saga(
        "checkout",
        [
            Step("reserve", action(journal, returns("r")), compensate=compensation(journal)),
            Step("create_order", action(journal, returns("o")), compensate=compensation(journal)),
            Step(
                "charge",
                action(journal, raises(lambda ctx: error_type("card 4242 declined"))),
                compensate=compensation(journal),
                retry=RetryPolicy(
                    initial_interval=0.001,
                    maximum_interval=0.01,
                    maximum_attempts=5,
                    non_retryable_error_types=(CardDeclined,),
                ),
            ),
            Step("ship", action(journal), compensate=compensation(journal)),
        ],
    )
    async with Runtime(database, sagas=[saga]) as rt:
        with pytest.raises(SagaCompensated) as caught:
            await (await rt.spawn(saga, None, saga_id="d")).result(timeout=WAIT)
        info = await rt.status("d")

    assert caught.value.step == "charge"
    assert caught.value.error == ErrorInfo(type=qualname(error_type), message="card 4242 declined")
    assert len(journal.actions("charge")) == 1  # never retried
    assert journal.actions("ship") == []
    assert [(c.step, c.result) for c in journal.compensations()] == [
        ("create_order", "o"),
        ("reserve", "r"),
    ]
    assert info.steps[2].status is StepStatus.FAILED
    assert info.steps[2].compensation is CompensationStatus.NONE
    assert "step charge failed definitively (took no effect)" in texts(info)


async def test_a_timed_out_step_is_ambiguous_and_compensated(database: str) -> None:
    journal = Journal()

    async def never_answers(ctx: StepContext, saga_input: Any) -> Any:
        journal.calls.append(Call("action", ctx, saga_input))
        await anyio.Event().wait()

    saga = Saga(
        "slow",
        [
            Step("book", action(journal, returns("b")), compensate=compensation(journal)),
            Step(
                "call_partner",
                never_answers,
                compensate=compensation(journal),
                timeout=0.05,
                retry=RetryPolicy(
                    initial_interval=0.001, maximum_interval=0.01, maximum_attempts=2
                ),
            ),
        ],
    )
    async with Runtime(database, sagas=[saga]) as rt:
        with pytest.raises(SagaCompensated) as caught:
            await (await rt.spawn(saga, None, saga_id="t")).result(timeout=WAIT)
        info = await rt.status("t")

    assert caught.value.step == "call_partner"
    assert caught.value.error is not None
    assert caught.value.error.timed_out
    assert [c.ctx.attempt for c in journal.actions("call_partner")] == [1, 2]
    assert [(c.step, c.result) for c in journal.compensations()] == [
        ("call_partner", None),
        ("book", "b"),
    ]
    assert info.steps[1].status is StepStatus.AMBIGUOUS
    assert info.steps[1].error is not None
    assert info.steps[1].error.timed_out


async def test_steps_without_a_compensation_are_skipped(database: str) -> None:
    journal = Journal()
    saga = Saga(
        "mail",
        [
            Step("create_order", action(journal, returns("o")), compensate=compensation(journal)),
            Step("send_mail", action(journal, returns("sent"))),
            Step("charge", action(journal, raises(lambda ctx: NonRetryableError("declined")))),
        ],
    )
    async with Runtime(database, sagas=[saga]) as rt:
        with pytest.raises(SagaCompensated):
            await (await rt.spawn(saga, None, saga_id="m")).result(timeout=WAIT)
        info = await rt.status("m")
    assert [(c.step, c.result) for c in journal.compensations()] == [("create_order", "o")]
    assert [s.compensation for s in info.steps] == [
        CompensationStatus.COMPENSATED,
        CompensationStatus.NONE,
        CompensationStatus.NONE,
    ]
    assert not any("compensation of send_mail" in line for line in texts(info))


async def test_a_compensation_that_fails_transiently_is_retried(database: str) -> None:
    journal = Journal()
    saga = Saga(
        "refund",
        [
            Step(
                "charge",
                action(journal, returns({"charge": 7})),
                compensate=compensation(
                    journal,
                    raises(lambda ctx: TimeoutError("bank busy") if ctx.attempt <= 2 else None),
                ),
                compensation_retry=FAST_COMPENSATION,
            ),
            Step("ship", action(journal, raises(lambda ctx: NonRetryableError("no stock")))),
        ],
    )
    async with Runtime(database, sagas=[saga]) as rt:
        with pytest.raises(SagaCompensated) as caught:
            await (await rt.spawn(saga, None, saga_id="r")).result(timeout=WAIT)
        info = await rt.status("r")

    assert caught.value.step == "ship"
    refunds = journal.compensations()
    assert [(c.ctx.attempt, c.result, c.ctx.idempotency_key) for c in refunds] == [
        (1, {"charge": 7}, "r:charge:compensate"),
        (2, {"charge": 7}, "r:charge:compensate"),
        (3, {"charge": 7}, "r:charge:compensate"),
    ]
    assert info.status is SagaStatus.COMPENSATED
    assert info.steps[0].compensation is CompensationStatus.COMPENSATED
    assert info.steps[0].compensation_attempts == 3
    failed = [e.event for e in info.history if isinstance(e.event, CompensationFailed)]
    assert [(f.attempt, f.kind) for f in failed] == [
        (1, FailureKind.TRANSIENT),
        (2, FailureKind.TRANSIENT),
    ]


@pytest.mark.parametrize("how", ["non-retryable", "retries-exhausted"])
async def test_a_compensation_that_fails_for_good_fails_the_saga(database: str, how: str) -> None:
    journal = Journal()
    if how == "non-retryable":
        refund_error: Exception = NonRetryableError("ledger closed")
        refund_retry = FAST_COMPENSATION
    else:
        refund_error = ConnectionError("bank down")
        refund_retry = RetryPolicy(
            initial_interval=0.001, maximum_interval=0.01, maximum_attempts=2
        )

    saga = Saga(
        "broken_refund",
        [
            Step("create_order", action(journal, returns("o")), compensate=compensation(journal)),
            Step(
                "charge",
                action(journal, returns("ch")),
                compensate=compensation(journal, raises(lambda ctx: refund_error)),
                compensation_retry=refund_retry,
            ),
            Step("ship", action(journal, raises(lambda ctx: NonRetryableError("no stock")))),
        ],
    )
    async with Runtime(database, sagas=[saga]) as rt:
        with pytest.raises(SagaFailed) as caught:
            await (await rt.spawn(saga, None, saga_id="f")).result(timeout=WAIT)
        info = await rt.status("f")

    assert caught.value.step == "charge"
    assert caught.value.error == ErrorInfo(
        type=qualname(type(refund_error)), message=str(refund_error)
    )
    assert caught.value.cause_step == "ship"
    assert caught.value.cause == ErrorInfo(type=qualname(NonRetryableError), message="no stock")
    expected_attempts = [1] if how == "non-retryable" else [1, 2]
    assert [(c.step, c.ctx.attempt) for c in journal.compensations()] == [
        ("charge", n) for n in expected_attempts
    ]  # create_order's compensation never ran
    assert info.status is SagaStatus.FAILED
    assert [s.compensation for s in info.steps] == [
        CompensationStatus.NONE,
        CompensationStatus.FAILED,
        CompensationStatus.NONE,
    ]
    assert texts(info)[-1] == "saga failed"


async def test_a_step_returning_a_non_serializable_value_is_compensated_with_none(
    database: str,
) -> None:
    journal = Journal()
    saga = Saga(
        "odd",
        [
            Step("create_order", action(journal, returns("o")), compensate=compensation(journal)),
            Step(
                "charge",
                action(journal, returns(object())),
                compensate=compensation(journal),
                retry=FAST,
            ),
        ],
    )
    async with Runtime(database, sagas=[saga]) as rt:
        with pytest.raises(SagaCompensated) as caught:
            await (await rt.spawn(saga, None, saga_id="n")).result(timeout=WAIT)
        info = await rt.status("n")

    assert caught.value.step == "charge"
    assert caught.value.error is not None
    assert caught.value.error.type == qualname(PayloadError)
    assert len(journal.actions("charge")) == 1  # it returned: it took effect, no retry
    assert [(c.step, c.result) for c in journal.compensations()] == [
        ("charge", None),
        ("create_order", "o"),
    ]
    assert info.steps[1].status is StepStatus.AMBIGUOUS


# -- exactly-once spawn ----------------------------------------------------------------


async def test_spawning_again_with_the_same_input_returns_the_same_saga(database: str) -> None:
    journal = Journal()
    entered: dict[str, anyio.Event] = {"dup": anyio.Event()}
    gate = anyio.Event()

    async def first(ctx: StepContext, saga_input: Any) -> Any:
        journal.calls.append(Call("action", ctx, saga_input))
        entered[ctx.saga_id].set()
        await gate.wait()
        return "one"

    saga = Saga("twice", [Step("first", first), Step("second", action(journal, returns(2)))])
    async with Runtime(database, sagas=[saga]) as rt:
        h1 = await rt.spawn(saga, {"a": 1, "b": [1, 2]}, saga_id="dup")
        with anyio.fail_after(WAIT):
            await entered["dup"].wait()
        # While it runs, and with the same value spelled in another key order.
        h2 = await rt.spawn(saga, {"b": [1, 2], "a": 1}, saga_id="dup")
        assert h2.saga_id == h1.saga_id == "dup"
        gate.set()
        assert await h1.result(timeout=WAIT) == await h2.result(timeout=WAIT)
        h3 = await rt.spawn(saga, {"a": 1, "b": [1, 2]}, saga_id="dup")  # after it ended
        assert await h3.result(timeout=WAIT) == {"first": "one", "second": 2}
        info = await rt.status("dup")
    assert [c.step for c in journal.calls] == ["first", "second"]
    assert event_types(info).count(SagaStarted) == 1


async def test_spawning_again_with_another_input_raises_even_after_a_restart(database: str) -> None:
    journal = Journal()
    saga = Saga("once", [Step("only", action(journal, lambda ctx: "done"))])
    other = Saga("other", [Step("only", action(journal))])
    async with Runtime(database, sagas=[saga, other]) as rt:
        output = await (await rt.spawn(saga, {"v": 1}, saga_id="id-1")).result(timeout=WAIT)
        with pytest.raises(DuplicateSagaError) as caught:
            await rt.spawn(saga, {"v": 2}, saga_id="id-1")
        assert caught.value.saga_id == "id-1"
        with pytest.raises(DuplicateSagaError):
            await rt.spawn(other, {"v": 1}, saga_id="id-1")

    async with Runtime(database, sagas=[saga, other]) as rt:
        again = await rt.spawn(saga, {"v": 1}, saga_id="id-1")
        assert await again.result(timeout=WAIT) == output
        with pytest.raises(DuplicateSagaError):
            await rt.spawn(saga, {"v": 2}, saga_id="id-1")
        assert (await rt.store.load("id-1")).input == b'{"v":1}'
    assert len(journal.calls) == 1


async def test_concurrent_spawns_of_one_id_start_it_once(database: str) -> None:
    journal = Journal()
    saga = Saga("race", [Step("only", action(journal, returns("x")))])
    handles: list[str] = []
    async with Runtime(database, sagas=[saga]) as rt:

        async def spawn() -> None:
            handles.append((await rt.spawn(saga, {"k": 1}, saga_id="r")).saga_id)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(spawn)
        assert await rt.handle("r").result(timeout=WAIT) == {"only": "x"}
    assert handles == ["r"] * 5
    assert len(journal.calls) == 1


# -- errors of the API ------------------------------------------------------------------


async def test_unknown_saga_id_raises_saga_not_found(database: str) -> None:
    saga = Saga("s", [Step("only", action(Journal()))])
    async with Runtime(database, sagas=[saga]) as rt:
        with pytest.raises(SagaNotFound) as caught:
            await rt.status("missing")
        assert caught.value.saga_id == "missing"
        with pytest.raises(SagaNotFound):
            await rt.handle("missing").result(timeout=WAIT)
        with pytest.raises(SagaNotFound):
            await rt.resume("missing")


async def test_spawning_a_saga_the_runtime_was_not_given_raises(database: str) -> None:
    journal = Journal()
    known = Saga("known", [Step("only", action(journal))])
    stranger = Saga("stranger", [Step("only", action(journal))])
    impostor = Saga("known", [Step("only", action(journal))])  # same name, other definition
    async with Runtime(database, sagas=[known]) as rt:
        for saga in (stranger, "stranger", impostor):
            with pytest.raises(UnregisteredSagaError):
                await rt.spawn(saga, None, saga_id="u")
        with pytest.raises(SagaNotFound):
            await rt.status("u")
    assert journal.calls == []


@pytest.mark.parametrize(
    "bad_input",
    [object(), {"sku": 7, "quantity": 1}, {"sku": "apple"}],
    ids=["not-serializable", "wrong-field-type", "missing-field"],
)
async def test_a_bad_input_raises_payload_error_and_stores_nothing(
    database: str, bad_input: object
) -> None:
    class Order(msgspec.Struct):
        sku: str
        quantity: int

    journal = Journal()
    saga = Saga("typed", [Step("only", action(journal))], input_type=Order)
    async with Runtime(database, sagas=[saga]) as rt:
        with pytest.raises(PayloadError):
            await rt.spawn(saga, bad_input, saga_id="bad")
        with pytest.raises(SagaNotFound):
            await rt.status("bad")
    assert journal.calls == []


async def test_the_api_needs_the_runtime_to_be_running(database: str) -> None:
    """Before and after `async with`, every call says so with one error (never the closed
    store's own `StoreClosedError`, which only a direct user of a store sees)."""
    saga = Saga("s", [Step("only", action(Journal()))])
    rt = Runtime(database, sagas=[saga])

    async def refused() -> None:
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "spawn": lambda: rt.spawn(saga, None, saga_id="x"),
            "status": lambda: rt.status("x"),
            "list": lambda: rt.list(),
            "result": lambda: rt.result("x"),
            "signal": lambda: rt.signal("x", "go"),
            "cancel": lambda: rt.cancel("x"),
            "resume": lambda: rt.resume("x"),
        }
        for call in calls.values():
            with pytest.raises(RuntimeNotRunningError, match="async with"):
                await call()

    await refused()
    async with rt:
        await rt.spawn(saga, None, saga_id="x")
    await refused()


async def test_a_second_runtime_on_an_open_file_is_locked_out(db: Path) -> None:
    journal = Journal()
    saga = Saga("s", [Step("only", action(journal, returns(1)))])
    async with Runtime(db, sagas=[saga]) as rt:
        with pytest.raises(StoreLockedError):
            async with Runtime(db, sagas=[saga]):
                pass
        # The first one is unharmed.
        assert await (await rt.spawn(saga, None, saga_id="a")).result(timeout=WAIT) == {"only": 1}
    async with Runtime(db, sagas=[saga]) as rt:  # and the file is free once it closed
        assert (await rt.status("a")).status is SagaStatus.COMPLETED


async def test_a_second_runtime_on_a_postgres_database_shares_it(pg_dsn: str) -> None:
    journal = Journal()
    saga = Saga("s", [Step("only", action(journal, returns(1)))])
    async with Runtime(pg_dsn, sagas=[saga]) as first, Runtime(pg_dsn, sagas=[saga]) as second:
        assert await (await first.spawn(saga, {"k": 1}, saga_id="a")).result(timeout=WAIT) == {
            "only": 1
        }
        assert (await second.status("a")).status is SagaStatus.COMPLETED
        # Exactly-once spawn holds across runtimes: the same id starts nothing more.
        again = await second.spawn(saga, {"k": 1}, saga_id="a")
        assert await again.result(timeout=WAIT) == {"only": 1}
        with pytest.raises(DuplicateSagaError):
            await second.spawn(saga, {"k": 2}, saga_id="a")
    assert len(journal.calls) == 1


# -- restarts of the runtime -------------------------------------------------------------


async def test_reopening_resumes_a_saga_abandoned_mid_step(database: str) -> None:
    journal = Journal()
    entered = {"s": anyio.Event()}
    reserve = Step(
        "reserve", action(journal, returns({"hold": 5})), compensate=compensation(journal)
    )
    before = Saga("ship", [reserve, Step("charge", hangs(journal, entered))])
    async with Runtime(database, sagas=[before]) as rt:
        await rt.spawn(before, {"order": 1}, saga_id="s")
        with anyio.fail_after(WAIT):
            await entered["s"].wait()
    # The runtime left while `charge` was running: its outcome was never recorded.

    after = Saga("ship", [reserve, Step("charge", action(journal, returns("ch-9")))])
    async with Runtime(database, sagas=[after]) as rt:
        output = await rt.handle("s").result(timeout=WAIT)
        info = await rt.status("s")

    assert output == {"reserve": {"hold": 5}, "charge": "ch-9"}
    assert len(journal.actions("reserve")) == 1
    charges = journal.actions("charge")
    # The interrupted attempt runs again, same number, same key: a crash costs no retry.
    assert [(c.ctx.attempt, c.ctx.idempotency_key) for c in charges] == [(1, "s:charge")] * 2
    assert dict(charges[1].ctx.results) == {"reserve": {"hold": 5}}
    assert charges[1].saga_input == {"order": 1}
    assert journal.compensations() == []
    assert info.status is SagaStatus.COMPLETED
    assert Recovered in event_types(info)
    assert info.recoveries == 0  # progress clears the count
    assert_history_is_contiguous(info.history)
    assert "step charge attempt 1 was interrupted: run again" in texts(info)


async def test_a_step_interrupted_past_max_recoveries_suspends_the_saga(db: Path) -> None:
    journal = Journal()
    entered: dict[str, anyio.Event] = {}
    crashy = Saga("loop", [Step("boom", hangs(journal, entered))])
    for attempt in range(3):  # the first run, then two recoveries: all allowed
        entered["loop"] = anyio.Event()
        async with Runtime(db, sagas=[crashy], max_recoveries=2) as rt:
            if attempt == 0:
                await rt.spawn(crashy, None, saga_id="loop")
            with anyio.fail_after(WAIT):
                await entered["loop"].wait()

    probe = ProbeStore(db)
    async with Runtime(probe, sagas=[crashy], max_recoveries=2) as rt:
        await probe.wait_until(lambda: probe.status_of("loop") is SagaStatus.SUSPENDED)
        info = await rt.status("loop")
    assert len(journal.actions()) == 3  # the third recovery did not run it again
    assert info.status is SagaStatus.SUSPENDED
    assert info.recoveries == 3
    assert info.suspended_reason is not None
    assert "recovered 3 times" in info.suspended_reason

    fixed = Saga("loop", [Step("boom", action(journal, returns("ok")))])
    async with Runtime(db, sagas=[fixed], max_recoveries=2) as rt:
        assert rt.live_actors == 0  # a suspended saga waits for an operator
        await rt.resume("loop")
        assert await rt.handle("loop").result(timeout=WAIT) == {"boom": "ok"}
        info = await rt.status("loop")
    assert [c.ctx.attempt for c in journal.actions()] == [1, 1, 1, 1]
    assert Resumed in event_types(info)
    assert texts(info)[-1] == "saga completed"


async def test_a_corrupt_snapshot_is_quarantined_and_the_others_carry_on(db: Path) -> None:
    journal = Journal()
    entered = {"good": anyio.Event(), "bad": anyio.Event()}
    before = Saga("s", [Step("work", hangs(journal, entered))])
    async with Runtime(db, sagas=[before]) as rt:
        for saga_id in ("good", "bad"):
            await rt.spawn(before, None, saga_id=saga_id)
        with anyio.fail_after(WAIT):
            for event in entered.values():
                await event.wait()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE sagas SET snapshot='garbage' WHERE saga_id='bad'")

    after = Saga("s", [Step("work", action(journal, returns("w")))])
    probe = ProbeStore(db)
    async with Runtime(probe, sagas=[after]) as rt:
        assert await rt.handle("good").result(timeout=WAIT) == {"work": "w"}
        await probe.wait_until(lambda: "bad" in probe.quarantined)
        with pytest.raises(CorruptSagaError) as caught:
            await rt.status("bad")
        assert caught.value.saga_id == "bad"
        with pytest.raises(CorruptSagaError):
            await rt.handle("bad").result(timeout=WAIT)
        with pytest.raises(CorruptSagaError):
            await rt.resume("bad")
        assert await probe.inner.unfinished() == []
    ran = [c.ctx.saga_id for c in journal.actions()]
    assert sorted(ran[:2]) == ["bad", "good"]  # both were mid-step when the first runtime left
    assert ran[2:] == ["good"]  # after the reopen only the healthy one ran
    with sqlite3.connect(db) as conn:
        status, error, snapshot = conn.execute(
            "SELECT status, error, snapshot FROM sagas WHERE saga_id='bad'"
        ).fetchone()
    assert status == "suspended"
    assert "bad" in error
    assert "corrupt" in error
    assert snapshot == "garbage"  # left as it was, for an operator


# -- supervision of crashing actors -------------------------------------------------------


async def test_a_store_error_crashes_the_actor_which_restarts_and_completes(db: Path) -> None:
    journal = Journal()
    saga = Saga(
        "s",
        [Step("first", action(journal, returns(1))), Step("second", action(journal, returns(2)))],
    )
    probe = ProbeStore(db)
    async with Runtime(probe, sagas=[saga], supervision=FAST_SUPERVISION) as rt:
        probe.fail_next = 2  # the outcome of `first`, then the restart's own record
        handle = await rt.spawn(saga, None, saga_id="s")
        assert await handle.result(timeout=WAIT) == {"first": 1, "second": 2}
        info = await rt.status("s")
    assert probe.failures == 2
    # The first run's outcome was lost with the crash; the restart ran it again.
    assert [(c.step, c.ctx.attempt) for c in journal.calls] == [
        ("first", 1),
        ("first", 1),
        ("second", 1),
    ]
    assert Recovered in event_types(info)
    assert_history_is_contiguous(info.history)  # the failed writes left nothing behind


async def test_a_result_awaited_before_its_saga_is_suspended_raises_when_it_is(
    db: Path,
) -> None:
    saga = Saga("s", [Step("first", action(Journal(), returns(1)))])
    probe = ProbeStore(db)
    async with Runtime(probe, sagas=[saga], supervision=FAST_SUPERVISION) as rt:
        probe.broken = True
        handle = await rt.spawn(saga, None, saga_id="s")
        with pytest.raises(SagaSuspendedError) as raised:  # awaited while still crashing
            await handle.result(timeout=WAIT)
        assert probe.status_of("s") is SagaStatus.SUSPENDED
        assert raised.value.saga_id == "s"
        assert raised.value.reason == (await rt.status("s")).suspended_reason
        probe.broken = False
        await rt.resume("s")
        assert await rt.result("s", timeout=WAIT) == {"first": 1}


async def test_an_actor_that_keeps_crashing_is_suspended_then_resumed_by_an_operator(
    db: Path,
) -> None:
    journal = Journal()
    saga = Saga(
        "s",
        [Step("first", action(journal, returns(1))), Step("second", action(journal, returns(2)))],
    )
    probe = ProbeStore(db)
    async with Runtime(probe, sagas=[saga], supervision=FAST_SUPERVISION) as rt:
        probe.broken = True  # the start lands, no transition after it does
        handle = await rt.spawn(saga, None, saga_id="s")
        await probe.wait_until(lambda: probe.status_of("s") is SagaStatus.SUSPENDED)
        assert probe.failures == 3  # a crash and two restarts, then escalation
        info = await rt.status("s")
        assert info.status is SagaStatus.SUSPENDED
        assert info.suspended_reason is not None
        assert "kept crashing" in info.suspended_reason
        assert "disk on fire" in info.suspended_reason
        lines = texts(info)
        assert lines[-2] == f"suspended: {info.suspended_reason}"
        assert lines[-1] == "saga suspended"
        with pytest.raises(SagaSuspendedError, match="kept crashing"):  # said, not waited on
            await handle.result(timeout=WAIT)

        probe.broken = False
        await rt.resume("s")
        assert await handle.result(timeout=WAIT) == {"first": 1, "second": 2}
        info = await rt.status("s")
        with pytest.raises(SagaNotSuspendedError):
            await rt.resume("s")
    assert [(c.step, c.ctx.attempt) for c in journal.calls] == [
        ("first", 1),
        ("first", 1),
        ("second", 1),
    ]
    assert info.status is SagaStatus.COMPLETED
    kinds = event_types(info)
    assert kinds.index(Suspended) < kinds.index(Resumed)
    assert_history_is_contiguous(info.history)
