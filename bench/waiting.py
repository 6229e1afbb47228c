"""Waiting sagas: memory as they grow, and the time to re-open a runtime holding them.

    python -m bench.waiting                     # 1,000 / 10,000 / 100,000, one process each
    python -m bench.waiting --single --n 10000  # one JSON line

Each saga waits for an `approval` signal with a 3-day timeout: passivated,
it holds no actor and no task. Figures: current RSS once every saga waits,
peak RSS, live actors, then (in a fresh process) the time `Runtime.__aenter__`
takes on that database and the time until one signalled saga completes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from runtime import Runtime, SagaStatus
from saga import Saga, Step, StepContext, WaitForSignal

CONCURRENCY = 200


async def after_approval(ctx: StepContext, request: int) -> int:
    return request


def waiting_saga() -> Saga:
    return Saga(
        "approval",
        [WaitForSignal("approval", timeout=3 * 86400.0), Step("apply", after_approval)],
        input_type=int,
    )


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def fill(n: int, database: Path) -> dict[str, Any]:
    saga = waiting_saga()
    baseline = current_rss_mb()
    ids = iter(range(n))
    async with Runtime(database, sagas=[saga]) as rt:
        began = time.perf_counter()

        async def spawner() -> None:
            for i in ids:
                await rt.spawn(saga, i, saga_id=f"w{i:07d}")

        async with anyio.create_task_group() as tg:
            for _ in range(CONCURRENCY):
                tg.start_soon(spawner)
        with anyio.fail_after(600):
            while rt.live_actors:  # noqa: ASYNC110 - no event tells when the last one passivates
                await anyio.sleep(0.05)
        spawned_s = time.perf_counter() - began
        waiting = await rt.list(status=SagaStatus.WAITING, after=f"w{n - 2:07d}", limit=10)
        gc.collect()
        rss = current_rss_mb()
        live = rt.live_actors
    return {
        "bench": "fill",
        "n": n,
        "spawn_s": round(spawned_s, 2),
        "sagas_per_s": round(n / spawned_s, 1),
        "rss_baseline_mb": round(baseline, 1),
        "rss_waiting_mb": round(rss, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "live_actors": live,
        "last_is_waiting": [s.saga_id for s in waiting.items] == [f"w{n - 1:07d}"],
    }


async def reopen(n: int, database: Path) -> dict[str, Any]:
    saga = waiting_saga()
    began = time.perf_counter()
    async with Runtime(database, sagas=[saga]) as rt:
        ready_s = time.perf_counter() - began
        rss_ready = current_rss_mb()
        target = f"w{n // 2:07d}"
        signalled = time.perf_counter()
        await rt.signal(target, "approval", {"ok": True})
        output = await rt.handle(target).result(timeout=60)
        first_result_s = time.perf_counter() - signalled
        live = rt.live_actors
    return {
        "bench": "reopen",
        "n": n,
        "ready_s": round(ready_s, 3),
        "signal_to_result_ms": round(first_result_s * 1e3, 2),
        "rss_ready_mb": round(rss_ready, 1),
        "live_actors_after": live,
        "output_ok": output["apply"] == n // 2,
    }


def run(args: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.waiting", "--single", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--single", action="store_true")
    parser.add_argument("--phase", choices=["fill", "reopen"], default="fill")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--db", default=None)
    parser.add_argument("--sizes", default="1000,10000,100000")
    args = parser.parse_args()
    if args.single:
        phase = fill if args.phase == "fill" else reopen
        print(json.dumps(anyio.run(phase, args.n, Path(args.db))), flush=True)
        return
    rows = []
    for n in (int(size) for size in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            db = str(Path(folder) / "waiting.db")
            filled = run(["--phase", "fill", "--n", str(n), "--db", db])
            reopened = run(["--phase", "reopen", "--n", str(n), "--db", db])
        print(json.dumps(filled), flush=True)
        print(json.dumps(reopened), flush=True)
        rows.append((n, filled, reopened))
    print("\n# waiting sagas (SQLite WAL, synchronous=FULL)")
    print(f"{'sagas':>8}{'RSS MB':>9}{'peak MB':>9}{'base MB':>9}{'reopen s':>10}{'signal ms':>11}")
    for n, filled, reopened in rows:
        print(
            f"{n:>8,}{filled['rss_waiting_mb']:>9}{filled['peak_rss_mb']:>9}"
            f"{filled['rss_baseline_mb']:>9}{reopened['ready_s']:>10}"
            f"{reopened['signal_to_result_ms']:>11}"
        )


if __name__ == "__main__":
    main()
