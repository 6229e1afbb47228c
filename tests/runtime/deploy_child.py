"""The child process of the deploy simulation: a shop that deploys v2 of its checkout.

    python -m tests.runtime.deploy_child --db D --ledger L --phase v1|both|v2 --count N

`v1` spawns `old-000..` on version 1 only (half stop waiting for an approval,
half back off after a transient failure of their second step) and prints
READY once every spawn is durable, then waits to be killed. `v2` opens the
database with v2 alone (a deploy that forgot v1): it waits until no v1 saga
is running (each one woken, by its retry's timer or because it was running,
is suspended for want of its version; one waiting for its approval sleeps
on), prints their statuses and DONE. `both` registers v1 and v2: it resumes
the sagas suspended for that reason, approves the waiting ones (keyed
signals: a second delivery after a crash is dropped), spawns `new-000..` by
name (so on v2), prints READY, waits for every saga and prints DONE. Each step
writes its version and name to the ledger, keyed by its idempotency key.
"""

from __future__ import annotations

import argparse
import random

import anyio

from runtime import Runtime
from saga import RetryPolicy, Saga, SagaContext, SagaStatus, StepContext

from .ledger import Ledger

READY = "READY"
DONE = "DONE"
QUICK = RetryPolicy(initial_interval=0.2, backoff_coefficient=1.0, maximum_attempts=5)


class Services:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def step(self, label: str, *, flaky: bool = False):  # type: ignore[no-untyped-def]
        async def run(ctx: StepContext, n: int) -> str:
            await anyio.sleep(random.random() * 0.01)  # kills land inside steps too
            self.ledger.record(
                key=ctx.idempotency_key,
                kind="effect",
                saga_id=ctx.saga_id,
                step=label,
                attempt=ctx.attempt,
            )
            if flaky and ctx.attempt == 1:
                raise ConnectionError("the payment service blinked")  # backs off 0.2 s
            return label

        return run


def definitions(services: Services) -> tuple[Saga[int, str], Saga[int, str]]:
    async def body_v1(ctx: SagaContext, n: int) -> str:
        await ctx.step("reserve", services.step("v1:reserve"), n)
        if n % 2 == 0:
            await ctx.wait_for_signal("approved")
        else:
            await ctx.step("charge", services.step("v1:charge", flaky=True), n, retry=QUICK)
        return await ctx.step("ship", services.step("v1:ship"), n)

    async def body_v2(ctx: SagaContext, n: int) -> str:
        await ctx.step("reserve", services.step("v2:reserve"), n)
        await ctx.step("fraud-check", services.step("v2:fraud-check"), n)
        return await ctx.step("ship", services.step("v2:ship"), n)

    return Saga("checkout", body_v1, version=1), Saga("checkout", body_v2, version=2)


async def main(db: str, ledger_path: str, phase: str, count: int) -> None:
    services = Services(Ledger(ledger_path))
    v1, v2 = definitions(services)
    old = [f"old-{n:03d}" for n in range(count)]
    new = [f"new-{n:03d}" for n in range(count // 2)]
    if phase == "v1":
        async with Runtime(db, sagas=[v1]) as rt:
            for n, saga_id in enumerate(old):
                await rt.spawn(v1, n, saga_id=saga_id)
            print(READY, flush=True)
            await anyio.sleep_forever()
    if phase == "v2":
        async with Runtime(db, sagas=[v2]) as rt:
            while True:  # until none runs (a stored state no event announces: polled)
                infos = [await rt.status(saga_id) for saga_id in old]
                if not any(info.status is SagaStatus.RUNNING for info in infos):
                    break
                await anyio.sleep(0.05)
            for info in infos:
                print(info.saga_id, info.status.value, info.suspended_reason, flush=True)
            print(DONE, flush=True)
    if phase == "both":
        async with Runtime(db, sagas=[v1, v2]) as rt:
            for item in (await rt.list(status=SagaStatus.SUSPENDED, limit=1000)).items:
                await rt.resume(item.saga_id)
            await approve(rt, old)
            for n, saga_id in enumerate(new):
                await rt.spawn("checkout", n, saga_id=saga_id)
            print(READY, flush=True)
            for saga_id in old + new:
                print(saga_id, await rt.handle(saga_id).result(timeout=60), flush=True)
            print(DONE, flush=True)


async def approve(rt: Runtime, old: list[str]) -> None:
    for n, saga_id in enumerate(old):
        if n % 2 == 0 and (await rt.status(saga_id)).status.is_live:
            await rt.signal(saga_id, "approved", None, idempotency_key="approve")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--phase", choices=["v1", "both", "v2"], required=True)
    parser.add_argument("--count", type=int, default=40)
    args = parser.parse_args()
    anyio.run(main, args.db, args.ledger, args.phase, args.count)
