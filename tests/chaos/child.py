"""The child process of the SIGKILL chaos test: a runtime that its parent kills at random.

Run as `python -m tests.chaos.child --db D --ledger L --count N --seed S ...`:
it opens a `Runtime` on D (which resumes whatever its killed predecessor left
unfinished), prints OPEN, spawns sagas `chaos-00000` .. (exactly-once: those
that exist are looked up; a spawn refused by a store fault is tried again),
acknowledging each in the ledger once `spawn` returned, prints READY, waits
for them all and prints DONE, unless it is killed first.

Meanwhile the store misbehaves: each write fails before SQLite, or commits
and loses its acknowledgement, with probability `--fault-rate`; and a second
connection takes SQLite's write lock for 60-120 ms at random moments (about
every `--lock-every` seconds), longer than the store's 50 ms busy timeout.
Every injected fault and every write SQLite refused goes to the ledger.

Each saga's plan comes from its id and the seed (`plan_of`), so the parent
knows how every saga must end.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from actors import RestartWithBackoff
from runtime import Runtime, SagaCompensated, SqliteStore, StoreError
from saga import Saga, StepContext
from saga.engine import Event

from .checkout import (
    REAL,
    Hooks,
    Ledger,
    Order,
    Where,
    build_checkout,
    make_order,
    random_plan,
)
from .faults import FaultBoard, FaultKind, FaultyStore, WriteLock
from .ledger import SqliteLedger
from .rig import WALL_CLOCK_FAULTS

OPEN = "OPEN"
READY = "READY"
DONE = "DONE"
BUSY_TIMEOUT = 0.05
MAX_PAUSE = 0.004
SUPERVISION = RestartWithBackoff(
    min_backoff=0.005, max_backoff=0.05, random_factor=0.2, max_restarts=5, within=10.0
)
SPAWN_TRIES = 100


def saga_id(index: int) -> str:
    return f"chaos-{index:05d}"


def plan_of(seed: int, sid: str) -> Order:
    """The order (and plan) of saga `sid`: the same in every process.

    No `Fault.TIMEOUT`: a hang lasts the step's whole timeout, too slow here.
    """
    rng = random.Random(f"{seed}:{sid}")
    plan = random_plan(rng, faults=WALL_CLOCK_FAULTS)
    return make_order(sid, plan, amount=100 + int(sid[-5:]))


class Pauses:
    """Small random pauses around each effect, so that kills land inside steps."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    async def checkpoint(self, ctx: StepContext, where: Where) -> None:
        await anyio.sleep(self.rng.uniform(0, MAX_PAUSE))


def checkout_saga(ledger: Ledger, hooks: Hooks | None = None) -> Saga:
    return build_checkout(ledger, hooks, REAL)


def _say(line: str) -> None:
    print(line, flush=True)


async def _locker(path: Path, ledger: SqliteLedger, rng: random.Random, every: float) -> None:
    lock = WriteLock(path)
    while True:
        await anyio.sleep(rng.expovariate(1 / every))  # the chaos schedule
        await lock.acquire()
        ledger.fault(str(FaultKind.LOCKED))
        try:
            await anyio.sleep(rng.uniform(0.06, 0.12))  # held past the busy timeout
        finally:
            await lock.release()


async def _spawn(rt: Runtime, saga: Saga, order: Order, ledger: SqliteLedger) -> None:
    for _ in range(SPAWN_TRIES):
        try:
            await rt.spawn(saga, order, saga_id=order.order_id)
        except StoreError:
            continue  # a store fault: not acknowledged; deliver the spawn again
        ledger.ack(order.order_id)
        return


async def _run(args: argparse.Namespace) -> None:
    ledger = SqliteLedger(args.ledger)
    rng = random.Random(args.seed)
    saga = checkout_saga(ledger, Pauses(random.Random(args.seed + 1)))
    board = FaultBoard()
    faults = random.Random(args.seed + 2)

    def choose(sid: str, event: Event) -> FaultKind | None:
        if faults.random() >= args.fault_rate:
            return None
        return faults.choice((FaultKind.FAILED_WRITE, FaultKind.LOST_ACK))

    board.choose = choose
    board.on_fault = lambda kind, sid: ledger.fault(kind, sid)
    store = FaultyStore(SqliteStore(args.db, busy_timeout=BUSY_TIMEOUT), board)
    try:
        async with (
            Runtime(
                store,
                sagas=[saga],
                supervision=SUPERVISION,
                rng=random.Random(args.seed + 3),
            ) as rt,
            anyio.create_task_group() as tg,
        ):
            _say(OPEN)
            if args.lock_every > 0:
                tg.start_soon(_locker, Path(args.db), ledger, rng, args.lock_every)
            orders = [plan_of(args.plan_seed, saga_id(i)) for i in range(args.count)]
            async with anyio.create_task_group() as spawns:
                for order in orders:
                    spawns.start_soon(_spawn, rt, saga, order, ledger)
            _say(READY)
            for order in orders:
                with contextlib.suppress(SagaCompensated):
                    await rt.handle(order.order_id).result()
            _say(DONE)
            tg.cancel_scope.cancel()
    finally:
        ledger.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--plan-seed", type=int, required=True)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--lock-every", type=float, default=0.0)
    anyio.run(_run, parser.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
