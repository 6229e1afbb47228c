"""SIGKILL chaos for code sagas: loops, a parallel group and a child saga, killed at random.

Each cycle starts `cart_child.py` on the same SQLite file (it resumes what the
last one left), lets it spawn and run carts, and SIGKILLs it after a random
delay. Then a last runtime, in this process, spawns every cart again
(exactly-once) and runs them all to their end. The ledger (which survives
the kills) must then show, for every cart: each step's effect exactly where
the cart's body calls it; a completed cart with nothing compensated; a
refused one with every effect compensated, the child first (as a unit, newest
first), then the group, then the loop newest first, and no forward effect
after its first compensation. Nothing acknowledged is lost.

SAGALOOP_CHAOS_SEED replays a run.
"""

from __future__ import annotations

import os
import random
import sys
from collections import defaultdict
from pathlib import Path

import anyio

from runtime import Runtime, SagaCompensated, SagaStatus, SqliteStore
from saga.engine import Recovered
from tests.child_process import open_child
from tests.runtime.ledger import Record

from .cart_child import OPEN
from .carts import Cart, cart_id, cart_of, cart_sagas, expected_steps
from .invariants import integrity, read_store
from .ledger import SqliteLedger

SEED = int(os.environ.get("SAGALOOP_CHAOS_SEED", "20261206"))
CARTS = 60
CYCLES = 10


async def kill_cycles(workdir: Path, rng: random.Random) -> int:
    db, ledger = workdir / "sagas.db", workdir / "ledger.db"
    kills = 0
    for cycle in range(CYCLES):
        count = -(-CARTS * (cycle + 1) // CYCLES)  # a few more carts each cycle
        command = [sys.executable, "-m", "tests.chaos.cart_child", "--db", str(db)]
        command += ["--ledger", str(ledger), "--count", str(count)]
        command += ["--seed", str(rng.randrange(2**32))]
        async with open_child(command, workdir / f"cycle-{cycle}.stderr", timeout=30) as child:
            await child.expect(OPEN)
            await anyio.sleep(rng.uniform(0, 0.25))  # the chaos schedule
            kills += await child.kill()
    return kills


def check_cart(
    cart: Cart, status: SagaStatus, child: SagaStatus, records: list[Record]
) -> list[str]:
    sid = cart.cart_id
    loop, group, picks = expected_steps(cart)
    effects = [r for r in records if r.kind == "effect"]
    undone = [r for r in records if r.kind == "compensation"]
    problems = []
    if {r.idempotency_key for r in effects} != {*loop, *group, *picks}:
        problems.append(f"{sid}: effects {sorted({r.idempotency_key for r in effects})}")
    wanted = SagaStatus.COMPENSATED if cart.refuse else SagaStatus.COMPLETED
    if (status, child) != (wanted, wanted):
        problems.append(f"{sid}: ended {status} with its child {child}, expected {wanted}")
    if not cart.refuse:
        if undone:
            problems.append(
                f"{sid}: completed, yet compensated {[r.idempotency_key for r in undone]}"
            )
        return problems
    first = list(dict.fromkeys(r.idempotency_key for r in undone))
    order = [*reversed(picks), *group, *reversed(loop)]
    within_group = first[len(picks) : len(picks) + 2]
    if sorted(first) != sorted(order) or set(within_group) != set(group):
        problems.append(f"{sid}: compensated {first}, expected {order} (the group in any order)")
    elif [k for k in first if k not in group] != [k for k in order if k not in group]:
        problems.append(f"{sid}: compensated {first}, expected {order} newest first")
    begun = min(r.seq for r in undone)
    late = [r.idempotency_key for r in effects if r.seq > begun]
    if late:
        problems.append(f"{sid}: forward effects {late} after compensation began")
    return problems


async def test_code_sagas_survive_sigkill_chaos(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    kills = await kill_cycles(tmp_path, rng)
    db = tmp_path / "sagas.db"
    ledger = SqliteLedger(tmp_path / "ledger.db")
    problems: list[str] = []
    recovered = 0
    try:
        acked = ledger.acks()
        cart, fulfil = cart_sagas(ledger, random.Random(SEED))
        stored = read_store(db)  # before anything else touches the file
        problems += [f"acknowledged, then lost: {sid}" for sid in sorted(acked - stored.keys())]
        async with Runtime(SqliteStore(db), sagas=[cart, fulfil]) as rt:
            ids = [cart_id(i) for i in range(CARTS)]
            statuses: dict[str, tuple[SagaStatus, SagaStatus]] = {}
            with anyio.fail_after(120):
                for sid in ids:
                    await rt.spawn(cart, cart_of(sid), saga_id=sid)
                for sid in ids:
                    try:
                        picked = await rt.result(sid)
                        if picked != len(cart_of(sid).items):
                            problems.append(f"{sid}: returned {picked}")
                    except SagaCompensated:
                        pass
                    info, child = await rt.status(sid), await rt.status(f"{sid}:fulfil")
                    statuses[sid] = (info.status, child.status)
                    assert child.parent_id == sid
                    recovered += sum(isinstance(h.event, Recovered) for h in info.history)
        records = ledger.records()
    finally:
        ledger.close()
    assert integrity(db) == "ok"
    by_cart: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_cart[record.saga_id.removesuffix(":fulfil")].append(record)
    for sid in ids:
        problems += check_cart(cart_of(sid), *statuses[sid], by_cart[sid])
    assert not problems, "\n".join(problems[:40])
    reruns = len(records) - len({(r.kind, r.idempotency_key, r.attempt) for r in records})
    refused = sum(cart_of(sid).refuse for sid in ids)
    print(
        f"code-saga SIGKILL chaos (seed {SEED}): {CARTS} carts ({refused} refused), {kills} "
        f"kills in {CYCLES} cycles, {recovered} recoveries, {reruns} effects re-run, "
        f"{len(records)} ledger records"
    )
    # The run exercised what it claims to: kills that interrupted live sagas.
    assert kills >= 1
    assert recovered >= 1  # a kill landed while a cart was live, and it was recovered
    assert 0 < refused < CARTS
