"""Helpers of the PostgreSQL scale-out tests: child runtimes, a write audit, the checks.

The audit is a trigger the test installs on the store's `sagas` table. It
records every committed creation, transition ("write"), claim and hand-back
with the runtime that did it and the epoch: a save only commits when its
runtime is the owner at the epoch it holds, so the writer of a transition is
the row's owner before it. From the audit a test proves, per saga, that
every committed transition came from the current owner at the current epoch,
and that a runtime wrote nothing for a saga once another one had taken it.
"""

from __future__ import annotations

import dataclasses
import random
import sqlite3
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from runtime import SagaCompensated
from runtime._codec import decode_event
from runtime._info import saga_info
from runtime._runtime import saga_outcome
from runtime._writes import stored_saga
from runtime.postgres import PostgresStore
from saga import Saga
from saga.engine import Recovered
from saga.store import HistoryEntry
from tests.child_process import Child, open_child

from .crash_child import DONE, READY, build_checkout, plan_for
from .ledger import Ledger, Record
from .pg_child import RUNTIME, SHARED
from .test_crash_recovery import (
    CHILD_TIMEOUT,
    Outcome,
    check_history,
    check_ledger,
    check_outcome,
)

SCHEMA = "sagaloop"


# -- the database ----------------------------------------------------------------

_AUDIT = f"""
CREATE TABLE {SCHEMA}.audit (
    id      bigserial PRIMARY KEY,
    saga_id text NOT NULL,
    kind    text NOT NULL,
    runtime text,
    epoch   bigint NOT NULL,
    seq     bigint NOT NULL,
    status  text NOT NULL
);
CREATE FUNCTION {SCHEMA}.audit_sagas() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {SCHEMA}.audit (saga_id, kind, runtime, epoch, seq, status)
        VALUES (NEW.saga_id, 'create', NEW.owner, NEW.epoch, NEW.seq, NEW.status);
    ELSIF NEW.seq <> OLD.seq THEN
        -- the store writes a transition only as the row's owner at its epoch
        INSERT INTO {SCHEMA}.audit (saga_id, kind, runtime, epoch, seq, status)
        VALUES (NEW.saga_id, 'write', OLD.owner, OLD.epoch, NEW.seq, NEW.status);
    ELSIF NEW.epoch <> OLD.epoch THEN
        INSERT INTO {SCHEMA}.audit (saga_id, kind, runtime, epoch, seq, status)
        VALUES (NEW.saga_id, 'claim', NEW.owner, NEW.epoch, NEW.seq, NEW.status);
    ELSIF NEW.owner IS DISTINCT FROM OLD.owner THEN
        INSERT INTO {SCHEMA}.audit (saga_id, kind, runtime, epoch, seq, status)
        VALUES (NEW.saga_id, 'release', OLD.owner, OLD.epoch, NEW.seq, NEW.status);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_sagas AFTER INSERT OR UPDATE ON {SCHEMA}.sagas
    FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.audit_sagas();
"""


async def prepare_database(dsn: str) -> None:
    """Create the store's schema (a runtime joining and leaving) and install the audit."""
    async with PostgresStore(dsn, schema=SCHEMA):
        pass
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_AUDIT)
    finally:
        await conn.close()


async def query(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


async def live_owned_by(dsn: str, runtime_id: str) -> int:
    rows = await query(
        dsn,
        f"SELECT count(*) FROM {SCHEMA}.sagas WHERE owner = $1 "
        "AND status IN ('running', 'waiting', 'compensating')",
        runtime_id,
    )
    count: int = rows[0][0]
    return count


@dataclass(frozen=True)
class AuditRow:
    id: int
    saga_id: str
    kind: str
    runtime: str | None
    epoch: int
    seq: int
    status: str


async def read_audit(dsn: str) -> dict[str, list[AuditRow]]:
    rows = await query(
        dsn,
        f"SELECT id, saga_id, kind, runtime, epoch, seq, status FROM {SCHEMA}.audit ORDER BY id",
    )
    by_saga: dict[str, list[AuditRow]] = {}
    for row in rows:
        by_saga.setdefault(row["saga_id"], []).append(AuditRow(*row))
    return by_saga


@dataclass
class Fencing:
    """What the audit shows: who created, claimed and wrote the sagas."""

    creators: Counter[str] = field(default_factory=Counter)
    writers: Counter[str] = field(default_factory=Counter)
    claims: Counter[str] = field(default_factory=Counter)
    takeovers: dict[str, list[tuple[str | None, str]]] = field(default_factory=dict)
    """Saga id -> (from, to) for each claim by another runtime than the last writer's."""


def check_fencing(audit: dict[str, list[AuditRow]]) -> Fencing:
    """Every committed transition came from the saga's owner at its current epoch."""
    fencing = Fencing()
    for sid, rows in audit.items():
        assert rows[0].kind == "create", f"{sid}: first audit row {rows[0]}"
        assert [r.kind for r in rows].count("create") == 1, f"{sid}: created twice: {rows}"
        owner: str | None = rows[0].runtime
        epoch = rows[0].epoch
        seq = rows[0].seq
        last_holder = owner
        assert owner is not None, rows[0]
        assert (epoch, seq) == (1, 1), rows[0]
        fencing.creators[owner] += 1
        for row in rows[1:]:
            if row.kind == "claim":
                assert row.epoch == epoch + 1, f"{sid}: epoch {epoch} -> {row}"
                assert row.runtime is not None
                if row.runtime != last_holder:
                    fencing.takeovers.setdefault(sid, []).append((last_holder, row.runtime))
                owner, epoch, last_holder = row.runtime, row.epoch, row.runtime
                fencing.claims[row.runtime] += 1
            elif row.kind == "write":
                assert row.runtime is not None, row
                assert row.runtime == owner, f"{sid}: {row} by a runtime not its owner ({owner})"
                assert row.epoch == epoch, f"{sid}: {row} at a stale epoch ({epoch})"
                assert row.seq == seq + 1, f"{sid}: seq {seq} -> {row}"
                seq = row.seq
                fencing.writers[row.runtime] += 1
                if row.status in ("completed", "compensated", "failed", "suspended"):
                    owner = None
            elif row.kind == "release":
                assert (row.runtime, row.epoch) == (owner, epoch), f"{sid}: {row}"
                owner = None
    return fencing


def writes_after_takeover(audit: dict[str, list[AuditRow]], runtime_id: str) -> list[AuditRow]:
    """Transitions `runtime_id` committed for a saga after another runtime had claimed it."""
    bad: list[AuditRow] = []
    for rows in audit.values():
        lost = False
        for row in rows:
            if row.kind == "claim" and row.runtime != runtime_id:
                lost = True
            elif row.kind == "claim":
                lost = False
            elif lost and row.kind == "write" and row.runtime == runtime_id:
                bad.append(row)
    return bad


# -- the ledger -------------------------------------------------------------------


def prepare_ledger(path: Path) -> None:
    """Create the ledger with an index on its duplicate check (a scan per record is O(n^2))."""
    Ledger(path).close()
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE INDEX IF NOT EXISTS ledger_key ON ledger (idempotency_key, kind)")
        conn.commit()
    finally:
        conn.close()


def ledger_records(path: Path) -> list[Record]:
    ledger = Ledger(path)
    try:
        return ledger.records()
    finally:
        ledger.close()


# -- child runtimes ---------------------------------------------------------------


@dataclass
class PgChild:
    """A `pg_child` process (the crash tests' `Child`) and its runtime id."""

    child: Child
    name: str

    @property
    def pid(self) -> int:
        return self.child.pid

    async def expect(self, line: str, timeout: float) -> None:
        """`Child.expect` with a timeout of our own (a big spawn takes a while)."""
        await self._read_until(lambda seen: line in seen, line, timeout)

    async def joined(self, timeout: float = 20.0) -> str:
        """Wait until the child's runtime has joined; return its runtime id."""
        await self._read_until(
            lambda seen: any(s.startswith(f"{RUNTIME} ") for s in seen), RUNTIME, timeout
        )
        return next(s.split()[1] for s in self.child.seen if s.startswith(f"{RUNTIME} "))

    async def _read_until(
        self, done: Callable[[list[str]], bool], what: str, timeout: float
    ) -> None:
        child = self.child
        with anyio.fail_after(timeout):
            while not done(child.seen):
                try:
                    raw = await child.stdout.receive_until(b"\n", 4096)
                except (anyio.EndOfStream, anyio.IncompleteRead):
                    await child.process.wait()
                    raise AssertionError(
                        f"{self.name} exited ({child.process.returncode}) before printing "
                        f"{what!r}; stdout {child.seen}, stderr:\n{child.stderr()}"
                    ) from None
                child.seen.append(raw.decode().strip())

    async def shared(self, timeout: float = 20.0) -> None:
        """Wait until the child created its own share of the sagas (`share=`)."""
        await self.expect(SHARED, timeout)

    async def ready(self, timeout: float = 20.0) -> str:
        """Wait for READY; return the child's runtime id."""
        await self.expect(READY, timeout)
        for line in self.child.seen:
            if line.startswith(f"{RUNTIME} "):
                return line.split()[1]
        raise AssertionError(f"{self.name} printed no runtime id: {self.child.seen}")

    async def done(self, timeout: float) -> None:
        """Wait for a clean exit after DONE."""
        await self.expect(DONE, timeout)
        with anyio.fail_after(timeout):
            code = await self.child.process.wait()
        assert code == 0, f"{self.name} exited {code}:\n{self.child.stderr()}"

    def stderr(self) -> str:
        return self.child.stderr()


@asynccontextmanager
async def pg_child(
    workdir: Path,
    name: str,
    *,
    dsn: str,
    count: int,
    seed: int,
    shuffle_seed: int,
    lease: float,
    poll: float,
    max_pause: float = 0.01,
    no_spawn: bool = False,
    naps: int = 0,
    wake_at: float = 0.0,
    wake_in: float = 0.0,
    keep_warm: float = 1.0,
    timeout: float = 60.0,
    start_file: Path | None = None,
    share: tuple[int, int] | None = None,
) -> AsyncIterator[PgChild]:
    """A `pg_child` runtime on `dsn` and workdir's ledger.db, killed on exit if still running."""
    command = [
        sys.executable,
        "-m",
        "tests.runtime.pg_child",
        "--dsn",
        dsn,
        "--ledger",
        str(workdir / "ledger.db"),
        "--count",
        str(count),
        "--seed",
        str(seed),
        "--shuffle-seed",
        str(shuffle_seed),
        "--lease",
        str(lease),
        "--poll",
        str(poll),
        "--max-pause",
        str(max_pause),
        "--timeout",
        str(timeout),
        "--naps",
        str(naps),
        "--wake-at",
        repr(wake_at),
        "--wake-in",
        repr(wake_in),
        "--keep-warm",
        str(keep_warm),
    ]
    if no_spawn:
        command.append("--no-spawn")
    if start_file is not None:
        command += ["--start-file", str(start_file)]
    if share is not None:
        command += ["--share", f"{share[0]}/{share[1]}"]
    async with open_child(command, workdir / f"{name}.stderr", timeout=CHILD_TIMEOUT) as child:
        yield PgChild(child, name)


async def wait_for(timeout: float, poll: float, check: Callable[[], Awaitable[bool]]) -> None:
    """Poll with `check()` until true, within `timeout`: other processes' progress
    shows only in the database, which has no event to wait on."""
    with anyio.fail_after(timeout):
        while not await check():  # noqa: ASYNC110
            await anyio.sleep(poll)


# -- the final checks ---------------------------------------------------------------


async def read_outcomes(dsn: str, saga: Saga) -> dict[str, Outcome]:
    """Every saga as the database holds it, with what `result()` would give (no runtime joins)."""
    sagas = await query(dsn, f"SELECT saga_id, saga_name, input, snapshot, seq FROM {SCHEMA}.sagas")
    history: dict[str, list[HistoryEntry]] = {}
    for sid, seq, event in await query(
        dsn, f"SELECT saga_id, seq, event FROM {SCHEMA}.history ORDER BY saga_id, seq"
    ):
        history.setdefault(sid, []).append(HistoryEntry(seq, decode_event(sid, event)))
    outcomes: dict[str, Outcome] = {}
    for row in sagas:
        stored = stored_saga(*row)
        sid = stored.saga_id
        state = stored.state
        info = saga_info(saga, state, history.get(sid, []))
        output: dict[str, Any] | None = None
        compensated: SagaCompensated | None = None
        if state.status.is_terminal:
            try:
                output = saga_outcome(saga, state)
            except SagaCompensated as exc:
                compensated = exc
        outcomes[sid] = Outcome(info, state, output, compensated)
    return outcomes


@dataclass
class Verdict:
    outcomes: dict[str, Outcome]
    records: list[Record]
    fencing: Fencing
    audit: dict[str, list[AuditRow]]
    runs: dict[str, Counter[Any]] = field(default_factory=dict)
    """Per saga: how often each (kind, step, attempt) was commanded (intents + recoveries)."""
    recoveries: int = 0
    reruns: int = 0
    by_status: Counter[str] = field(default_factory=Counter)


async def check_everything(
    dsn: str,
    ledger_path: Path,
    ids: Sequence[str],
    *,
    opens: int,
    kills: int,
    fenced_off: Callable[[Record], bool] = lambda record: False,
    one_run_per_process: bool = True,
) -> Verdict:
    """Every invariant of the crash suite, from the database, the ledger and the audit.

    `opens` bounds the recoveries of one saga (each takeover or restart is one);
    `kills` bounds the extra runs of a step beyond its retries (each cut-off is one).
    `fenced_off` picks the ledger records of a paused runtime that landed after
    it lost its sagas: the database cannot stop a call already under way, so
    these are checked apart (at most once per durable intent, see the test).
    `one_run_per_process=False` drops the crash suite's check that a process
    runs an intent at most once: a process whose saga was taken from it (its
    lease lapsed) and came back to it, or whose actor restarted after a failed
    write, runs it again after a `Recovered`; the check that each intent ran at
    most once per command (its intent plus each recovery) still holds.
    """
    ledger = Ledger(ledger_path)
    try:
        records = ledger.records()
        saga = build_checkout(ledger, random.Random(0))  # to fold histories; never run here
    finally:
        ledger.close()
    outcomes = await read_outcomes(dsn, saga)
    assert sorted(outcomes) == sorted(ids), "a saga was lost or appeared from nowhere"
    by_saga: dict[str, list[Record]] = {sid: [] for sid in ids}
    for record in records:
        assert record.saga_id in by_saga, f"effect of an unknown saga: {record}"
        by_saga[record.saga_id].append(record)
    audit = await read_audit(dsn)
    assert sorted(audit) == sorted(ids)
    fencing = check_fencing(audit)
    verdict = Verdict(outcomes, records, fencing, audit)
    for sid in ids:
        plan = plan_for(sid)
        outcome = outcomes[sid]
        runs = check_history(saga, sid, outcome, opens)
        check_outcome(sid, plan, outcome)
        mine = [r for r in by_saga[sid] if not fenced_off(r)]
        if not one_run_per_process:
            mine = [dataclasses.replace(r, pid=-r.seq) for r in mine]  # one "process" each
        check_ledger(sid, plan, outcome, mine, runs, kills)
        verdict.runs[sid] = runs
        verdict.recoveries += sum(isinstance(e.event, Recovered) for e in outcome.info.history)
        verdict.by_status[outcome.info.status] += 1
    verdict.reruns = len(records) - len({(r.kind, r.idempotency_key, r.attempt) for r in records})
    return verdict
