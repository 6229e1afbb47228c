"""What a payload codec costs: checkout throughput plain, compressed and encrypted.

    python -m bench.codec --n 5000 --runs 3

The checkout benchmark (100 in flight, SQLite, synchronous=FULL) with no codec,
with `Compression()`, and with `chain(Compression(), AesGcm(...))`, in turns in one
process; prints each run and the medians' ratios to the plain one.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from runtime import Runtime
from runtime.codecs import AesGcm, Compression, PayloadCodec, chain

from .checkout import checkout_saga

IN_FLIGHT = 100


def codecs() -> dict[str, PayloadCodec | None]:
    return {
        "plain": None,
        "compressed": Compression(),
        "encrypted": chain(Compression(), AesGcm({"k1": os.urandom(32)}, "k1")),
    }


async def throughput(database: Path, n: int, codec: PayloadCodec | None) -> dict[str, Any]:
    saga = checkout_saga(fail=False)
    next_id = iter(range(n))
    async with Runtime(database, sagas=[saga], codec=codec) as rt:

        async def worker() -> None:
            for oid in next_id:
                await (await rt.spawn(saga, oid, saga_id=f"o-{oid}")).result()

        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(IN_FLIGHT):
                tg.start_soon(worker)
        wall = time.perf_counter() - began
    return {"per_s": round(n / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {name: [] for name in codecs()}
    with tempfile.TemporaryDirectory() as folder:
        for run in range(args.runs):
            for name, codec in codecs().items():
                database = Path(folder) / f"{name}-{run}.db"
                result = anyio.run(throughput, database, args.n, codec)
                result["db_mb"] = round(database.stat().st_size / 2**20, 2)
                rates[name].append(result["per_s"])
                print(json.dumps({"codec": name, "run": run, **result}), flush=True)

    def median(name: str) -> float:
        values = sorted(rates[name])
        return values[len(values) // 2]

    plain = median("plain")
    print(
        f"\n# checkout, {IN_FLIGHT} in flight, medians of {args.runs}: plain {plain:,.0f}/s; "
        f"compressed {median('compressed'):,.0f}/s (ratio {median('compressed') / plain:.2f}); "
        f"compressed+AES-GCM {median('encrypted'):,.0f}/s "
        f"(ratio {median('encrypted') / plain:.2f})"
    )


if __name__ == "__main__":
    main()
