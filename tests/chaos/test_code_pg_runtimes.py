"""Code sagas on three runtime processes sharing one PostgreSQL database, one SIGKILLed.

Three `cart_child.py --dsn` runtimes spawn the same carts (exactly one start
each, wherever it lands) and run them: loops, a parallel group, a child saga
(which may run on another runtime than its parent) and a durable sleep. Once
sagas are under way, the runtime holding the most live ones is SIGKILLed; the
others take its sagas over when its lease lapses and finish every cart. The
side-effect ledger must then satisfy the chaos suite's cart invariants
(`test_code_sigkill.check_cart`).
"""

from __future__ import annotations

import contextlib
import random
import sys
from pathlib import Path

import anyio
import asyncpg

from runtime import Runtime, SagaCompensated
from runtime.postgres import PostgresStore
from tests.child_process import Child, open_child
from tests.runtime.ledger import Record

from .cart_child import DONE, OPEN
from .carts import cart_id, cart_of, cart_sagas
from .ledger import SqliteLedger
from .test_code_sigkill import check_cart

CARTS = 90
SCHEMA = "carts"
LEASE = 1.0


async def live_by_pid(dsn: str) -> dict[int, int]:
    """Live sagas per runtime process (a runtime's default name is host:pid)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            f"SELECT r.name, count(*) FROM {SCHEMA}.sagas s "
            f"JOIN {SCHEMA}.runtimes r ON r.runtime_id = s.owner "
            "WHERE s.status IN ('running', 'waiting', 'compensating') GROUP BY r.name"
        )
    finally:
        await conn.close()
    return {int(name.rpartition(":")[2]): count for name, count in rows}


async def test_code_sagas_on_three_pg_runtimes_survive_a_sigkill(
    pg_dsn: str, tmp_path: Path
) -> None:
    ledger_path = tmp_path / "ledger.db"
    SqliteLedger(ledger_path).close()
    async with PostgresStore(pg_dsn, schema=SCHEMA):
        pass  # the schema exists before three runtimes race to create it
    rng = random.Random(20261206)
    async with contextlib.AsyncExitStack() as stack:
        children: list[Child] = []
        for n in range(3):
            command = [sys.executable, "-m", "tests.chaos.cart_child", "--dsn", pg_dsn]
            command += ["--schema", SCHEMA, "--lease", str(LEASE), "--ledger", str(ledger_path)]
            command += ["--count", str(CARTS), "--seed", str(rng.randrange(2**32))]
            child = await stack.enter_async_context(
                open_child(command, tmp_path / f"rt-{n}.stderr", timeout=90)
            )
            children.append(child)
        for child in children:
            await child.expect(OPEN)
        held: dict[int, int] = {}
        with anyio.fail_after(60):
            # Another process's database: no event crosses to here, so look again.
            while max(held.values(), default=0) < 5:
                await anyio.sleep(0.02)
                held = await live_by_pid(pg_dsn)
        victim = next(c for c in children if c.pid == max(held, key=held.__getitem__))
        assert await victim.kill()
        for child in children:
            if child is not victim:
                await child.expect(DONE)  # every cart ended, wherever it ran
                assert await child.process.wait() == 0

    ledger = SqliteLedger(ledger_path)
    cart, fulfil = cart_sagas(ledger, random.Random(0))
    problems: list[str] = []
    records: list[Record] = []
    try:
        acked = ledger.acks()
        async with Runtime(PostgresStore(pg_dsn, schema=SCHEMA), sagas=[cart, fulfil]) as rt:
            for sid in (cart_id(i) for i in range(CARTS)):
                if sid not in acked:
                    problems.append(f"{sid}: no runtime acknowledged its spawn")
                    continue
                with contextlib.suppress(SagaCompensated):
                    await rt.result(sid, timeout=30)
                info, child_info = await rt.status(sid), await rt.status(f"{sid}:fulfil")
                mine = [r for r in ledger.records() if r.saga_id.removesuffix(":fulfil") == sid]
                records += mine
                problems += check_cart(cart_of(sid), info.status, child_info.status, mine)
    finally:
        ledger.close()
    assert not problems, "\n".join(problems[:40])
    pids = {r.pid for r in records}
    assert victim.pid in pids  # the victim ran effects before it died
    assert len(pids) == 3  # every runtime ran some carts' steps
    moved = {r.saga_id for r in records if r.pid == victim.pid} & {
        r.saga_id for r in records if r.pid != victim.pid
    }
    assert moved, "no saga the victim had started was finished by another runtime"
    print(f"{CARTS} carts on 3 PostgreSQL runtimes; {len(moved)} taken over from the victim")
