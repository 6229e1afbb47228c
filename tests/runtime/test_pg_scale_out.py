"""Several runtime processes on one PostgreSQL database, with real crashes and pauses.

Child runtimes (`pg_child.py`) run the crash suite's checkout sagas, whose
steps write their side effects to a shared ledger file. The tests SIGKILL
and SIGSTOP them, restart the database under them, and then check every
invariant of the crash suite from the database and the ledger (no saga
lost, each ended as its plan says, compensations exactly for the steps that
may have taken effect, newest first, each step at most once per durable
intent, snapshots equal to the fold of their history), plus, from a write
audit (`pg_support.py`), that every committed transition came from the
saga's owner at its current epoch.

SAGALOOP_SCALE_SAGAS sets the size of the three-runtime run (SAGALOOP_SOAK=1
runs 3,000). The database-restart test needs a private cluster (it restarts
the server): run this file through `env -u SAGALOOP_PG_DSN tests/with_postgres.sh`.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from runtime import Runtime, SagaCompensated
from runtime.postgres import PostgresStore
from saga import Saga, Step, StepContext, WaitForSignal
from saga.engine import SignalReceived, TimerFired

from .crash_child import PLANS, saga_id
from .ledger import Ledger, Record
from .pg_child import build_nap
from .pg_support import (
    SCHEMA,
    check_everything,
    ledger_records,
    live_owned_by,
    pg_child,
    prepare_database,
    prepare_ledger,
    query,
    wait_for,
    writes_after_takeover,
)

SEED = int(os.environ.get("SAGALOOP_CRASH_SEED", "20240611"))
SOAK = os.environ.get("SAGALOOP_SOAK") == "1"
SCALE_SAGAS = int(os.environ.get("SAGALOOP_SCALE_SAGAS", "300"))

LEASE = 1.0
POLL = 0.2


async def finished(dsn: str) -> int:
    rows = await query(
        dsn,
        f"SELECT count(*) FROM {SCHEMA}.sagas "
        "WHERE status IN ('completed', 'compensated', 'failed')",
    )
    count: int = rows[0][0]
    return count


# -- 1. three runtimes, one SIGKILLed ----------------------------------------------


async def three_runtimes_one_killed(dsn: str, workdir: Path, sagas: int) -> None:
    started = time.monotonic()
    await prepare_database(dsn)
    prepare_ledger(workdir / "ledger.db")
    ids = [saga_id(i) for i in range(sagas)]
    timeout = 30.0 + sagas / 50
    slow = 0.5  # steps slow enough that many sagas are under way once all spawns are in
    async with contextlib.AsyncExitStack() as stack:
        children = [
            await stack.enter_async_context(
                pg_child(
                    workdir,
                    f"rt-{n}",
                    dsn=dsn,
                    count=sagas,
                    seed=SEED + n,
                    shuffle_seed=SEED + n,  # each spawns every id, in its own order
                    lease=LEASE,
                    poll=POLL,
                    max_pause=slow,
                    timeout=timeout,
                    start_file=workdir / "go",
                    share=(n, 3),
                )
            )
            for n in range(3)
        ]
        for child in children:
            await child.joined()
        (workdir / "go").touch()  # each creates its own share...
        for child in children:
            await child.shared(timeout)
        (workdir / "go.all").touch()  # ...then all three spawn every id at once
        runtime_ids = [await child.ready(timeout) for child in children]
        ready = time.monotonic()
        await anyio.sleep(random.Random(SEED).uniform(0, 0.3))  # the chaos schedule
        # Kill the runtime that holds the most sagas under way.
        held = [await live_owned_by(dsn, rid) for rid in runtime_ids]
        index = held.index(max(held))
        victim, victim_id = children[index], runtime_ids[index]
        done_before = await finished(dsn)
        assert await victim.child.kill()
        killed_at = time.monotonic()
        orphaned = await live_owned_by(dsn, victim_id)  # its lease still runs: nobody took them
        assert orphaned > 0, "the kill landed when the victim held no live saga"
        for child in children:
            if child is not victim:
                await child.done(timeout)
        ended = time.monotonic()

    # Under load (3 runtimes and the server on few cores) a live runtime may
    # miss its lease too; its sagas then move as well. Each lapse is logged.
    lapses = {c.name: c.stderr().count("after it lapsed") for c in children}
    extra = sum(lapses.values())
    verdict = await check_everything(
        dsn,
        workdir / "ledger.db",
        ids,
        opens=1 + extra,
        kills=1 + extra,
        one_run_per_process=extra == 0,
    )
    fencing = verdict.fencing
    assert len(fencing.creators) == 3, f"runtimes that created sagas: {fencing.creators}"
    taken_from = {frm for moves in fencing.takeovers.values() for frm, _ in moves}
    assert victim_id in taken_from
    lapsed = {victim_id} | {
        rid for c, rid in zip(children, runtime_ids, strict=True) if lapses[c.name]
    }
    assert taken_from <= lapsed, f"sagas taken from a runtime with a live lease: {taken_from}"
    assert len(fencing.takeovers) >= orphaned
    assert set(verdict.by_status) == {"completed", "compensated"}
    assert {saga_id(i) for i in range(len(PLANS))} <= set(verdict.outcomes)
    print(
        f"{sagas} sagas on 3 runtimes: ready {ready - started:.1f}s, {done_before} ended; killed "
        f"{victim.pid} holding {orphaned} live sagas, the rest done "
        f"{ended - killed_at:.1f}s later; takeovers {len(fencing.takeovers)}, "
        f"recoveries {verdict.recoveries}, reruns {verdict.reruns}, created "
        f"{dict(fencing.creators)}, lease lapses {lapses}, total {time.monotonic() - started:.1f}s"
    )


async def test_three_runtimes_share_sagas_and_survive_a_sigkill(
    pg_dsn: str, tmp_path: Path
) -> None:
    await three_runtimes_one_killed(pg_dsn, tmp_path, SCALE_SAGAS)


@pytest.mark.soak
@pytest.mark.timeout(600)
@pytest.mark.skipif(not SOAK, reason="set SAGALOOP_SOAK=1 for the 3,000-saga run")
async def test_three_runtimes_share_3000_sagas_soak(pg_dsn: str, tmp_path: Path) -> None:
    await three_runtimes_one_killed(pg_dsn, tmp_path, 3000)


# -- 2. a zombie: paused past its lease, then resumed ----------------------------------


def ledger_locked(path: Path) -> bool:
    """Whether a (paused) process holds the ledger's write lock."""
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        conn.close()


async def pause(pid: int, dsn: str, ledger: Path) -> tuple[int, list[str]]:
    """SIGSTOP `pid` outside a transaction of the ledger.

    A process paused inside a ledger transaction would block the other
    runtime's steps: that is the test harness's ledger, not Sagaloop. A pause
    inside a database transaction is fine: the server ends it after a lease
    (idle_in_transaction_session_timeout), so the rows can be claimed.
    Returns the ledger's last seq at the pause, and why earlier tries were undone.
    """
    retried: list[str] = []
    for _ in range(50):
        os.kill(pid, signal.SIGSTOP)
        await anyio.sleep(0.15)  # let a transaction of the paused process show its age
        if ledger_locked(ledger):
            retried.append("ledger")
        else:
            conn = sqlite3.connect(ledger)
            try:
                last = conn.execute("SELECT max(seq) FROM ledger").fetchone()[0]
            finally:
                conn.close()
            return int(last or 0), retried
        os.kill(pid, signal.SIGCONT)
        await anyio.sleep(0.5)  # let it renew its lease, and pause it at another moment
    raise AssertionError(f"could not pause the runtime outside a transaction: {retried}")


async def test_a_zombie_runtime_is_fenced_off(pg_dsn: str, tmp_path: Path) -> None:
    sagas = 5 * len(PLANS)
    await prepare_database(pg_dsn)
    ledger = tmp_path / "ledger.db"
    prepare_ledger(ledger)
    ids = [saga_id(i) for i in range(sagas)]
    slow = 0.4  # steps long enough to be in flight at the pause
    lease = 2.0  # the pauses undone above must not cost the zombie its lease
    async with pg_child(
        tmp_path,
        "zombie",
        dsn=pg_dsn,
        count=sagas,
        seed=SEED,
        shuffle_seed=SEED,
        lease=lease,
        poll=POLL,
        max_pause=slow,
    ) as zombie:
        zombie_id = await zombie.ready()
        async with pg_child(
            tmp_path,
            "heir",
            dsn=pg_dsn,
            count=sagas,
            seed=SEED + 1,
            shuffle_seed=SEED,
            lease=lease,
            poll=POLL,
            max_pause=slow,
            no_spawn=True,
        ) as heir:
            heir_id = await heir.ready()
            assert await live_owned_by(pg_dsn, zombie_id) > 0
            paused_at_seq, retried = await pause(zombie.pid, pg_dsn, ledger)
            paused = time.monotonic()
            try:
                held = await live_owned_by(pg_dsn, zombie_id)
                assert held > 0, "the zombie held no live saga when paused"

                async def all_taken() -> bool:
                    return await live_owned_by(pg_dsn, zombie_id) == 0

                await wait_for(lease + 5, 0.05, all_taken)
                taken = time.monotonic() - paused
                running = await query(
                    pg_dsn,
                    f"SELECT count(*) FROM {SCHEMA}.sagas WHERE owner = $1",
                    heir_id,
                )
            finally:
                os.kill(zombie.pid, signal.SIGCONT)
            assert running[0][0] > 0, "the heir finished everything before the zombie woke"
            await heir.done(30)
            await zombie.done(30)

    zombie_pid = zombie.pid

    def late(record: Record) -> bool:
        return record.pid == zombie_pid and record.seq > paused_at_seq

    # One takeover each.
    verdict = await check_everything(pg_dsn, ledger, ids, opens=1, kills=1, fenced_off=late)
    # The database refused every write of the zombie once it lost the saga.
    assert writes_after_takeover(verdict.audit, zombie_id) == []
    moves = {move for moves in verdict.fencing.takeovers.values() for move in moves}
    assert moves == {(zombie_id, heir_id)}, moves
    stderr = zombie.stderr()
    dropped = set(re.findall(r"saga '([^']+)' dropped by this runtime", stderr))
    assert dropped, f"the zombie tried no write after waking:\n{stderr}"
    assert dropped <= set(verdict.fencing.takeovers), dropped
    assert "renewed its lease" in stderr
    assert "after it lapsed" in stderr
    # What the zombie's calls under way did after it woke: each was a durable
    # intent in flight at the takeover, so the heir ran it again (a Recovered
    # commanded it twice) and the service saw it at most once per command.
    late_records = [r for r in verdict.records if late(r)]
    for record in late_records:
        runs = verdict.runs[record.saga_id]
        key = (record.kind, record.step, record.attempt)
        assert runs[key] >= 2, f"{record}: not an intent recovered by the heir"
        same = [
            r
            for r in verdict.records
            if r.saga_id == record.saga_id and (r.kind, r.step, r.attempt) == key
        ]
        assert len(same) <= runs[key], f"{record.saga_id}: {key} applied {len(same)} times"
    print(
        f"zombie: held {held} sagas at the pause, all taken over in {taken:.1f}s; "
        f"{len(dropped)} writes refused after SIGCONT, {len(late_records)} late calls; "
        f"pauses undone (inside a transaction): {retried}"
    )


# -- 3. the database restarts under load ----------------------------------------------

PG_DATA = os.environ.get("SAGALOOP_PG_DATA")
PG_CTL = os.environ.get("SAGALOOP_PG_CTL")


async def restart_server() -> float:
    """`pg_ctl restart -m fast` on the private cluster; returns how long it took."""
    assert PG_DATA is not None
    assert PG_CTL is not None
    log = Path(PG_DATA).parent / "server.log"
    command = [PG_CTL, "-D", PG_DATA, "-m", "fast", "-w", "-t", "60", "-l", str(log), "restart"]
    if os.getuid() == 0:  # PostgreSQL refuses to run as root
        command = ["runuser", "-u", "postgres", "--", *command]
    began = time.monotonic()
    result = await anyio.run_process(command, stdout=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return time.monotonic() - began


@pytest.mark.skipif(
    not (PG_DATA and PG_CTL),
    reason="restarts the server: needs a private cluster (run through tests/with_postgres.sh "
    "with SAGALOOP_PG_DSN unset, which sets SAGALOOP_PG_DATA and SAGALOOP_PG_CTL)",
)
async def test_runtimes_ride_out_a_database_restart(pg_dsn: str, tmp_path: Path) -> None:
    sagas = 20 * len(PLANS)
    await prepare_database(pg_dsn)
    ledger = tmp_path / "ledger.db"
    prepare_ledger(ledger)
    ids = [saga_id(i) for i in range(sagas)]
    async with (
        pg_child(
            tmp_path,
            "rt-a",
            dsn=pg_dsn,
            count=sagas,
            seed=SEED,
            shuffle_seed=SEED,
            lease=LEASE,
            poll=POLL,
            max_pause=0.2,
        ) as one,
        pg_child(
            tmp_path,
            "rt-b",
            dsn=pg_dsn,
            count=sagas,
            seed=SEED + 1,
            shuffle_seed=SEED + 1,
            lease=LEASE,
            poll=POLL,
            max_pause=0.2,
        ) as two,
    ):
        await one.ready()
        await two.ready()
        before = await finished(pg_dsn)
        assert before < sagas, "every saga ended before the restart"
        took = await restart_server()
        await one.done(60)
        await two.done(60)
    lapses = one.stderr().count("after it lapsed") + two.stderr().count("after it lapsed")
    crashes = sum(c.stderr().count("Traceback") for c in (one, two))
    # A write cut off by the restart restarts the saga's actor (a recovery that
    # may run its step again); so does a takeover after a lapsed lease.
    bound = 6 + lapses
    verdict = await check_everything(
        pg_dsn, ledger, ids, opens=bound, kills=bound, one_run_per_process=False
    )
    assert set(verdict.by_status) == {"completed", "compensated"}
    print(
        f"database restart: {took:.1f}s with {sagas - before} sagas unfinished; "
        f"recoveries {verdict.recoveries}, reruns {verdict.reruns}, lease lapses {lapses}, "
        f"tracebacks logged {crashes}, takeovers {len(verdict.fencing.takeovers)}"
    )


# -- 4. signals, cancellations, timers and hand-backs across runtimes ------------------

SLOW_POLL = 30.0
"""A sweep period far beyond the tests' bounds: only a notice can explain a prompt wake-up."""


class Services:
    """One runtime's step actions; `calls` says which ran where."""

    def __init__(self, name: str, calls: list[tuple[str, str, str]]) -> None:
        self.name = name
        self.calls = calls
        self.entered = anyio.Event()
        self.block = False

    def action(self, step: str) -> Any:
        async def act(ctx: StepContext, data: Any) -> str:
            self.calls.append((self.name, ctx.saga_id, step))
            if step == "block" and self.block:
                self.entered.set()
                await anyio.sleep_forever()
            return self.name

        return act

    def undo(self, step: str) -> Any:
        async def undo(ctx: StepContext, data: Any, result: Any) -> None:
            self.calls.append((self.name, ctx.saga_id, f"undo {step}"))

        return undo

    def approval(self) -> Saga:
        return Saga(
            "approval",
            [
                Step("hold", self.action("hold"), compensate=self.undo("hold")),
                WaitForSignal("approve", timeout=60),
                WaitForSignal("ship", timeout=60),
                Step("pay", self.action("pay")),
            ],
        )

    def blocking(self) -> Saga:
        return Saga(
            "blocking",
            [
                Step("hold", self.action("hold"), compensate=self.undo("hold")),
                Step("block", self.action("block"), compensate=self.undo("block")),
            ],
        )


def pg_runtime(
    dsn: str, services: Services, *, lease: float = SLOW_POLL, poll: float = SLOW_POLL
) -> Runtime:
    store = PostgresStore(dsn, lease=lease, poll_interval=poll, name=services.name)
    # keep_warm: a saga waiting for its signal keeps its actor (and owner) on this runtime
    return Runtime(store, sagas=[services.approval(), services.blocking()], keep_warm=120.0)


async def status_is(rt: Runtime, sid: str, status: str, waiting_for: str | None = None) -> None:
    with anyio.fail_after(5):
        while True:
            info = await rt.status(sid)
            if info.status == status and (waiting_for is None or info.waiting_for == waiting_for):
                return
            await anyio.sleep(0.01)  # polling the saga's progress


async def owner_of(dsn: str, sid: str) -> str | None:
    rows = await query(dsn, f"SELECT owner FROM {SCHEMA}.sagas WHERE saga_id = $1", sid)
    owner: str | None = rows[0][0]
    return owner


async def test_signals_and_cancellations_reach_the_owner_through_a_notice(
    pg_dsn: str,
) -> None:
    calls: list[tuple[str, str, str]] = []
    a, b = Services("a", calls), Services("b", calls)
    a.block = True
    async with pg_runtime(pg_dsn, a) as rt_a, pg_runtime(pg_dsn, b) as rt_b:
        assert isinstance(rt_a.store, PostgresStore)
        a_id = rt_a.store.runtime_id
        ids = [f"sig-{i}" for i in range(10)]
        for sid in ids:
            await rt_a.spawn("approval", {"n": sid}, saga_id=sid)
        for sid in ids:
            await status_is(rt_a, sid, "waiting")
            assert await owner_of(pg_dsn, sid) == a_id
            assert rt_a.live_actors >= 1

        # The same signal (same key) from both runtimes at once: applied once.
        accepted: list[bool] = []
        began = time.monotonic()
        async with anyio.create_task_group() as tg:
            for sid in ids:
                for rt in (rt_a, rt_b, rt_b):

                    async def send(rt: Runtime = rt, sid: str = sid) -> None:
                        accepted.append(
                            await rt.signal(sid, "approve", {"ok": True}, idempotency_key="k1")
                        )

                    tg.start_soon(send)
        # Then "ship" through b alone, for sagas live on a: only a's notice wakes them.
        for sid in ids:
            await status_is(rt_a, sid, "waiting", waiting_for="ship")
        sent = time.monotonic()
        for sid in ids:
            assert await rt_b.signal(sid, "ship", {"ok": True})
        with anyio.fail_after(3):
            for sid in ids:
                await rt_a.handle(sid).result()
        ship_took = time.monotonic() - sent
        duplicates = 0
        for sid in ids:
            history = (await rt_a.status(sid)).history
            received = [e.event for e in history if isinstance(e.event, SignalReceived)]
            # A duplicate the inbox took (the first was already applied) is recorded
            # and ignored: the wait ended once, and nothing was kept for later.
            names = [e.name for e in received]
            assert names[-1] == "ship", f"{sid}: {names}"
            assert set(names[:-1]) == {"approve"}, f"{sid}: {names}"
            assert {e.key for e in received[:-1]} == {"k1"}
            state = (await rt_a.store.load(sid)).state
            assert state.signal_keys == ("k1",), state.signal_keys
            assert state.inbox == (), state.inbox
            assert [s.attempts for s in state.steps] == [1, 1, 1, 1]
            duplicates += len(names) - 2
            assert (a.name, sid, "pay") in calls
            assert (b.name, sid, "pay") not in calls
        assert accepted.count(True) >= len(ids)

        # A cancellation through b, for a step hanging on a: the notice interrupts it.
        await rt_a.spawn("blocking", {}, saga_id="cx")
        with anyio.fail_after(5):
            await a.entered.wait()
        cancelled = time.monotonic()
        await rt_b.cancel("cx", "customer withdrew")
        with pytest.raises(SagaCompensated), anyio.fail_after(3):
            await rt_a.handle("cx").result()
        cancel_took = time.monotonic() - cancelled
    assert [c for c in calls if c[1] == "cx"] == [
        ("a", "cx", "hold"),
        ("a", "cx", "block"),
        ("a", "cx", "undo block"),
        ("a", "cx", "undo hold"),
    ]
    print(
        f"notices: 30 duplicate signals in {sent - began:.2f}s ({accepted.count(True)} "
        f"accepted, {duplicates} recorded and ignored, 1 applied each); "
        f"10 signals via b served by a in {ship_took:.2f}s, "
        f"cancel via b in {cancel_took:.2f}s (sweep period {SLOW_POLL:.0f}s)"
    )


async def test_a_clean_stop_hands_sagas_over_at_once(pg_dsn: str) -> None:
    calls: list[tuple[str, str, str]] = []
    a, b = Services("a", calls), Services("b", calls)
    a.block = True
    async with pg_runtime(pg_dsn, b) as rt_b:
        async with pg_runtime(pg_dsn, a) as rt_a:
            await rt_a.spawn("blocking", {}, saga_id="handed")
            with anyio.fail_after(5):
                await a.entered.wait()
        stopped = time.monotonic()
        # The lease (30 s) and b's sweep period (30 s) are far away: the hand-back
        # and its notice are what let b take it over now.
        with anyio.fail_after(3):
            result = await rt_b.handle("handed").result()
        took = time.monotonic() - stopped
    assert result == {"hold": "a", "block": "b"}
    assert [c for c in calls if c[2] == "block"] == [
        ("a", "handed", "block"),
        ("b", "handed", "block"),
    ]
    print(f"hand-back: b took the saga over {took:.2f}s after a stopped")


async def test_a_timer_of_a_dead_runtime_fires_on_another(pg_dsn: str, tmp_path: Path) -> None:
    await prepare_database(pg_dsn)
    ledger = tmp_path / "ledger.db"
    prepare_ledger(ledger)
    services = Ledger(ledger)
    try:
        store = PostgresStore(pg_dsn, lease=LEASE, poll_interval=POLL, name="heir")
        async with Runtime(store, sagas=[build_nap(services)]) as heir:
            async with pg_child(
                tmp_path,
                "sleeper",
                dsn=pg_dsn,
                count=0,
                seed=SEED,
                shuffle_seed=SEED,
                lease=LEASE,
                poll=POLL,
                naps=1,
                wake_in=3.0,  # from its spawn: a slow start must not make it due already
                keep_warm=60.0,
            ) as sleeper:
                sleeper_id = await sleeper.ready()
                await status_is(heir, "nap-000", "waiting")
                wake_at = (await heir.status("nap-000")).wake_at
                assert wake_at is not None
                # The sleeper keeps the timer in memory and the saga as its own.
                assert await owner_of(pg_dsn, "nap-000") == sleeper_id
                assert await sleeper.child.kill()
            killed = time.time()
            with anyio.fail_after(wake_at - killed + LEASE + 3):
                result = await heir.handle("nap-000").result()
            fired = time.time()
            info = await heir.status("nap-000")
    finally:
        services.close()
    assert result["before"] == sleeper.pid
    assert result["after"] == os.getpid()
    timer = [e.event for e in info.history if isinstance(e.event, TimerFired)]
    assert len(timer) == 1, timer
    assert timer[0].at >= wake_at, timer
    records = ledger_records(ledger)
    assert [(r.step, r.pid) for r in records] == [("before", sleeper.pid), ("after", os.getpid())]
    print(f"timer: due {wake_at - killed:.1f}s after the kill, fired {fired - wake_at:.2f}s late")


async def test_a_duplicate_spawn_racing_the_sweep_never_fences_its_own_runtime(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[str, str, str]] = []
    b = Services("b", calls)
    heir_store = PostgresStore(pg_dsn, lease=SLOW_POLL, poll_interval=0.02, name="b")
    errors: list[BaseException] = []
    async with Runtime(heir_store, sagas=[b.approval(), b.blocking()]) as heir:
        for round_ in range(2):
            a = Services("a", calls)
            a.block = True
            ids = [f"r{round_}-{i}" for i in range(300)]
            async with pg_runtime(pg_dsn, a) as dying:
                for sid in ids:
                    await dying.spawn("blocking", {}, saga_id=sid)
                assert isinstance(dying.store, PostgresStore)
                dying_id = dying.store.runtime_id

                async def lapse(dying_id: str = dying_id) -> None:
                    await anyio.sleep(0.05)  # the chaos schedule: mid-way through the spawns
                    await query(
                        pg_dsn,
                        f"UPDATE {SCHEMA}.runtimes SET lease_until = clock_timestamp() "
                        "- interval '1 second' WHERE runtime_id = $1",
                        dying_id,
                    )

                async def spawn(sid: str) -> None:
                    try:
                        await heir.spawn("blocking", {}, saga_id=sid)
                    except Exception as exc:
                        errors.append(exc)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(lapse)
                    for sid in ids:
                        tg.start_soon(spawn, sid)
                with anyio.fail_after(20):
                    for sid in ids:
                        await heir.handle(sid).result()
    assert errors == []
    fenced = [r.getMessage() for r in caplog.records if "dropped by this runtime" in r.getMessage()]
    assert fenced == [], fenced[:3]
