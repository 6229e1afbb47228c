"""Checkout-saga benchmark: Sagaloop side by side with the anchors, in the same run.

    python -m bench.checkout                 # the suite: medians of 3 runs + ratio table
    python -m bench.checkout --single --conc 100 --n 20000 [--fail] [--style code]  # one JSON line

The saga is the anchors' one: create_order, charge_payment, reserve_inventory
with no-op steps; on --fail reserve_inventory raises a non-retryable error
and refund + cancel run. Every figure is at SQLite WAL + synchronous=FULL:
each transition is durable before the saga acts on it.

The suite runs the saga in both styles, in the same run and at the same
concurrency: as a step list (`Saga(name, [Step, ...])`, the rows "sagaloop")
and as a code saga (`Saga(name, body)` making the same three `ctx.step`
calls with the same actions and compensations, the rows "code"). The code
rows give code/list and code vs floor ratios, each also over the pairs of
runs made in the same round. A code run has a quarter of the list run's
sagas (at least 500; `--code-share`), to keep the suite short; `--code-share
0` leaves the code saga out.

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
from saga import NonRetryableError, Saga, SagaContext, Step, StepContext

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


def checkout_code_saga(fail: bool) -> Saga[int, dict[str, Any]]:
    """The same checkout as a code saga: the same three steps, actions and compensations,
    and the same output (each step's name mapped to its result)."""
    reserve = reserve_inventory_failing if fail else reserve_inventory

    async def checkout(ctx: SagaContext, oid: int) -> dict[str, Any]:
        order = await ctx.step("create_order", create_order, oid, compensate=cancel_order)
        charge = await ctx.step("charge_payment", charge_payment, oid, compensate=refund_payment)
        reservation = await ctx.step("reserve_inventory", reserve, oid)
        return {
            "create_order": order,
            "charge_payment": charge,
            "reserve_inventory": reservation,
        }

    return Saga("checkout", checkout, input_type=int)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


async def run_single(
    n: int,
    conc: int,
    fail: bool,
    sync: str,
    database: Path,
    prefix: str = "",
    style: str = "list",
) -> dict[str, Any]:
    saga = checkout_code_saga(fail) if style == "code" else checkout_saga(fail)
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
    # A list run's line stays as it always was; a code run's says so.
    return {
        "impl": "sagaloop" if style == "list" else "sagaloop-code",
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


def code_n(n: int, share: float) -> int:
    """The saga count of a code run beside a list run of `n` (`--code-share`): throughput
    does not depend on it (seen: code conc100 at 5,000, 10,000 and 20,000 sagas within the
    run-to-run noise), and smaller runs keep `make bench` short."""
    return min(n, max(500, round(n * share)))


def ratios_of(rates: list[dict[str, Any]], bases: list[dict[str, Any]]) -> list[float]:
    """The sorted throughput ratios of runs made one right after the other."""
    return sorted(
        rate["wf_per_s"] / base["wf_per_s"]
        for rate, base in zip(rates, bases, strict=False)
        if rate.get("wf_per_s") and base.get("wf_per_s")
    )


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
    code_pairs: dict[tuple[str, str], list[float]] = {}
    for label, conc, fail, n in scenarios:
        impls: dict[str, list[dict[str, Any]]] = {
            "sagaloop": [],
            "floor": [],
            "dbos": [],
            "code": [],  # last: its lines and rows come after the ones there always were
        }
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as folder:
                mine = [sys.executable, "-m", "bench.checkout", "--single", "--n", str(n)]
                mine += ["--conc", str(conc), "--db", str(Path(folder) / "s.db")]
                mine += ["--fail"] if fail else []
                if args.code_share > 0:
                    # The code run goes first: the list run and the floor run stay
                    # adjacent, as they always were, and the code run is next to the list run.
                    code = [sys.executable, "-m", "bench.checkout", "--single", "--style", "code"]
                    code += ["--n", str(code_n(n, args.code_share)), "--conc", str(conc)]
                    code += ["--db", str(Path(folder) / "code.db")] + (["--fail"] if fail else [])
                    impls["code"].append(run_json(code) or {})
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
        pairs[label] = ratios_of(impls["sagaloop"], impls["floor"])
        code_pairs[label, "list"] = ratios_of(impls["code"], impls["sagaloop"])
        code_pairs[label, "floor"] = ratios_of(impls["code"], impls["floor"])
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
    print_table(table, pairs, args, code_pairs)
    if args.code_share > 0:
        counts = ", ".join(
            f"{label} {code_n(n, args.code_share):,}" for label, _, _, n in scenarios
        )
        print(
            "# code: the same checkout as Saga(name, body) with three ctx.step calls (the list"
            f" rows: Saga(name, [Step, ...])); sagas per code run: {counts}"
            f" (--code-share {args.code_share:g}); pairs: each code run and the list or floor"
            " run of the same round"
        )


def _paired(paired: list[float] | None) -> str:
    if not paired:
        return ""
    return f" (pairs {paired[0]:.2f}-{paired[-1]:.2f}, median {statistics.median(paired):.2f})"


def code_ratios(
    scenario: str,
    rate: float | None,
    p50: float | None,
    by_key: dict[tuple[str, str], tuple[str, str, float | None, float | None, float | None]],
    code_pairs: dict[tuple[str, str], list[float]],
) -> list[str]:
    """The code row's ratios: code/list, then code vs each anchor."""
    ratios = []
    for other_impl, name in (("sagaloop", "list"), ("floor", "floor"), ("dbos", "dbos")):
        other = by_key.get((scenario, other_impl))
        if not (other and other[2] and rate):
            continue
        label = "code/list" if name == "list" else f"code vs {name}"
        ratios.append(
            f"{label} {rate / other[2]:.2f}x throughput" + _paired(code_pairs.get((scenario, name)))
        )
        if other[3] and p50 and scenario == "conc1":
            ratios.append(f"{label} {p50 / other[3]:.2f}x p50")
    return ratios


def print_table(
    table: list[tuple[str, str, float | None, float | None, float | None]],
    pairs: dict[str, list[float]],
    args: argparse.Namespace,
    code_pairs: dict[tuple[str, str], list[float]] | None = None,
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
                    paired = pairs.get(scenario) if anchor == "floor" else None
                    ratios.append(f"{rate / other[2]:.2f}x {anchor} throughput" + _paired(paired))
                if other and other[3] and p50 and scenario == "conc1":
                    ratios.append(f"{p50 / other[3]:.2f}x {anchor} p50")
        elif impl == "code":
            ratios = code_ratios(scenario, rate, p50, by_key, code_pairs or {})
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
    parser.add_argument(
        "--style", default="list", choices=["list", "code"], help="--single: saga style"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--code-share",
        type=float,
        default=0.25,
        help="sagas per code-saga run, as a share of the list run's (at least 500);"
        " 0: no code runs",
    )
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
            run_single, args.n, args.conc, args.fail, args.sync, database, args.prefix, args.style
        )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
