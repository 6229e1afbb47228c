"""Code sagas (`Saga(name, body)`) on real stores: steps, loops, branches, parallel groups,
child sagas, waits, cancellation, restarts, and a body that changes between runs.

Each test drives real sagas through `Runtime` with a `Shop` of fake services that
records every effect by idempotency key, so "nothing ran twice" and "exactly what may
have taken effect was undone" are checked against what the services saw.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest

from runtime import DelegatingStore, Runtime, SagaCompensated, SagaStatus, SqliteStore
from saga import (
    CallKind,
    CompensationStatus,
    NonDeterminismError,
    NonRetryableError,
    RetryPolicy,
    Saga,
    SagaContext,
    StepContext,
    StepFailedError,
    StepStatus,
    StoreError,
    VirtualClock,
)
from saga.engine import CompensationWaiting, Event
from saga.store import InboxItem, SagaState
from tests.runtime.long_running_helpers import WAIT, until, until_status


class Order(msgspec.Struct, frozen=True):
    id: str
    total: int
    lines: tuple[str, ...] = ()
    digital: bool = False


class Receipt(msgspec.Struct, frozen=True):
    order_id: str
    payment_id: str
    reserved: tuple[str, ...]


class Declined(NonRetryableError):
    """The card was declined: the charge took no effect."""


@dataclass
class Shop:
    """Fake services: every effect and every undo, by idempotency key."""

    effects: Counter[str] = field(default_factory=Counter)
    undone: list[tuple[str, Any]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    gates: dict[str, anyio.Event] = field(default_factory=dict)
    entered: dict[str, anyio.Event] = field(default_factory=dict)

    def gate(self, key: str) -> anyio.Event:
        """Make the step with this key wait for the returned event."""
        self.gates[key] = anyio.Event()
        self.entered[key] = anyio.Event()
        return self.gates[key]

    async def effect(self, ctx: StepContext, value: Any) -> Any:
        key = ctx.idempotency_key
        self.log.append(key)
        if key in self.gates:
            self.entered[key].set()
            await self.gates[key].wait()
        self.effects[key] += 1
        return value

    async def undo(self, ctx: StepContext, result: Any) -> None:
        self.undone.append((ctx.idempotency_key, result))


def build(shop: Shop, *, fulfilment: Saga | None = None) -> Saga:
    async def create_order(ctx: StepContext, order: Order) -> str:
        value: str = await shop.effect(ctx, f"o-{order.id}")
        return value

    async def cancel_order(ctx: StepContext, order: Order, result: str | None) -> None:
        await shop.undo(ctx, result)

    async def reserve(ctx: StepContext, line: str) -> str:
        value: str = await shop.effect(ctx, line.upper())
        return value

    async def release(ctx: StepContext, line: str, result: str | None) -> None:
        await shop.undo(ctx, result)

    async def charge(ctx: StepContext, total: int) -> dict[str, str]:
        if total > 1000:
            raise Declined(f"{total} is over the limit")
        value: dict[str, str] = await shop.effect(ctx, {"id": f"p-{ctx.saga_id}"})
        return value

    async def refund(ctx: StepContext, total: int, result: dict[str, str] | None) -> None:
        await shop.undo(ctx, result)

    async def ship(ctx: StepContext, order: Order) -> None:
        await shop.effect(ctx, None)

    async def body(ctx: SagaContext, order: Order) -> Receipt:
        order_id = await ctx.step("create_order", create_order, order, compensate=cancel_order)
        reserved = []
        for line in order.lines:  # a loop: reserve#2, reserve#3, ...
            reserved.append(await ctx.step("reserve", reserve, line, compensate=release))
        payment, _ = await ctx.parallel(
            ctx.step("charge", charge, order.total, compensate=refund),
            ctx.step("reserve", reserve, "gift-wrap", compensate=release),
        )
        if fulfilment is not None:
            await ctx.child(fulfilment, order)
        if not order.digital:  # a branch
            await ctx.step("ship", ship, order)
        return Receipt(order_id=order_id, payment_id=payment["id"], reserved=tuple(reserved))

    return Saga("checkout", body, input_type=Order)


ORDER = Order(id="42", total=100, lines=("a", "b"))


async def test_a_code_saga_runs_its_body_durably_and_returns_its_output(database: str) -> None:
    shop = Shop()
    checkout = build(shop)
    async with Runtime(database, sagas=[checkout]) as rt:
        receipt = await (await rt.spawn(checkout, ORDER, saga_id="s1")).result(timeout=WAIT)
        info = await rt.status("s1")
    assert receipt == Receipt(order_id="o-42", payment_id="p-s1", reserved=("A", "B"))
    assert isinstance(receipt, Receipt)  # decoded by the body's return annotation
    # The first call of a name keeps the step-list key; the k-th gets #k.
    assert dict(shop.effects) == {
        "s1:create_order": 1,
        "s1:reserve": 1,
        "s1:reserve#2": 1,
        "s1:charge": 1,
        "s1:reserve#3": 1,
        "s1:ship": 1,
    }
    assert info.status is SagaStatus.COMPLETED
    assert [(step.name, step.kind, step.status) for step in info.steps] == [
        ("create_order", CallKind.STEP, StepStatus.SUCCEEDED),
        ("reserve", CallKind.STEP, StepStatus.SUCCEEDED),
        ("reserve#2", CallKind.STEP, StepStatus.SUCCEEDED),
        ("charge", CallKind.STEP, StepStatus.SUCCEEDED),
        ("reserve#3", CallKind.STEP, StepStatus.SUCCEEDED),
        ("ship", CallKind.STEP, StepStatus.SUCCEEDED),
    ]
    assert [step.group for step in info.steps] == [None, None, None, 3, 3, None]
    assert "step charge attempt 1 started" in "\n".join(info.timeline())


async def test_a_branch_not_taken_runs_nothing(tmp_path: Path) -> None:
    shop = Shop()
    checkout = build(shop)
    async with Runtime(tmp_path / "s.db", sagas=[checkout]) as rt:
        order = Order(id="7", total=10, digital=True)
        await (await rt.spawn(checkout, order, saga_id="d")).result(timeout=WAIT)
    assert "d:ship" not in shop.effects
    assert shop.effects["d:charge"] == 1


async def test_a_failure_compensates_the_stack_newest_first_and_groups_concurrently(
    database: str,
) -> None:
    shop = Shop()
    checkout = build(shop)
    order = Order(id="9", total=5000, lines=("a",))
    async with Runtime(database, sagas=[checkout]) as rt:
        handle = await rt.spawn(checkout, order, saga_id="f")
        with pytest.raises(SagaCompensated) as raised:
            await handle.result(timeout=WAIT)
        info = await rt.status("f")
    # The declined charge took no effect: it is not compensated. Its sibling branch was
    # let finish, and is compensated first (its group is the newest), then the rest.
    assert raised.value.step == "charge"
    assert raised.value.error is not None
    assert "over the limit" in raised.value.error.message
    assert shop.undone == [
        ("f:reserve#2:compensate", "GIFT-WRAP"),
        ("f:reserve:compensate", "A"),
        ("f:create_order:compensate", "o-9"),
    ]
    assert info.failed_step == "charge"
    assert shop.effects["f:charge"] == 0


async def test_the_seed_style_try_except_compensates_by_hand(tmp_path: Path) -> None:
    """The seed's checkoutWorkflow: compensating steps run in an except block."""
    shop = Shop()

    async def charge(ctx: StepContext, total: int) -> None:
        raise Declined("no")

    async def create(ctx: StepContext, order_id: str) -> None:
        await shop.effect(ctx, None)

    async def cancel(ctx: StepContext, order_id: str) -> None:
        await shop.effect(ctx, None)

    async def by_hand(ctx: SagaContext, order: Order) -> None:
        await ctx.step("create_order", create, order.id)
        try:
            await ctx.step("charge_payment", charge, order.total)
        except StepFailedError as failure:
            failures.append(failure)
            await ctx.step("cancel_order", cancel, order.id)
            raise

    failures: list[StepFailedError] = []
    saga = Saga("by_hand", by_hand, input_type=Order)
    async with Runtime(tmp_path / "s.db", sagas=[saga]) as rt:
        with pytest.raises(SagaCompensated) as raised:
            await (await rt.spawn(saga, ORDER, saga_id="h")).result(timeout=WAIT)
    assert raised.value.step == "charge_payment"
    assert [(f.step, f.ambiguous) for f in failures] == [("charge_payment", False)]  # no effect
    assert dict(shop.effects) == {"h:create_order": 1, "h:cancel_order": 1}


async def test_step_failed_error_says_whether_the_step_may_have_taken_effect(
    tmp_path: Path,
) -> None:
    seen: list[tuple[str, bool, str]] = []

    async def flaky(ctx: StepContext) -> None:
        raise ConnectionError("503")

    async def declined(ctx: StepContext) -> None:
        raise Declined("no")

    async def body(ctx: SagaContext, _: Any) -> str:
        for name, action in (("flaky", flaky), ("declined", declined)):
            try:
                await ctx.step(
                    name, action, retry=RetryPolicy(maximum_attempts=2, initial_interval=0)
                )
            except StepFailedError as exc:
                seen.append((exc.step, exc.ambiguous, exc.error.type))
        return "carried on"

    saga = Saga("errors", body)
    async with Runtime(tmp_path / "s.db", sagas=[saga]) as rt:
        assert await (await rt.spawn(saga, None, saga_id="e")).result(timeout=WAIT) == "carried on"
        info = await rt.status("e")
    assert seen == [
        ("flaky", True, "builtins.ConnectionError"),
        ("declined", False, "tests.runtime.test_code_sagas.Declined"),
    ]
    assert [s.attempts for s in info.steps] == [2, 1]
    assert [s.status for s in info.steps] == [StepStatus.AMBIGUOUS, StepStatus.FAILED]


async def test_parallel_branches_run_at_once_and_a_failure_lets_the_others_finish(
    tmp_path: Path,
) -> None:
    shop = Shop()
    slow = shop.gate("p:slow")

    async def fail_fast(ctx: StepContext) -> None:
        await shop.entered["p:slow"].wait()  # the slow branch started first: concurrently
        raise Declined("no")

    async def slow_step(ctx: StepContext) -> str:
        value: str = await shop.effect(ctx, "done")
        return value

    async def undo(ctx: StepContext, result: str | None) -> None:
        await shop.undo(ctx, result)

    async def body(ctx: SagaContext, _: Any) -> None:
        await ctx.parallel(
            ctx.step("slow", slow_step, compensate=undo), ctx.step("fast", fail_fast)
        )

    saga = Saga("fan_out", body)
    async with Runtime(tmp_path / "s.db", sagas=[saga]) as rt:
        handle = await rt.spawn(saga, None, saga_id="p")
        await shop.entered["p:slow"].wait()
        slow.set()
        with pytest.raises(SagaCompensated) as raised:
            await handle.result(timeout=WAIT)
    assert raised.value.step == "fast"
    assert shop.effects["p:slow"] == 1  # not interrupted: it finished, then was undone
    assert shop.undone == [("p:slow:compensate", "done")]


def packing(shop: Shop) -> Saga:
    """A child saga of one compensable step: it packs the order's box."""

    async def pack(ctx: StepContext, order: Order) -> str:
        value: str = await shop.effect(ctx, f"box-{order.id}")
        return value

    async def unpack(ctx: StepContext, order: Order, box: str | None) -> None:
        await shop.undo(ctx, box)

    async def fulfil(ctx: SagaContext, order: Order) -> str:
        box: str = await ctx.step("pack", pack, order, compensate=unpack)
        return box

    return Saga("fulfilment", fulfil, input_type=Order)


async def test_a_child_saga_runs_once_and_a_completed_child_is_compensated_as_a_unit(
    database: str,
) -> None:
    shop = Shop()
    fulfilment = packing(shop)

    async def fails_after_child(ctx: SagaContext, order: Order) -> None:
        box = await ctx.child(fulfilment, order)
        assert box == "box-1"
        await ctx.step("charge", _declined)

    parent = Saga("parent", fails_after_child, input_type=Order)
    async with Runtime(database, sagas=[parent, fulfilment]) as rt:
        with pytest.raises(SagaCompensated):
            await (await rt.spawn(parent, Order(id="1", total=1), saga_id="par")).result(
                timeout=WAIT
            )
        info = await rt.status("par")
        child = await until_status(rt, "par:fulfilment", SagaStatus.COMPENSATED)
    assert shop.effects == Counter({"par:fulfilment:pack": 1})
    # The child undid its own step with its own key, and ended compensated.
    assert shop.undone == [("par:fulfilment:pack:compensate", "box-1")]
    assert info.children == ("par:fulfilment",)
    assert child.parent_id == "par"
    assert info.steps[0].kind is CallKind.CHILD


class CrashAfterAskingTheChild(DelegatingStore):
    """Loses the parent's record that it asked its child to compensate, once the child has
    rolled back: as a crash between the request and that record would."""

    def __init__(self, inner: SqliteStore, parent: str, child: str) -> None:
        super().__init__(inner)
        self.parent, self.child = parent, child
        self.child_ended = anyio.Event()
        self.crashed = False

    async def save(
        self,
        state: SagaState,
        event: Event,
        *,
        consumed: int | None = None,
        deliver: InboxItem | None = None,
    ) -> None:
        asking = state.saga_id == self.parent and isinstance(event, CompensationWaiting)
        if asking and not self.crashed:
            self.crashed = True
            with anyio.fail_after(WAIT):
                await self.child_ended.wait()
            raise StoreError("the write was lost with the process")
        await self.inner.save(state, event, consumed=consumed, deliver=deliver)
        if state.saga_id == self.child and state.status.is_terminal:
            self.child_ended.set()


async def test_a_child_that_rolled_back_before_its_parent_recorded_asking_it_counts_as_undone(
    tmp_path: Path,
) -> None:
    # The parent runs its compensation of the child again after the crash; the child
    # has ended and takes no more requests: that end is the compensation's outcome.
    shop = Shop()
    fulfilment = packing(shop)

    async def fails_after_child(ctx: SagaContext, order: Order) -> None:
        await ctx.child(fulfilment, order)
        await ctx.step("charge", _declined)

    parent = Saga("parent", fails_after_child, input_type=Order)
    store = CrashAfterAskingTheChild(SqliteStore(tmp_path / "s.db"), "par", "par:fulfilment")
    async with Runtime(store, sagas=[parent, fulfilment]) as rt:
        handle = await rt.spawn(parent, Order(id="1", total=1), saga_id="par")
        with pytest.raises(SagaCompensated):
            await handle.result(timeout=WAIT)
        info = await rt.status("par")
    assert store.crashed
    assert info.steps[0].kind is CallKind.CHILD
    assert info.steps[0].compensation is CompensationStatus.COMPENSATED
    assert shop.undone == [("par:fulfilment:pack:compensate", "box-1")]  # undone once


async def _declined(ctx: StepContext) -> None:
    raise Declined("declined")


async def test_a_compensated_child_fails_its_call_definitively(tmp_path: Path) -> None:
    async def child_body(ctx: SagaContext, _: Any) -> None:
        await ctx.step("charge", _declined)

    child = Saga("child", child_body)
    caught: list[StepFailedError] = []

    async def parent_body(ctx: SagaContext, _: Any) -> str:
        try:
            await ctx.child(child, None, saga_id="the-child")
        except StepFailedError as exc:
            caught.append(exc)
        return "handled"

    parent = Saga("parent", parent_body)
    async with Runtime(tmp_path / "s.db", sagas=[parent, child]) as rt:
        assert await (await rt.spawn(parent, None, saga_id="p")).result(timeout=WAIT) == "handled"
    assert len(caught) == 1
    assert not caught[0].ambiguous
    assert caught[0].step == "child"


async def test_waits_hold_no_actor_and_survive_a_restart(tmp_path: Path) -> None:
    clock = VirtualClock()
    shop = Shop()

    async def note(ctx: StepContext, what: str) -> None:
        await shop.effect(ctx, what)

    async def body(ctx: SagaContext, _: Any) -> dict[str, Any]:
        await ctx.step("before", note, "x")
        woke = await ctx.sleep(3600)
        approval = await ctx.wait_for_signal("approval", timeout=86_400)
        await ctx.step("after", note, "y")
        return {"woke": woke, "approval": approval}

    saga = Saga("waits", body)
    db = tmp_path / "s.db"
    async with Runtime(db, sagas=[saga], clock=clock) as rt:
        await rt.spawn(saga, None, saga_id="w")
        await until_status(rt, "w", SagaStatus.WAITING)
        await until(lambda: _settled(rt), what="the actor to passivate")
    async with Runtime(db, sagas=[saga], clock=clock) as rt:
        assert rt.live_actors == 0
        clock.advance(3600)
        await until_status(rt, "w", SagaStatus.WAITING, waiting_for="approval")
        await until(lambda: _settled(rt), what="the actor to passivate again")
        await rt.signal("w", "approval", {"ok": True})
        output = await rt.handle("w").result(timeout=WAIT)
    assert output == {"woke": 1_750_003_600.0, "approval": {"ok": True}}
    assert shop.effects == Counter({"w:before": 1, "w:after": 1})


async def _settled(rt: Runtime) -> bool:
    return rt.live_actors == 0


async def test_a_signal_sent_before_the_wait_is_kept_for_it(tmp_path: Path) -> None:
    shop = Shop()
    gate = shop.gate("k:first")

    async def first(ctx: StepContext) -> None:
        await shop.effect(ctx, None)

    async def body(ctx: SagaContext, _: Any) -> Any:
        await ctx.step("first", first)
        return await ctx.wait_for_signal("go")

    saga = Saga("early", body)
    async with Runtime(tmp_path / "s.db", sagas=[saga]) as rt:
        handle = await rt.spawn(saga, None, saga_id="k")
        await shop.entered["k:first"].wait()
        await rt.signal("k", "go", [1, 2])
        gate.set()
        assert await handle.result(timeout=WAIT) == [1, 2]


async def test_a_cancelled_code_saga_compensates_what_may_have_taken_effect(
    database: str,
) -> None:
    shop = Shop()
    shop.gate("c:reserve#2")
    checkout = build(shop)
    async with Runtime(database, sagas=[checkout]) as rt:
        handle = await rt.spawn(checkout, ORDER, saga_id="c")
        await shop.entered["c:reserve#2"].wait()
        await rt.cancel("c", reason="customer withdrew")
        with pytest.raises(SagaCompensated) as raised:
            await handle.result(timeout=WAIT)
    # The interrupted step may have taken effect: compensated with None.
    assert raised.value.error is not None
    assert raised.value.error.type == "saga.Cancelled"
    assert shop.undone == [
        ("c:reserve#2:compensate", None),
        ("c:reserve:compensate", "A"),
        ("c:create_order:compensate", "o-42"),
    ]


async def test_a_runtime_left_mid_step_resumes_that_step_and_nothing_before_it(
    tmp_path: Path,
) -> None:
    shop = Shop()
    shop.gate("r:charge")
    checkout = build(shop)
    db = tmp_path / "s.db"
    async with Runtime(db, sagas=[checkout]) as rt:
        await rt.spawn(checkout, ORDER, saga_id="r")
        await shop.entered["r:charge"].wait()  # mid-step: the runtime is abandoned here
    del shop.gates["r:charge"]
    async with Runtime(db, sagas=[checkout]) as rt:
        receipt = await rt.handle("r").result(timeout=WAIT)
    assert receipt.order_id == "o-42"
    # Completed steps did not run again; the interrupted one ran again with its key.
    assert shop.effects["r:create_order"] == 1
    assert shop.effects["r:reserve"] == 1
    assert shop.log.count("r:charge") == 2


async def test_recorded_values_are_the_same_on_replay(tmp_path: Path) -> None:
    clock = VirtualClock()
    seen: list[tuple[Any, ...]] = []

    async def body(ctx: SagaContext, _: Any) -> str:
        values = (ctx.now(), ctx.uuid(), ctx.random())
        seen.append(values)
        await ctx.sleep(10)
        return str(values[1])

    saga = Saga("values", body)
    db = tmp_path / "s.db"
    async with Runtime(db, sagas=[saga], clock=clock) as rt:
        await rt.spawn(saga, None, saga_id="v")
        await until_status(rt, "v", SagaStatus.WAITING)
    clock.advance(60)
    async with Runtime(db, sagas=[saga], clock=clock) as rt:
        output = await rt.handle("v").result(timeout=WAIT)
    assert len(seen) == 2
    assert seen[0] == seen[1]
    assert output == str(seen[0][1])


NOTE_ORDER: list[str] = []


async def _note(ctx: StepContext) -> None:
    NOTE_ORDER.append(ctx.idempotency_key)


def _body_of(names: list[str]) -> Callable[[SagaContext, Any], Awaitable[None]]:
    async def body(ctx: SagaContext, _: Any) -> None:
        for name in names:
            await ctx.step(name, _note)
        await ctx.wait_for_signal("go")

    return body


@pytest.mark.parametrize(
    ("after", "position", "recorded", "new"),
    [
        (["a", "x", "b"], 2, "step 'b'", "step 'x'"),  # a step inserted
        (["a"], 2, "step 'b'", "signal 'go'"),  # a step removed
        (["a", "c"], 2, "step 'b'", "step 'c'"),  # renamed
        (["b", "a"], 1, "step 'a'", "step 'b'"),  # reordered
    ],
    ids=["inserted", "removed", "renamed", "reordered"],
)
async def test_a_changed_body_suspends_the_saga_and_runs_nothing(
    tmp_path: Path, after: list[str], position: int, recorded: str, new: str
) -> None:
    NOTE_ORDER.clear()
    db = tmp_path / "s.db"
    before = Saga("changing", _body_of(["a", "b"]))
    async with Runtime(db, sagas=[before]) as rt:
        await rt.spawn(before, None, saga_id="n")
        await until_status(rt, "n", SagaStatus.WAITING, waiting_for="go")
    assert NOTE_ORDER == ["n:a", "n:b"]
    changed = Saga("changing", _body_of(after))
    async with Runtime(db, sagas=[changed]) as rt:
        await rt.signal("n", "go", None)  # the saga runs again: its body replays
        info = await until_status(rt, "n", SagaStatus.SUSPENDED)
    assert NOTE_ORDER == ["n:a", "n:b"]  # nothing ran, nothing ran twice
    assert info.suspended_reason is not None
    assert f"at call {position}: the history has {recorded}, the body now makes {new}" in (
        info.suspended_reason
    )
    async with Runtime(db, sagas=[before]) as rt:  # the old code back: it carries on
        await rt.resume("n")
        await rt.handle("n").result(timeout=WAIT)  # with the signal it kept
    assert NOTE_ORDER == ["n:a", "n:b"]


async def test_a_body_that_branches_on_the_wall_clock_is_caught(tmp_path: Path) -> None:
    NOTE_ORDER.clear()
    flip = {"value": True}

    async def body(ctx: SagaContext, _: Any) -> None:
        await ctx.step("first", _note)
        if flip["value"]:  # stands for `time.time() > ...`: not recorded
            await ctx.step("left", _note)
        else:
            await ctx.step("right", _note)
        await ctx.wait_for_signal("go")

    saga = Saga("flips", body)
    db = tmp_path / "s.db"
    async with Runtime(db, sagas=[saga]) as rt:
        await rt.spawn(saga, None, saga_id="b")
        await until_status(rt, "b", SagaStatus.WAITING)
    flip["value"] = False
    async with Runtime(db, sagas=[saga]) as rt:
        await rt.signal("b", "go", None)
        info = await until_status(rt, "b", SagaStatus.SUSPENDED)
    assert "the history has step 'left', the body now makes step 'right'" in str(
        info.suspended_reason
    )
    assert NOTE_ORDER == ["b:first", "b:left"]


async def test_patched_keeps_old_instances_on_the_old_path(tmp_path: Path) -> None:
    NOTE_ORDER.clear()
    db = tmp_path / "s.db"

    async def old(ctx: SagaContext, _: Any) -> None:
        await ctx.step("first", _note)
        await ctx.step("old_way", _note)
        await ctx.wait_for_signal("go")
        await ctx.step("last", _note)

    async def new(ctx: SagaContext, _: Any) -> None:
        await ctx.step("first", _note)
        if ctx.patched("new-way"):
            await ctx.step("new_way", _note)
        else:
            await ctx.step("old_way", _note)
        await ctx.wait_for_signal("go")
        await ctx.step("last", _note)

    async with Runtime(db, sagas=[Saga("patching", old)]) as rt:
        await rt.spawn("patching", None, saga_id="before")
        await until_status(rt, "before", SagaStatus.WAITING)
    patched = Saga("patching", new)
    async with Runtime(db, sagas=[patched]) as rt:
        await rt.spawn(patched, None, saga_id="after")
        for sid in ("before", "after"):
            await until_status(rt, sid, SagaStatus.WAITING)
            await rt.signal(sid, "go", None)
            await rt.handle(sid).result(timeout=WAIT)
        before = await rt.status("before")
    # The instance recorded before the patch replays without a NonDeterminismError and
    # keeps the old path; the new one takes the new path.
    assert NOTE_ORDER == [
        "before:first",
        "before:old_way",
        "after:first",
        "after:new_way",
        "before:last",
        "after:last",
    ]
    assert before.status is SagaStatus.COMPLETED


async def test_a_code_sagas_stored_snapshot_holds_only_its_open_calls(tmp_path: Path) -> None:
    async def step(ctx: StepContext, i: int) -> int:
        return i

    async def body(ctx: SagaContext, _: Any) -> int:
        total = 0
        for i in range(200):
            total += await ctx.step("add", step, i)
        await ctx.wait_for_signal("go")
        return total

    saga = Saga("long", body)
    db = tmp_path / "s.db"
    async with Runtime(db, sagas=[saga]) as rt:
        await rt.spawn(saga, None, saga_id="l")
        info = await until_status(rt, "l", SagaStatus.WAITING)
        assert len(info.steps) == 201
        with sqlite3.connect(db) as conn:
            (snapshot,) = conn.execute("SELECT snapshot FROM sagas WHERE saga_id='l'").fetchone()
        stored = msgspec.json.decode(snapshot)
        assert stored["partial"] is True
        assert [s["call"]["kind"] for s in stored["steps"]] == ["signal"]  # the open one
        assert len(snapshot) < 1000
        await rt.signal("l", "go", None)
        assert await rt.handle("l").result(timeout=WAIT) == sum(range(200))


async def test_unserializable_arguments_raise_payload_error_in_the_body(tmp_path: Path) -> None:
    caught: list[str] = []

    async def body(ctx: SagaContext, _: Any) -> str:
        try:
            await ctx.step("bad", _note_any, object())
        except Exception as exc:
            caught.append(type(exc).__name__)
        return "ok"

    saga = Saga("bad_args", body)
    async with Runtime(tmp_path / "s.db", sagas=[saga]) as rt:
        assert await (await rt.spawn(saga, None, saga_id="a")).result(timeout=WAIT) == "ok"
    assert caught == ["PayloadError"]


async def _note_any(ctx: StepContext, value: Any) -> None:
    return None


async def test_a_body_awaiting_something_else_is_refused_and_compensated(tmp_path: Path) -> None:
    async def body(ctx: SagaContext, _: Any) -> None:
        await anyio.lowlevel.checkpoint()  # not a ctx call: the body must stay deterministic

    saga = Saga("foreign", body)
    async with Runtime(tmp_path / "s.db", sagas=[saga]) as rt:
        with pytest.raises(SagaCompensated) as raised:
            await (await rt.spawn(saga, None, saga_id="x")).result(timeout=WAIT)
    assert raised.value.error is not None
    assert "may await only ctx calls" in raised.value.error.message


def test_non_determinism_error_names_position_and_calls() -> None:
    error = NonDeterminismError("s", 3, "step 'a'", "step 'b'")
    assert (error.position, error.recorded, error.new) == (3, "step 'a'", "step 'b'")
    assert "at call 3" in str(error)
