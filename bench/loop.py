"""`python -m bench.loop`: one code saga of N looped steps, its bytes written and its time.

For N in 100, 300, 1000 (and `--steps`), a fresh SQLite file, the default
`Runtime`, one saga `for i in range(N): await ctx.step("item", ...)`. It
prints the wall time, the bytes its rows hold at the end (snapshot plus
history), and the bytes *written* over its life: each transition writes the
new snapshot and one history row, so the sum over transitions of (snapshot
size + event size) is measured from the history replayed through the
machine. If snapshots grew with the saga, this would be O(N^2); the ratio
column shows how bytes per step move as N grows.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

import anyio

from runtime import Runtime
from runtime._codec import decode_event, encode_state
from saga import Saga, SagaContext, StepContext
from saga.engine import initial_state, transition

STEPS = (100, 300, 1000)


async def item(ctx: StepContext, i: int) -> int:
    return i


async def looped(ctx: SagaContext, n: int) -> int:
    total = 0
    for i in range(n):
        total += await ctx.step("item", item, i)
    return total


SAGA = Saga("loop", looped, input_type=int)


def bytes_written(path: Path, saga_id: str) -> tuple[int, int, int]:
    """(bytes written over the saga's life, final row bytes, final snapshot bytes)."""
    with sqlite3.connect(path) as conn:
        events = [
            row[0]
            for row in conn.execute(
                "SELECT event FROM history WHERE saga_id = ? ORDER BY seq", (saga_id,)
            )
        ]
        snapshot = conn.execute(
            "SELECT snapshot FROM sagas WHERE saga_id = ?", (saga_id,)
        ).fetchone()[0]
    state = initial_state(SAGA, saga_id)
    written = 0
    for raw in events:
        state = transition(SAGA, state, decode_event(saga_id, raw)).state
        written += len(encode_state(state)) + len(raw)
    return written, len(snapshot) + sum(map(len, events)), len(snapshot)


async def run_one(n: int, folder: Path) -> tuple[float, int, int, int]:
    path = folder / f"loop-{n}.db"
    async with Runtime(path, sagas=[SAGA]) as rt:
        started = time.perf_counter()
        handle = await rt.spawn(SAGA, n, saga_id="loop")
        assert await handle.result() == n * (n - 1) // 2
        seconds = time.perf_counter() - started
    return (seconds, *bytes_written(path, "loop"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, action="append", help="add a saga size")
    args = parser.parse_args()
    sizes = sorted({*STEPS, *(args.steps or ())})
    print(
        f"{'steps':>6} {'seconds':>8} {'ms/step':>8} {'written':>11} {'B/step':>7} "
        f"{'rows now':>9} {'snapshot':>9}"
    )
    first: float | None = None
    with tempfile.TemporaryDirectory(prefix="sagaloop-loop-") as tmp:
        for n in sizes:
            seconds, written, rows, snapshot = anyio.run(run_one, n, Path(tmp))
            per_step = written / n
            first = first or per_step
            print(
                f"{n:>6} {seconds:>8.3f} {1000 * seconds / n:>8.3f} {written:>11,} "
                f"{per_step:>7.0f} {rows:>9,} {snapshot:>9,}   bytes/step {per_step / first:.2f}x "
                f"the smallest"
            )


if __name__ == "__main__":
    main()
