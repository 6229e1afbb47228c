"""A checkout saga, its ledger and a faulty store on one SQLite file, for the in-process tests."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from pathlib import Path

import anyio

from actors import RestartWithBackoff
from runtime import SqliteStore
from saga import StepContext

from .checkout import (
    MISBEHAVIOURS,
    REAL,
    Fault,
    Hooks,
    MemoryLedger,
    Order,
    Timing,
    Where,
    build_checkout,
    make_order,
    random_plan,
)
from .faults import FaultBoard, FaultyStore
from .invariants import by_saga, check_output, check_saga, read_store

WALL_CLOCK_FAULTS = tuple(f for f in MISBEHAVIOURS if f is not Fault.TIMEOUT)
"""On the wall clock a hang lasts the whole step timeout: too slow for these tests."""
UNLIMITED_RESTARTS = RestartWithBackoff(
    min_backoff=0.005, max_backoff=0.05, random_factor=0.2, max_restarts=1_000_000, within=60.0
)


class Gate:
    """Holds service calls just before their effect until `open()`: faults go in meanwhile."""

    def __init__(self, sagas: Iterable[str] | None = None) -> None:
        self.sagas = None if sagas is None else set(sagas)
        self.waiting: set[str] = set()
        self._opened = anyio.Event()
        self._arrived = anyio.Event()

    async def checkpoint(self, ctx: StepContext, where: Where) -> None:
        if where != "before" or self._opened.is_set():
            return
        if self.sagas is not None and ctx.saga_id not in self.sagas:
            return
        self.waiting.add(ctx.saga_id)
        self._arrived.set()
        self._arrived = anyio.Event()
        await self._opened.wait()

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        """Wait until `count` sagas are held."""
        with anyio.fail_after(timeout):
            while len(self.waiting) < count:
                await self._arrived.wait()

    def open(self) -> None:
        self._opened.set()


class Rig:
    def __init__(self, workdir: Path, *, hooks: Hooks | None = None, timing: Timing = REAL) -> None:
        self.db = workdir / "sagas.db"
        self.timing = timing
        self.ledger = MemoryLedger()
        self.board = FaultBoard()
        self.saga = build_checkout(self.ledger, hooks, timing)

    def store(self, *, busy_timeout: float = 5.0) -> FaultyStore:
        """A fresh store on the rig's file (one per runtime), reporting to its board."""
        return FaultyStore(SqliteStore(self.db, busy_timeout=busy_timeout), self.board)

    def orders(self, count: int, *, seed: int, prefix: str = "order") -> list[Order]:
        rng = random.Random(seed)
        faults = WALL_CLOCK_FAULTS if self.timing is REAL else MISBEHAVIOURS
        return [
            make_order(f"{prefix}-{i:03d}", random_plan(rng, faults=faults), amount=100 + i)
            for i in range(count)
        ]

    def violations(
        self, *, final: bool, outputs: Mapping[str, object] | None = None, only: Iterable[str] = ()
    ) -> list[str]:
        """Check every saga (or `only` those) against the ledger and its model."""
        records = by_saga(self.ledger.records())
        rows = read_store(self.db)
        wanted = set(only) or rows.keys()
        found: list[str] = [f"missing: {sid}" for sid in sorted(wanted - rows.keys())]
        for sid in sorted(wanted & rows.keys()):
            checked = check_saga(self.saga, rows[sid], records.get(sid, []), final=final)
            found += checked.violations
            if outputs is not None and checked.model is not None:
                check_output(sid, checked.model, outputs.get(sid), found)
        return found
