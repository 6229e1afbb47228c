"""Scale-out benchmark: the checkout saga on 1, 2 and 3 runtime processes sharing one
PostgreSQL database, the same saga on SQLite, and the failover time.

    tests/with_postgres.sh python -m bench.scale_out [--n 12000] [--conc 100] [--repeat 3]

(`make bench-scale-out` does that.) Each runtime is its own process, running its
share of the sagas with `--conc` in flight; they start together and the
throughput is all sagas over the wall time from the start signal to the last
one done. PostgreSQL runs with its defaults (fsync on, synchronous_commit on):
every transition is durable before the saga acts on it, as on SQLite FULL.

Failover: two runtimes (lease `--lease` s); the first spawns sagas whose
first step hangs there, and is SIGKILLed; the time from the kill to each saga's
step running on the other runtime is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import anyio

from runtime import Runtime, SagaCompensated
from runtime.postgres import PostgresStore
from saga import Saga, Step, StepContext

from .checkout import checkout_saga

# -- worker processes -------------------------------------------------------------


def _say(payload: dict[str, Any]) -> None:
    print(json.dumps(payload), flush=True)


async def _throughput_worker(args: argparse.Namespace) -> None:
    saga = checkout_saga(fail=False)
    database: Any = (
        PostgresStore(args.dsn, lease=args.lease, poll_interval=args.poll)
        if args.dsn.startswith("postgresql://")
        else args.dsn
    )
    next_id = iter(range(args.n))
    async with Runtime(database, sagas=[saga]) as rt:

        async def worker() -> None:
            for oid in next_id:
                handle = await rt.spawn(saga, oid, saga_id=f"{args.prefix}{oid}")
                with contextlib.suppress(SagaCompensated):
                    await handle.result()

        _say({"ready": True})
        sys.stdin.readline()  # the start signal
        cpu0 = time.process_time()
        async with anyio.create_task_group() as tg:
            for _ in range(args.conc):
                tg.start_soon(worker)
        _say({"done": time.time(), "cpu_s": time.process_time() - cpu0, "n": args.n})


async def _hang_or_run(ctx: StepContext, oid: int) -> float:
    if os.environ.get("SAGALOOP_BENCH_HANG") == "1":
        await anyio.sleep_forever()  # this runtime is about to be killed
    ran_at = time.time()
    _say({"resumed": ctx.saga_id, "at": ran_at})
    return ran_at


FAILOVER = Saga("failover", [Step("first", _hang_or_run)], input_type=int)


async def _failover_worker(args: argparse.Namespace) -> None:
    store = PostgresStore(args.dsn, lease=args.lease, poll_interval=args.poll)
    async with Runtime(store, sagas=[FAILOVER]) as rt:
        for oid in range(args.n if os.environ.get("SAGALOOP_BENCH_HANG") == "1" else 0):
            await rt.spawn(FAILOVER, oid, saga_id=f"f{oid}")
        _say({"ready": True})
        await anyio.sleep_forever()


# -- the parent ---------------------------------------------------------------------


def _spawn(
    mode: str, dsn: str, *, n: int, conc: int, prefix: str, lease: float, poll: float, hang: bool
) -> subprocess.Popen[str]:
    env = {**os.environ, "SAGALOOP_BENCH_HANG": "1" if hang else "0"}
    command = [sys.executable, "-m", "bench.scale_out", "--worker", mode, "--dsn", dsn]
    command += ["--n", str(n), "--conc", str(conc), "--prefix", prefix]
    command += ["--lease", str(lease), "--poll", str(poll)]
    return subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )


def _read(stream: IO[str] | None) -> dict[str, Any]:
    assert stream is not None
    line = stream.readline()
    if not line:
        raise RuntimeError("a worker died; see its stderr above")
    result: dict[str, Any] = json.loads(line)
    return result


def _fresh_database(server: str) -> str:
    import asyncpg

    name = f"bench_{os.getpid()}_{time.monotonic_ns()}"

    async def create() -> None:
        conn = await asyncpg.connect(server)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()

    anyio.run(create)
    return f"{server.rpartition('/')[0]}/{name}"


def _postgres_cpu_s() -> float:
    """CPU seconds used so far by every postgres process on this machine."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name.startswith("postgres"):
            fields = stat[stat.rindex(")") + 2 :].split()
            # own time plus reaped children's: backends that exited still count
            total += sum(int(value) for value in fields[11:15])
    return total / tick


def throughput(database: str, runtimes: int, n: int, conc: int) -> dict[str, Any]:
    share = n // runtimes
    workers = [
        _spawn(
            "throughput",
            database,
            n=share,
            conc=conc,
            prefix=f"w{i}-",
            lease=5.0,
            poll=1.0,
            hang=False,
        )
        for i in range(runtimes)
    ]
    try:
        for worker in workers:
            _read(worker.stdout)
        pg0 = _postgres_cpu_s()
        began = time.time()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        done = [_read(worker.stdout) for worker in workers]
        wall = max(d["done"] for d in done) - began
        pg_cpu = _postgres_cpu_s() - pg0
    finally:
        for worker in workers:
            if worker.stdin is not None:
                worker.stdin.close()
            worker.wait(timeout=60)
    total = share * runtimes
    return {
        "store": "postgres" if database.startswith("postgresql://") else "sqlite",
        "runtimes": runtimes,
        "n": total,
        "conc_per_runtime": conc,
        "wf_per_s": round(total / wall, 1),
        "runtime_cpu_ms_per_wf": round(sum(d["cpu_s"] for d in done) / total * 1e3, 3),
        "postgres_cpu_ms_per_wf": round(pg_cpu / total * 1e3, 3),
    }


def failover(server: str, sagas: int, lease: float, poll: float) -> dict[str, Any]:
    dsn = _fresh_database(server)
    doomed = _spawn("failover", dsn, n=sagas, conc=0, prefix="", lease=lease, poll=poll, hang=True)
    survivor = _spawn("failover", dsn, n=0, conc=0, prefix="", lease=lease, poll=poll, hang=False)
    try:
        _read(doomed.stdout)
        _read(survivor.stdout)
        time.sleep(lease / 2)  # let the doomed runtime's steps start and its lease renew
        killed_at = time.time()
        doomed.kill()
        doomed.wait()
        delays = [_read(survivor.stdout)["at"] - killed_at for _ in range(sagas)]
    finally:
        doomed.kill()
        survivor.kill()
        survivor.wait()
    return {
        "lease_s": lease,
        "poll_s": poll,
        "sagas": sagas,
        "failover_median_s": round(statistics.median(delays), 3),
        "failover_max_s": round(max(delays), 3),
        "max_over_lease": round(max(delays) / lease, 2),
    }


def suite(args: argparse.Namespace) -> None:
    server = os.environ.get("SAGALOOP_PG_DSN")
    if not server:
        sys.exit("set SAGALOOP_PG_DSN, or run through tests/with_postgres.sh")
    rows: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            result = throughput(str(Path(tmp) / "bench.db"), 1, args.n, args.conc)
            print(json.dumps(result), flush=True)
            rows.setdefault("sqlite x1", []).append(result)
        for runtimes in (1, 2, 3):
            result = throughput(_fresh_database(server), runtimes, args.n, args.conc)
            print(json.dumps(result), flush=True)
            rows.setdefault(f"postgres x{runtimes}", []).append(result)
    fail = failover(server, args.failover_sagas, args.lease, args.poll)
    print(json.dumps(fail), flush=True)
    base = statistics.median(r["wf_per_s"] for r in rows["postgres x1"])
    print(f"\n## checkout saga, {args.conc} in flight per runtime, medians of {args.repeat} runs")
    print("| setup | sagas/s | vs postgres x1 | runtime CPU ms/saga | postgres CPU ms/saga |")
    print("|---|---|---|---|---|")
    for label, runs in rows.items():
        rate = statistics.median(r["wf_per_s"] for r in runs)
        cpu = statistics.median(r["runtime_cpu_ms_per_wf"] for r in runs)
        pg = statistics.median(r["postgres_cpu_ms_per_wf"] for r in runs)
        print(f"| {label} | {rate:,.0f} | {rate / base:.2f}x | {cpu:.3f} | {pg:.3f} |")
    print(
        f"\nfailover (lease {args.lease} s, poll {args.poll} s): median "
        f"{fail['failover_median_s']} s, max {fail['failover_max_s']} s "
        f"({fail['max_over_lease']}x the lease) for {args.failover_sagas} sagas"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", choices=["throughput", "failover"])
    parser.add_argument("--dsn", default="")
    parser.add_argument("--n", type=int, default=12000)
    parser.add_argument("--conc", type=int, default=100)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--poll", type=float, default=0.5)
    parser.add_argument("--failover-sagas", type=int, default=200)
    args = parser.parse_args()
    if args.worker == "throughput":
        anyio.run(_throughput_worker, args)
    elif args.worker == "failover":
        anyio.run(_failover_worker, args)
    else:
        suite(args)


if __name__ == "__main__":
    main()
