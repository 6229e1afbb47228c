"""The child process of the code-saga SIGKILL chaos test; its parent kills it at random.

Run as `python -m tests.chaos.cart_child --db D --ledger L --count N --seed S`:
it opens a `Runtime` on D (resuming whatever its killed predecessor left),
prints OPEN, spawns carts `cart-0000` .. (exactly-once), acknowledging each in
the ledger once `spawn` returned, waits for them all and prints DONE, unless
it is killed first.

With `--dsn` it joins a PostgreSQL database instead, one runtime of several
(`--schema`, `--lease`, `--poll`): each spawns every cart (exactly one start
each) and waits until all have ended, wherever they ran. It prints
`RUNTIME <id>` after OPEN.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
from collections.abc import Sequence

import anyio

from runtime import Runtime, SagaCompensated, SqliteStore
from saga.store import SharedStore, Store

from .carts import cart_id, cart_of, cart_sagas
from .ledger import SqliteLedger

OPEN = "OPEN"
DONE = "DONE"


def _say(line: str) -> None:
    print(line, flush=True)


async def _run(args: argparse.Namespace) -> None:
    ledger = SqliteLedger(args.ledger)
    cart, fulfil = cart_sagas(ledger, random.Random(args.seed))
    store: Store
    if args.dsn:
        from runtime.postgres import PostgresStore

        store = PostgresStore(
            args.dsn, schema=args.schema, lease=args.lease, poll_interval=args.poll
        )
    else:
        store = SqliteStore(args.db)
    try:
        async with Runtime(store, sagas=[cart, fulfil], rng=random.Random(args.seed + 1)) as rt:
            _say(OPEN)
            if isinstance(store, SharedStore):
                _say(f"RUNTIME {store.runtime_id}")
            ids = [cart_id(i) for i in range(args.count)]
            for sid in ids:
                await rt.spawn(cart, cart_of(sid), saga_id=sid)
                ledger.ack(sid)
            for sid in ids:
                with contextlib.suppress(SagaCompensated):
                    await rt.result(sid)
            _say(DONE)
    finally:
        ledger.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db")
    parser.add_argument("--dsn")
    parser.add_argument("--schema", default="carts")
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    anyio.run(_run, parser.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
