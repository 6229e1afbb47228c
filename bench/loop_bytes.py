"""One code saga of many looped steps: its bytes counted at the database, and on the disk.

    python -m bench.loop_bytes                       # 100, 300 and 1,000 steps
    python -m bench.loop_bytes --steps 100 1000 3000

A cross-check of `python -m bench.loop`, which works out the bytes written by
replaying the history through the machine and re-encoding each snapshot: here
SQLite itself counts every snapshot it is given (two triggers), and the pages
SQLite hands to the disk are counted too.

The saga is `for i in range(steps): await ctx.step("item", item, i)`: one name
reused, so the k-th call has the key `item#k`. Each size runs twice, each time
on a fresh SQLite file with the default `Runtime` (WAL, synchronous=FULL):

  timed pass    nothing added: the wall time from spawn to result, and what the
                process handed to write(2) meanwhile (`wchar` of /proc/self/io:
                WAL frames and checkpoints, i.e. whole pages, not row bytes), and
                the size of the database and its WAL at the end (the WAL is reused
                after each checkpoint, so this is less than what was written).
  counted pass  two triggers on `sagas` record the byte length of every snapshot
                written (insert and each update); `history` is append-only, so its
                rows after the run are every event written. Logical bytes: the
                snapshots plus the events, without SQLite's page overhead.

The last line fits bytes = c * steps^k over the sizes: k near 1 is linear
growth (a constant cost per step), k near 2 quadratic (each step rewrites
everything before it).
"""

from __future__ import annotations

import argparse
import math
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from runtime import Runtime
from saga import Saga, SagaContext, StepContext

_COUNT_SNAPSHOTS = (
    "CREATE TABLE bench_snapshot_writes (seq INTEGER NOT NULL, bytes INTEGER NOT NULL)",
    "CREATE TRIGGER bench_snapshot_insert AFTER INSERT ON sagas BEGIN "
    "INSERT INTO bench_snapshot_writes VALUES (NEW.seq, length(CAST(NEW.snapshot AS BLOB))); "
    "END",
    "CREATE TRIGGER bench_snapshot_update AFTER UPDATE OF snapshot ON sagas BEGIN "
    "INSERT INTO bench_snapshot_writes VALUES (NEW.seq, length(CAST(NEW.snapshot AS BLOB))); "
    "END",
)


async def item(ctx: StepContext, i: int) -> int:
    return i


def loop_saga(steps: int) -> Saga[None, int]:
    async def body(ctx: SagaContext, _: None) -> int:
        total = 0
        for i in range(steps):
            total += await ctx.step("item", item, i)
        return total

    return Saga(f"loop{steps}", body)


def written_chars() -> int | None:
    """What this process (every thread) has passed to write(2) so far; None off Linux."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return None
    fields = dict(line.split(": ") for line in text.splitlines() if ": " in line)
    return int(fields["wchar"])


def file_bytes(database: Path) -> int:
    return sum(
        path.stat().st_size
        for path in (database, database.with_name(database.name + "-wal"))
        if path.exists()
    )


@dataclass
class Timed:
    wall_s: float
    wchar: int | None
    files: int


@dataclass
class Counted:
    snapshot_writes: int
    snapshot_bytes: int
    max_snapshot: int
    history_rows: int
    history_bytes: int
    final_snapshot: int
    steps_seen: int


async def timed_pass(database: Path, steps: int) -> Timed:
    saga = loop_saga(steps)
    async with Runtime(database, sagas=[saga]) as rt:
        before = written_chars()
        began = time.perf_counter()
        output = await (await rt.spawn(saga, None, saga_id="loop")).result()
        wall = time.perf_counter() - began
        after = written_chars()
        files = file_bytes(database)
    assert output == sum(range(steps)), output
    wchar = None if before is None or after is None else after - before
    return Timed(wall, wchar, files)


async def counted_pass(database: Path, steps: int) -> Counted:
    saga = loop_saga(steps)
    async with Runtime(database, sagas=[saga]):
        pass  # creates the schema
    with sqlite3.connect(database) as conn:
        for statement in _COUNT_SNAPSHOTS:
            conn.execute(statement)
    conn.close()
    async with Runtime(database, sagas=[saga]) as rt:
        output = await (await rt.spawn(saga, None, saga_id="loop")).result()
        info = await rt.status("loop")
    assert output == sum(range(steps)), output
    with sqlite3.connect(database) as conn:
        writes, total, largest = conn.execute(
            "SELECT count(*), sum(bytes), max(bytes) FROM bench_snapshot_writes"
        ).fetchone()
        rows, events = conn.execute(
            "SELECT count(*), sum(length(CAST(event AS BLOB))) FROM history"
        ).fetchone()
        (final,) = conn.execute(
            "SELECT length(CAST(snapshot AS BLOB)) FROM sagas WHERE saga_id='loop'"
        ).fetchone()
    conn.close()
    return Counted(writes, total, largest, rows, events, final, len(info.steps))


def run(steps: int) -> tuple[Timed, Counted]:
    with tempfile.TemporaryDirectory() as folder:
        timed = anyio.run(timed_pass, Path(folder) / "timed.db", steps)
        counted = anyio.run(counted_pass, Path(folder) / "counted.db", steps)
    return timed, counted


def exponent(points: list[tuple[int, float]]) -> float | None:
    """The least-squares k of log(value) = log(c) + k log(steps)."""
    usable = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y > 0]
    if len(usable) < 2:
        return None
    mx = sum(x for x, _ in usable) / len(usable)
    my = sum(y for _, y in usable) / len(usable)
    spread = sum((x - mx) ** 2 for x, _ in usable)
    return sum((x - mx) * (y - my) for x, y in usable) / spread if spread else None


def _n(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def print_table(results: list[tuple[int, Timed, Counted]]) -> None:
    columns: list[tuple[str, int]] = [
        ("steps", 6),
        ("wall s", 8),
        ("ms/step", 8),
        ("snap writes", 12),
        ("snapshot B", 12),
        ("history B", 11),
        ("logical B", 11),
        ("B/step", 8),
        ("final snap B", 13),
        ("max snap B", 11),
        ("wchar B", 12),
        ("wchar B/step", 13),
        ("db+wal B", 11),
    ]
    print("".join(f"{name:>{width}}" for name, width in columns))
    for steps, timed, counted in results:
        logical = counted.snapshot_bytes + counted.history_bytes
        wchar_per_step = None if timed.wchar is None else timed.wchar / steps
        cells: list[str] = [
            f"{steps:,}",
            f"{timed.wall_s:.3f}",
            f"{timed.wall_s / steps * 1e3:.3f}",
            f"{counted.snapshot_writes:,}",
            _n(counted.snapshot_bytes),
            _n(counted.history_bytes),
            _n(logical),
            f"{logical / steps:,.1f}",
            _n(counted.final_snapshot),
            _n(counted.max_snapshot),
            _n(timed.wchar),
            _n(wchar_per_step),
            _n(timed.files),
        ]
        print("".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, columns, strict=True)))


def print_growth(results: list[tuple[int, Timed, Counted]]) -> None:
    first_steps, first_timed, first = results[0]
    series: dict[str, list[tuple[int, float]]] = {
        "logical bytes": [(s, c.snapshot_bytes + c.history_bytes) for s, _, c in results],
        "snapshot bytes": [(s, c.snapshot_bytes) for s, _, c in results],
        "history bytes": [(s, c.history_bytes) for s, _, c in results],
        "wchar bytes": [(s, t.wchar) for s, t, _ in results if t.wchar is not None],
        "wall time": [(s, t.wall_s) for s, t, _ in results],
    }
    print(f"\n# growth against {first_steps:,} steps (linear: the step ratio)")
    for steps, timed, counted in results[1:]:
        ratios: list[str] = [f"steps x{steps / first_steps:.1f}"]
        logical = counted.snapshot_bytes + counted.history_bytes
        ratios.append(
            f"logical bytes x{logical / (first.snapshot_bytes + first.history_bytes):.2f}"
        )
        ratios.append(f"final snapshot x{counted.final_snapshot / first.final_snapshot:.2f}")
        if timed.wchar and first_timed.wchar:
            ratios.append(f"wchar bytes x{timed.wchar / first_timed.wchar:.2f}")
        ratios.append(f"wall x{timed.wall_s / first_timed.wall_s:.2f}")
        print(f"{steps:>6,}: " + ", ".join(ratios))
    fits: list[str] = []
    for name, points in series.items():
        k = exponent(points)
        if k is not None:
            fits.append(f"{name} k={k:.2f}")
    print("# fit value = c * steps^k (1 = linear, 2 = quadratic): " + "; ".join(fits))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 300, 1000])
    args = parser.parse_args()
    results: list[tuple[int, Timed, Counted]] = []
    for steps in sorted(args.steps):
        timed, counted = run(steps)
        # Each step is one keyed call: nothing was merged or left out.
        assert counted.steps_seen == steps, (counted.steps_seen, steps)
        results.append((steps, timed, counted))
    print(
        "# one code saga, `for i in range(steps): await ctx.step('item', item, i)`,"
        " default Runtime (SQLite WAL, synchronous=FULL), a fresh file per pass"
    )
    print_table(results)
    print_growth(results)
    rows = ", ".join(f"{steps:,} steps {counted.history_rows:,}" for steps, _, counted in results)
    print(f"# history rows (one per durable transition): {rows}")


if __name__ == "__main__":
    main()
