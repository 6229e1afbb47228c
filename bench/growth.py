"""Does throughput hold as the database grows? The 1,000,000th saga vs the 1,000th.

    python -m bench.growth --prefill 1000000 --n 10000

Builds a database holding `--prefill` finished checkout sagas with their
history (bulk-inserted rows shaped exactly like the runtime's, written at
synchronous=OFF: only the set-up), then runs the checkout benchmark on it
and on an empty database, in the same run, and prints both and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from runtime import Runtime

from .checkout import checkout_saga


async def template(database: Path) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    """One real finished saga's row and history, to copy."""
    saga = checkout_saga(fail=False)
    async with Runtime(database, sagas=[saga]) as rt:
        await (await rt.spawn(saga, 0, saga_id="template")).result()
    with sqlite3.connect(database) as conn:
        row = conn.execute("SELECT * FROM sagas WHERE saga_id='template'").fetchone()
        history = conn.execute("SELECT * FROM history WHERE saga_id='template'").fetchall()
    return row, history


def prefill(database: Path, count: int) -> float:
    row, history = anyio.run(template, database)
    began = time.perf_counter()
    conn = sqlite3.connect(database)
    conn.execute("PRAGMA synchronous=OFF")
    columns = [c[1] for c in conn.execute("PRAGMA table_info(sagas)")]
    id_at = columns.index("saga_id")
    snapshot_at = columns.index("snapshot")
    marks = ",".join("?" * len(row))
    chunk = 20_000
    for start in range(0, count, chunk):
        rows: list[list[Any]] = []
        events: list[tuple[Any, ...]] = []
        for i in range(start, min(count, start + chunk)):
            saga_id = f"old-{i:08d}"
            copy = list(row)
            copy[id_at] = saga_id
            copy[snapshot_at] = row[snapshot_at].replace('"template"', f'"{saga_id}"')
            rows.append(copy)
            events.extend((saga_id, *entry[1:]) for entry in history)
        with conn:
            conn.executemany(f"INSERT INTO sagas VALUES ({marks})", rows)
            conn.executemany("INSERT INTO history VALUES (?, ?, ?, ?)", events)
    conn.close()
    return time.perf_counter() - began


def measure(database: Path, n: int, prefix: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.checkout", "--single", "--n", str(n)]
    done = subprocess.run(
        [*command, "--db", str(database), "--prefix", prefix],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prefill", type=int, default=1_000_000)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        big = Path(folder) / "big.db"
        seconds = prefill(big, args.prefill)
        # The prefill leaves about a gigabyte of dirty pages for the kernel to write
        # back; flush them first, or the first measured run pays for the set-up.
        os.sync()
        size_mb = big.stat().st_size / 2**20
        print(
            json.dumps(
                {"prefill": args.prefill, "seconds": round(seconds, 1), "db_mb": round(size_mb, 1)}
            ),
            flush=True,
        )
        rates: dict[str, list[float]] = {"empty": [], "big": []}
        for run in range(args.runs):
            empty = Path(folder) / f"empty-{run}.db"
            for label, database in (("empty", empty), ("big", big)):
                result = measure(database, args.n, f"run{run}-")
                rates[label].append(result["wf_per_s"])
                print(json.dumps({"db": label, **result}), flush=True)
    empty_rate = sorted(rates["empty"])[len(rates["empty"]) // 2]
    big_rate = sorted(rates["big"])[len(rates["big"]) // 2]
    print(
        f"\n# checkout, 100 in flight, medians of {args.runs}: empty db {empty_rate:,.0f}/s; "
        f"db with {args.prefill:,} finished sagas {big_rate:,.0f}/s; "
        f"ratio {big_rate / empty_rate:.2f}"
    )


if __name__ == "__main__":
    main()
