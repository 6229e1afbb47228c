"""Checkout-saga benchmark: Sagaloop side by side with the anchors, in the same run.

    python -m bench.checkout                 # the suite: medians of 3 runs + ratio table
    python -m bench.checkout --single --conc 100 --n 20000 [--fail]   # one JSON line

The saga is the anchors' one: create_order, charge_payment, reserve_inventory
with no-op steps; on --fail reserve_inventory raises a non-retryable error
and refund + cancel run. Every figure is at SQLite WAL + synchronous=FULL:
each transition is durable before the saga acts on it.

Anchors (scripts in ../shared/bench, run by their own interpreters):
  floor: sqlite_floor.py --writer group-aio --sync FULL (needs aiosqlite:
         this venv's python by default, or --floor-python / SAGALOOP_FLOOR_PYTHON)
  DBOS:  dbos_checkout.py (needs dbos==3.4.0 in its own venv:
         --dbos-python / SAGALOOP_DBOS_PYTHON; skipped when not given)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from runtime import Runtime, SagaCompensated
from saga import NonRetryableError, Saga, Step, StepContext

SHARED_BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench"


class InventoryError(NonRetryableError):
    pass


async def create_order(ctx: StepContext, oid: int) -> dict[str, Any]:
    return {"order_id": oid, "status": "created"}


async def charge_payment(ctx: StepContext, oid: int) -> dict[str, Any]:
    return {"charge_id": f"ch_{oid}", "amount": 4200}


async def reserve_inventory(ctx: StepContext, oid: int) -> dict[str, Any]:
    return {"reservation": f"r_{oid}"}


async def reserve_inventory_failing(ctx: StepContext, oid: int) -> dict[str, Any]:
    raise InventoryError("out of stock")


async def refund_payment(ctx: StepContext, oid: int, result: object) -> None:
    return None


async def cancel_order(ctx: StepContext, oid: int, result: object) -> None:
    return None


def checkout_saga(fail: bool) -> Saga:
    return Saga(
        "checkout",
        [
            Step("create_order", create_order, compensate=cancel_order),
            Step("charge_payment", charge_payment, compensate=refund_payment),
            Step("reserve_inventory", reserve_inventory_failing if fail else reserve_inventory),
        ],
        input_type=int,
    )


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


async def run_single(
    n: int, conc: int, fail: bool, sync: str, database: Path, prefix: str = ""
) -> dict[str, Any]:
    saga = checkout_saga(fail)
    latencies: list[float] = []
    outcomes = {"completed": 0, "compensated": 0}
    next_id = iter(range(n))
    async with Runtime(database, sagas=[saga], synchronous=sync) as rt:  # type: ignore[arg-type]

        async def worker() -> None:
            for oid in next_id:
                began = time.perf_counter()
                handle = await rt.spawn(saga, oid, saga_id=f"{prefix}{oid}")
                try:
                    await handle.result()
                    outcomes["completed"] += 1
                except SagaCompensated:
                    outcomes["compensated"] += 1
                latencies.append(time.perf_counter() - began)

        cpu0 = time.process_time()
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(conc):
                tg.start_soon(worker)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        store = rt.store
        batches = getattr(store, "batches_committed", 0)
        rows = getattr(store, "rows_committed", 0)
    return {
        "impl": "sagaloop",
        "conc": conc,
        "fail": fail,
        "journal": f"wal_{sync.lower()}",
        "n": n,
        "wall_s": round(wall, 3),
        "wf_per_s": round(n / wall, 1),
        "p50_ms": round(percentile(latencies, 50) * 1e3, 3),
        "p99_ms": round(percentile(latencies, 99) * 1e3, 3),
        "cpu_ms_per_wf": round(cpu / n * 1e3, 3),
        "mean_batch": round(rows / batches, 1) if batches else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "results": outcomes,
        "python": sys.version.split()[0],
    }


def run_json(command: list[str]) -> dict[str, Any] | None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        print(f"# failed: {' '.join(command)}\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def suite(args: argparse.Namespace) -> None:
    floor_python = args.floor_python or os.environ.get("SAGALOOP_FLOOR_PYTHON") or sys.executable
    dbos_python = args.dbos_python or os.environ.get("SAGALOOP_DBOS_PYTHON")
    shared = Path(args.anchors)
    scenarios = [
        ("conc100", 100, False, args.n),
        ("fail-conc100", 100, True, args.n),
        ("conc1", 1, False, max(500, args.n // 20)),
    ]
    table: list[tuple[str, str, float | None, float | None, float | None]] = []
    pairs: dict[str, list[float]] = {}
    for label, conc, fail, n in scenarios:
        impls: dict[str, list[dict[str, Any]]] = {"sagaloop": [], "floor": [], "dbos": []}
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as folder:
                mine = [sys.executable, "-m", "bench.checkout", "--single", "--n", str(n)]
                mine += ["--conc", str(conc), "--db", str(Path(folder) / "s.db")]
                mine += ["--fail"] if fail else []
                impls["sagaloop"].append(run_json(mine) or {})
                floor = [floor_python, str(shared / "sqlite_floor.py"), "--writer", "group-aio"]
                floor += ["--sync", "FULL", "--conc", str(conc), "--n", str(n)]
                floor += ["--db", str(Path(folder) / "floor.db")] + (["--fail"] if fail else [])
                if (shared / "sqlite_floor.py").exists():
                    impls["floor"].append(run_json(floor) or {})
                if dbos_python and (shared / "dbos_checkout.py").exists():
                    dbos_n = min(n, 2000 if conc > 1 else 500)
                    dbos = [dbos_python, str(shared / "dbos_checkout.py"), "--api", "async"]
                    dbos += ["--mode", "conc" if conc > 1 else "seq", "--conc", str(conc)]
                    dbos += ["--n", str(dbos_n), "--journal", args.dbos_journal]
                    dbos += ["--db", str(Path(folder) / "dbos.sqlite")]
                    dbos += ["--fail"] if fail else []
                    impls["dbos"].append(run_json(dbos) or {})
        # Each Sagaloop run and the floor run right after it make a pair: on a noisy
        # machine their ratio varies less than the ratio of two medians.
        pairs[label] = sorted(
            mine["wf_per_s"] / floor["wf_per_s"]
            for mine, floor in zip(impls["sagaloop"], impls["floor"], strict=False)
            if mine.get("wf_per_s") and floor.get("wf_per_s")
        )
        for impl, runs in impls.items():
            for run in runs:
                if run:
                    print(json.dumps({"scenario": label, "impl_group": impl, **run}), flush=True)
            if runs:
                table.append(
                    (
                        label,
                        impl,
                        median_of(runs, "wf_per_s"),
                        median_of(runs, "p50_ms"),
                        median_of(runs, "peak_rss_mb"),
                    )
                )
    print_table(table, pairs, args)


def print_table(
    table: list[tuple[str, str, float | None, float | None, float | None]],
    pairs: dict[str, list[float]],
    args: argparse.Namespace,
) -> None:
    print(f"\n# medians of {args.runs} runs, SQLite WAL synchronous=FULL, {os.cpu_count()} cores")
    print(f"{'scenario':<14}{'impl':<10}{'wf/s':>10}{'p50 ms':>10}{'RSS MB':>9}  ratios")
    by_key = {(row[0], row[1]): row for row in table}
    for scenario, impl, rate, p50, rss in table:
        ratios = []
        if impl == "sagaloop":
            for anchor in ("floor", "dbos"):
                other = by_key.get((scenario, anchor))
                if other and other[2] and rate:
                    ratios.append(f"{rate / other[2]:.2f}x {anchor} throughput")
                    paired = pairs.get(scenario) if anchor == "floor" else None
                    if paired:
                        ratios[-1] += (
                            f" (pairs {paired[0]:.2f}-{paired[-1]:.2f},"
                            f" median {statistics.median(paired):.2f})"
                        )
                if other and other[3] and p50 and scenario == "conc1":
                    ratios.append(f"{p50 / other[3]:.2f}x {anchor} p50")
        print(
            f"{scenario:<14}{impl:<10}{_fmt(rate):>10}{_fmt(p50):>10}{_fmt(rss):>9}  "
            + "; ".join(ratios)
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--single", action="store_true", help="one Sagaloop run, one JSON line")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--conc", type=int, default=100)
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--sync", default="FULL", choices=["NORMAL", "FULL", "EXTRA"])
    parser.add_argument("--db", default=None)
    parser.add_argument("--prefix", default="", help="saga id prefix (runs sharing a database)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--anchors", default=str(SHARED_BENCH))
    parser.add_argument("--floor-python", default=None)
    parser.add_argument("--dbos-python", default=None)
    parser.add_argument(
        "--dbos-journal", default="default", choices=["default", "wal_normal", "wal_full"]
    )
    args = parser.parse_args()
    if not args.single:
        suite(args)
        return
    with tempfile.TemporaryDirectory() as folder:
        database = Path(args.db) if args.db else Path(folder) / "bench.db"
        result = anyio.run(
            run_single, args.n, args.conc, args.fail, args.sync, database, args.prefix
        )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
