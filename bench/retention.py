"""Retention: does pruning hold spawns up, and does the file stay flat?

    python -m bench.retention latency --prefill 200000 --n 20000 --runs 3
    python -m bench.retention size --n 1000000

`latency`: a database holding `--prefill` checkout sagas that ended two days ago;
spawn `--n` checkout sagas (100 in flight) and time each `spawn` call, once with no
retention and once with `retention=1 day` pruning those old sagas in the background
meanwhile (each run on a fresh copy); prints p50 and p99 and their ratios.

`size`: push `--n` checkout sagas through `Runtime(retention=0)` and print the
database size (file plus write-ahead log) every tenth of the way: after warm-up it
stays flat, as freed pages are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import anyio

from runtime import Runtime

from .checkout import checkout_saga, percentile
from .growth import prefill

IN_FLIGHT = 100
DAY = 86400.0


def age(database: Path, seconds: float) -> None:
    """Make every saga in `database` have ended `seconds` ago."""
    with sqlite3.connect(database) as conn:
        conn.execute(
            "UPDATE sagas SET created_at = created_at - ?, updated_at = updated_at - ?",
            (seconds, seconds),
        )


async def spawn_latencies(database: Path, n: int, retention: float | None) -> dict[str, float]:
    saga = checkout_saga(fail=False)
    latencies: list[float] = []
    async with Runtime(database, sagas=[saga], retention=retention, retention_interval=0.05) as rt:
        limiter = anyio.Semaphore(IN_FLIGHT)
        began = time.perf_counter()

        async def one(i: int) -> None:
            async with limiter:
                start = time.perf_counter()
                handle = await rt.spawn(saga, i, saga_id=f"new-{i}")
                latencies.append(time.perf_counter() - start)
                await handle.result()

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
        elapsed = time.perf_counter() - began
        pruned = rt._pruner.pruned  # noqa: SLF001 (the bench reads the pruner's count)
    return {
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "per_s": n / elapsed,
        "pruned": pruned,
    }


def latency(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        template = Path(folder) / "template.db"
        prefill(template, args.prefill)
        age(template, 2 * DAY)
        os.sync()
        results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        for run in range(args.runs):
            for label, retention in (("off", None), ("on", DAY)):
                database = Path(folder) / f"{label}-{run}.db"
                shutil.copy(template, database)
                os.sync()
                result = anyio.run(spawn_latencies, database, args.n, retention)
                results[label].append(result)
                print(json.dumps({"retention": label, "run": run, **result}), flush=True)
                database.unlink()

    def median(label: str, key: str) -> float:
        values = sorted(r[key] for r in results[label])
        return values[len(values) // 2]

    p99_ratio = median("on", "p99_ms") / median("off", "p99_ms")
    p50_ratio = median("on", "p50_ms") / median("off", "p50_ms")
    print(
        f"\n# spawn latency, {args.n:,} checkouts, {IN_FLIGHT} in flight, on a database of "
        f"{args.prefill:,} old sagas, medians of {args.runs}: p99 {median('off', 'p99_ms'):.1f} "
        f"ms without pruning, {median('on', 'p99_ms'):.1f} ms while pruning "
        f"(ratio {p99_ratio:.2f}; target <= 1.5); p50 ratio {p50_ratio:.2f}; "
        f"pruned meanwhile {median('on', 'pruned'):,.0f}"
    )


def file_size(database: Path) -> int:
    wal = Path(f"{database}-wal")
    return database.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


async def push_through(database: Path, n: int) -> None:
    saga = checkout_saga(fail=False)
    step = max(n // 10, 1)
    began = time.perf_counter()
    async with Runtime(
        database, sagas=[saga], retention=0, retention_interval=0.2, tombstone_window=10
    ) as rt:
        limiter = anyio.Semaphore(IN_FLIGHT)

        async def one(i: int) -> None:
            async with limiter:
                await (await rt.spawn(saga, i, saga_id=f"s-{i}")).result()

        for chunk in range(0, n, step):
            async with anyio.create_task_group() as tg:
                for i in range(chunk, min(n, chunk + step)):
                    await limiter.acquire()  # start them as room frees up: bounded memory
                    limiter.release()
                    tg.start_soon(one, i)
            with sqlite3.connect(database) as conn:
                rows = conn.execute("SELECT count(*) FROM sagas").fetchone()[0]
            print(
                json.dumps(
                    {
                        "sagas_through": min(n, chunk + step),
                        "rows_left": rows,
                        "db_mb": round(file_size(database) / 2**20, 1),
                        "seconds": round(time.perf_counter() - began, 1),
                    }
                ),
                flush=True,
            )


def size(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        anyio.run(push_through, Path(folder) / "flat.db", args.n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    lat = commands.add_parser("latency")
    lat.add_argument("--prefill", type=int, default=200_000)
    lat.add_argument("--n", type=int, default=20_000)
    lat.add_argument("--runs", type=int, default=3)
    flat = commands.add_parser("size")
    flat.add_argument("--n", type=int, default=1_000_000)
    args = parser.parse_args()
    latency(args) if args.command == "latency" else size(args)


if __name__ == "__main__":
    main()
