"""SIGKILL chaos: a child process running hundreds of sagas is killed at random moments.

Each cycle starts `child.py` on the same SQLite file (it resumes what the
last one left), lets it spawn and run sagas under random store faults and a
second connection grabbing the write lock, and SIGKILLs it after a random
delay: while it opens, spawns, runs steps, writes. Before anything else runs
on the file, every saga whose spawn was acknowledged must be in it. Then a
last runtime, in this process and without faults, spawns every saga again
(exactly-once), resumes the suspended ones and runs them all to their end.

Every saga is then checked against its history, the side-effect ledger
(which survives the kills) and the model of its plan (`invariants.py`); both
files must pass `PRAGMA integrity_check`. The figures are printed (`-s`).

SAGALOOP_CHAOS_SEED replays a run; SAGALOOP_SOAK=1 enables the long soak.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from runtime import Runtime, SqliteStore
from saga import Saga
from tests.child_process import Child, open_child

from .checkout import Order
from .child import OPEN, checkout_saga, plan_of, saga_id
from .drive import drive_to_end, results
from .faults import FaultBoard, FaultyStore
from .invariants import by_saga, check_output, check_saga, integrity, read_store
from .ledger import SqliteLedger

SEED = int(os.environ.get("SAGALOOP_CHAOS_SEED", "20250611"))
SOAK = os.environ.get("SAGALOOP_SOAK") == "1"
CHILD_TIMEOUT = 30.0


@asynccontextmanager
async def run_child(workdir: Path, name: str, args: list[str]) -> AsyncIterator[Child]:
    command = [sys.executable, "-m", "tests.chaos.child", *args]
    async with open_child(command, workdir / f"{name}.stderr", timeout=CHILD_TIMEOUT) as child:
        yield child


@dataclass
class Figures:
    seed: int
    sagas: int = 0
    acknowledged: int = 0
    cycles: int = 0
    crashes: int = 0
    clean_exits: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    recoveries: int = 0
    suspensions: int = 0
    resumed_by_operator: int = 0
    reruns: int = 0
    """Ledger records repeating an (idempotency key, attempt): the kill came after the effect."""
    outcomes: Counter[str] = field(default_factory=Counter)
    violations: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        faults = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.faults.items()))
        outcomes = ", ".join(f"{status}: {n}" for status, n in sorted(self.outcomes.items()))
        return (
            f"SIGKILL chaos (seed {self.seed}): {self.sagas} sagas ({self.acknowledged} "
            f"acknowledged to a child), {self.cycles} cycles, {self.crashes} crashes "
            f"(SIGKILL), {self.clean_exits} clean exits; faults injected: {faults or 'none'}; "
            f"{self.recoveries} recoveries, {self.suspensions} suspensions, "
            f"{self.resumed_by_operator} resumed by the operator, {self.reruns} steps re-run; "
            f"outcomes: {outcomes}; {self.violations} violations; {self.seconds:.1f} s"
        )


async def spawn(rt: Runtime, saga: Saga, order: Order) -> None:
    await rt.spawn(saga, order, saga_id=order.order_id)


async def sigkill_chaos(
    workdir: Path,
    *,
    seed: int,
    sagas: int,
    cycles: int,
    fault_rate: float,
    lock_every: float,
    max_delay: float,
) -> tuple[Figures, list[str]]:
    started = time.monotonic()
    db, ledger_path = workdir / "sagas.db", workdir / "ledger.db"
    rng = random.Random(seed)
    figures = Figures(seed=seed, cycles=cycles)
    for cycle in range(cycles):
        # Each cycle spawns a few more (spawning the earlier ones again is a no-op).
        count = math.ceil(sagas * (cycle + 1) / cycles)
        args = [
            *("--db", str(db), "--ledger", str(ledger_path), "--count", str(count)),
            *("--seed", str(rng.randrange(2**32)), "--plan-seed", str(seed)),
            *("--fault-rate", str(fault_rate), "--lock-every", str(lock_every)),
        ]
        async with run_child(workdir, f"cycle-{cycle}", args) as child:
            await child.expect(OPEN)
            await anyio.sleep(rng.uniform(0, max_delay))  # the chaos schedule
            killed = await child.kill()
        figures.crashes += killed
        figures.clean_exits += not killed

    violations: list[str] = []
    ledger = SqliteLedger(ledger_path)
    try:
        # Before anything else touches the file: nothing acknowledged is lost.
        acked = ledger.acks()
        figures.acknowledged = len(acked)
        stored = read_store(db)
        violations += [f"acknowledged, then lost: {sid}" for sid in sorted(acked - stored.keys())]

        ids = [saga_id(i) for i in range(sagas)]
        board = FaultBoard()  # no faults: it only reports the writes
        saga = checkout_saga(ledger)
        async with Runtime(
            FaultyStore(SqliteStore(db), board), sagas=[saga], rng=random.Random(seed)
        ) as rt:
            async with anyio.create_task_group() as tg:
                for sid in ids:
                    tg.start_soon(spawn, rt, saga, plan_of(seed, sid))
            figures.resumed_by_operator = await drive_to_end(rt, board, timeout=120.0)
            outputs = await results(rt, ids, timeout=10.0)

        assert integrity(db) == "ok"
        assert integrity(ledger_path) == "ok"
        records = ledger.records()
        figures.faults = ledger.faults()
    finally:
        ledger.close()

    rows = read_store(db)
    grouped = by_saga(records)
    violations += [f"effects of an unknown saga {sid}" for sid in grouped.keys() - rows.keys()]
    violations += [f"missing after the last runtime: {sid}" for sid in set(ids) - rows.keys()]
    for sid, row in sorted(rows.items()):
        checked = check_saga(saga, row, grouped.get(sid, []), final=True)
        violations += checked.violations
        if checked.model is not None:
            check_output(sid, checked.model, outputs.get(sid), violations)
        figures.recoveries += checked.recoveries
        figures.suspensions += checked.suspensions
        figures.outcomes[row.status] += 1
    figures.sagas = len(rows)
    figures.reruns = len(records) - len({(r.kind, r.idempotency_key, r.attempt) for r in records})
    figures.violations = len(violations)
    figures.seconds = time.monotonic() - started
    print(figures)
    for violation in violations[:50]:
        print("  VIOLATION", violation)
    return figures, violations


async def test_sagas_survive_sigkill_chaos(tmp_path: Path) -> None:
    figures, violations = await sigkill_chaos(
        tmp_path,
        seed=SEED,
        sagas=300,
        cycles=24,
        fault_rate=0.02,
        lock_every=0.15,
        max_delay=0.3,
    )
    assert not violations, "\n".join(violations[:50])
    # The run exercised what it claims to.
    assert figures.sagas == 300
    assert figures.crashes >= 1, figures
    assert figures.recoveries >= 1, figures
    assert figures.reruns >= 1, figures
    assert figures.faults, figures


@pytest.mark.soak
@pytest.mark.timeout(3600)
@pytest.mark.skipif(not SOAK, reason="set SAGALOOP_SOAK=1 for the long chaos run")
async def test_sagas_survive_sigkill_chaos_soak(tmp_path: Path) -> None:
    figures, violations = await sigkill_chaos(
        tmp_path,
        seed=SEED,
        sagas=3000,
        cycles=300,
        fault_rate=0.02,
        lock_every=0.15,
        max_delay=0.5,
    )
    assert not violations, "\n".join(violations[:50])
    assert figures.crashes >= 150, figures
