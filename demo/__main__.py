"""`python -m demo`: the checkout saga and a refund that waits for a manager.

1. a success; 2. a transient payment failure that is retried; 3. an
out-of-stock failure that compensates in reverse order; 4. a crash: a child
process is SIGKILLed inside a step and this process resumes the saga from
the database to its end; 5. three large refunds waiting for a manager's
approval (approved, rejected, never answered: three days pass on a
virtual clock); 6. the same checkout as code sagas: the seed's
`checkoutWorkflow` with its try/except, beside the version whose runtime
compensates automatically; 7. a code saga SIGKILLed mid-step and resumed
from the database by replaying its body.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio

from runtime import Runtime, SagaCompensated, SagaError, SagaHandle, SagaStatus, VirtualClock

from .checkout import FakeServices, build_checkout, order
from .code_checkout import build_auto_checkout, build_manual_checkout
from .crash_child import CRASH_POINT
from .refund import THREE_DAYS, Approval, Refund, RefundDesk, build_refund


def banner(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 66 - len(title)))


async def show(rt: Runtime, handle: SagaHandle[Any]) -> None:
    try:
        output = await handle.result(timeout=30)
        print(f"result: completed -> {output}")
    except SagaCompensated as exc:
        print(f"result: compensated -> step {exc.step!r} failed: {exc.error}")
    except SagaError as exc:
        print(f"result: {type(exc).__name__} -> {exc}")
    info = await rt.status(handle.saga_id)
    print(f"status: {info.status}   timeline:")
    for line in info.timeline():
        print(f"  {line}")


async def in_process_scenarios(database: Path) -> None:
    services = FakeServices(gateway_failures={"order-1002": 2})
    checkout = build_checkout(services)
    async with Runtime(database, sagas=[checkout]) as rt:
        banner("1. success")
        await show(
            rt, await rt.spawn(checkout, order("order-1001", ("book", 2)), saga_id="order-1001")
        )
        banner("2. transient payment failure, retried")
        await show(
            rt, await rt.spawn(checkout, order("order-1002", ("book", 1)), saga_id="order-1002")
        )
        banner("3. out of stock: compensated in reverse order")
        await show(
            rt, await rt.spawn(checkout, order("order-1003", ("chair", 1)), saga_id="order-1003")
        )
    print("\nside effects, in order:")
    for line in services.log:
        print(f"  {line}")


def crash_child(database: Path, style: str = "list") -> None:
    if style == "list":
        banner("4. crash: SIGKILL mid-saga, resume from the database")
    child = subprocess.Popen(
        [sys.executable, "-m", "demo.crash_child", str(database), style],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if not line.startswith(CRASH_POINT):
        child.kill()
        raise SystemExit(f"the child did not reach the crash point (said {line!r})")
    child.send_signal(signal.SIGKILL)
    child.wait()
    print(f"child pid {child.pid}: {line!r} -> SIGKILLed (exit {child.returncode})")


async def resume_after_crash(database: Path) -> None:
    services = FakeServices()
    async with Runtime(database, sagas=[build_checkout(services)]) as rt:
        print("a new runtime opened the same database and resumed the saga")
        await show(rt, rt.handle("order-1004"))
    print("side effects in this process:", "; ".join(services.log))


async def wait_for_status(rt: Runtime, saga_id: str, status: SagaStatus) -> None:
    with anyio.fail_after(10):
        # The demo polls the store; an application would wait on handle.result().
        while (await rt.status(saga_id)).status is not status:  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def refunds_waiting_for_approval(database: Path) -> None:
    banner("5. large refunds wait for a manager (3 days on a virtual clock)")
    desk = RefundDesk()
    refund = build_refund(desk)
    clock = VirtualClock()
    async with Runtime(database, sagas=[refund], clock=clock) as rt:
        handles = []
        for refund_id in ("rf-1", "rf-2", "rf-3"):
            request = Refund(refund_id=refund_id, order_id="order-1001", amount_cents=25_000)
            handles.append(await rt.spawn(refund, request, saga_id=refund_id))
        for handle in handles:
            await wait_for_status(rt, handle.saga_id, SagaStatus.WAITING)
        page = await rt.list(status=SagaStatus.WAITING, waiting_for="manager_approval")
        print(
            f"waiting for approval: {[s.saga_id for s in page.items]}; "
            f"actors in memory: {rt.live_actors}"
        )
        await rt.signal("rf-1", "manager_approval", Approval(approved=True, manager="ann"))
        await rt.signal("rf-2", "manager_approval", Approval(approved=False, manager="bob"))
        await wait_for_status(rt, "rf-1", SagaStatus.COMPLETED)
        await wait_for_status(rt, "rf-2", SagaStatus.COMPENSATED)
        print("three days pass...")
        clock.advance(THREE_DAYS)
        for handle in handles:
            print(f"\n{handle.saga_id}:")
            await show(rt, handle)
    print("\nrefund desk, in order:")
    for line in desk.log:
        print(f"  {line}")


async def code_sagas(database: Path) -> None:
    banner("6. sagas as code: the seed's try/except, and automatic compensation")
    for build in (build_manual_checkout, build_auto_checkout):
        services = FakeServices()
        saga = build(services)
        async with Runtime(database, sagas=[saga]) as rt:
            print(f"\n{saga.name}: a chair is out of stock")
            await show(rt, await rt.spawn(saga, order("order-2003", ("chair", 1))))
        print("side effects:", "; ".join(services.log))


async def resume_code_saga(database: Path) -> None:
    services = FakeServices()
    async with Runtime(database, sagas=[build_auto_checkout(services)]) as rt:
        print("a new runtime replayed the body against its recorded calls and went on")
        await show(rt, rt.handle("order-2004"))
    print("side effects in this process:", "; ".join(services.log))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sagaloop-demo-") as folder:
        database = Path(folder) / "checkout.db"
        print(f"database: {database} (SQLite, WAL, synchronous=FULL)")
        anyio.run(in_process_scenarios, database)
        crash_child(database)
        anyio.run(resume_after_crash, database)
        anyio.run(refunds_waiting_for_approval, Path(folder) / "refunds.db")
        code_database = Path(folder) / "code.db"
        anyio.run(code_sagas, code_database)
        banner("7. a code saga SIGKILLed mid-step, resumed from the database")
        crash_child(code_database, "code")
        anyio.run(resume_code_saga, code_database)


if __name__ == "__main__":
    main()
