"""The child process of the PostgreSQL scale-out tests: one runtime of several on one database.

Run as `python -m tests.runtime.pg_child --dsn D --ledger L --count N ...`:
it joins the shared database D with a `PostgresStore` (its own lease),
prints `RUNTIME <runtime id>`, spawns every saga `order-000` ..
`order-{N-1}` in its own shuffled order, many at once (the other runtimes
spawn the same ids: exactly one start each), prints `READY`, waits until
every one of them has ended, wherever it ran, and prints `DONE`.
`--no-spawn` only looks the ids up: a runtime that just takes sagas over.
`--naps K` also spawns `nap-000` .. : a step, a durable sleep until the
input's `wake_at`, a step (the `nap` saga, its effects in the ledger too).

The sagas are `crash_child`'s checkout with its plans and ledger. Warnings
(a saga "dropped" after a takeover, a lapsed lease) go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio

from runtime import Runtime, SagaCompensated
from runtime.postgres import PostgresStore
from saga import Saga, Sleep, Step, StepContext, StoreError

from .crash_child import DONE, READY, build_checkout, order_input, saga_id
from .ledger import Ledger

RUNTIME = "RUNTIME"
SHARED = "SHARED"
"""Printed once a runtime created its own share (`--share`)."""
STORE_RETRY = 0.1
"""Seconds between two tries of a read that met a database outage."""


def nap_id(index: int) -> str:
    return f"nap-{index:03d}"


def build_nap(ledger: Ledger) -> Saga:
    """A step, a durable sleep until `input["wake_at"]` (epoch seconds), a step."""

    def record(name: str) -> Any:
        async def act(ctx: StepContext, nap: dict[str, Any]) -> int:
            ledger.record(
                key=ctx.idempotency_key,
                kind="effect",
                saga_id=ctx.saga_id,
                step=name,
                attempt=ctx.attempt,
            )
            return os.getpid()

        act.__name__ = name
        return act

    def until(ctx: StepContext, nap: dict[str, Any]) -> float:
        wake_at: float = nap["wake_at"]
        return wake_at

    return Saga(
        "nap",
        [
            Step("before", record("before")),
            Sleep("nap", until=until),
            Step("after", record("after")),
        ],
    )


async def _wait_for_file(path: str) -> None:
    """Until the parent creates `path` (no event crosses processes)."""
    while not await anyio.Path(path).exists():  # noqa: ASYNC110
        await anyio.sleep(0.01)


def _share(text: str) -> tuple[int, int]:
    share, of = (int(part) for part in text.split("/"))
    return share, of


def _say(line: str) -> None:
    print(line, flush=True)


async def _spawn_all(rt: Runtime, args: argparse.Namespace, ids: list[str]) -> None:
    checkout = "checkout"
    order = list(ids)
    random.Random(args.shuffle_seed).shuffle(order)
    limiter = anyio.CapacityLimiter(args.concurrency)

    async def spawn(sid: str) -> None:
        async with limiter:
            await rt.spawn(checkout, order_input(sid), saga_id=sid)

    async with anyio.create_task_group() as tg:
        for sid in order:
            tg.start_soon(spawn, sid)


async def _wait_all(rt: Runtime, ids: list[str]) -> None:
    for sid in ids:
        while True:
            try:
                await rt.handle(sid).result()
            except SagaCompensated:
                pass
            except StoreError as exc:
                # The database is restarting: the application asks again.
                print(f"waiting for {sid}: {exc}", file=sys.stderr, flush=True)
                await anyio.sleep(STORE_RETRY)
                continue
            break


async def _run(args: argparse.Namespace) -> None:
    ledger = Ledger(args.ledger)
    checkout = build_checkout(ledger, random.Random(args.seed), max_pause=args.max_pause)
    nap = build_nap(ledger)
    store = PostgresStore(args.dsn, lease=args.lease, poll_interval=args.poll)
    ids = [saga_id(i) for i in range(args.count)]
    naps = [nap_id(i) for i in range(args.naps)]
    try:
        async with Runtime(
            store,
            sagas=[checkout, nap],
            max_recoveries=args.max_recoveries,
            keep_warm=args.keep_warm,
            rng=random.Random(args.seed + 1),
        ) as rt:
            _say(f"{RUNTIME} {store.runtime_id}")
            if args.start_file:
                # Wait for the other runtimes to join, so that the spawns race.
                await _wait_for_file(args.start_file)
            if args.share is not None:
                # Each runtime first creates its own share of the first half, so that
                # all of them create sagas however the scheduler favours one; then the
                # parent lets all spawn every id (the second half races).
                share, of = args.share
                await _spawn_all(
                    rt, args, [s for i, s in enumerate(ids[: len(ids) // 2]) if i % of == share]
                )
                _say(SHARED)
                await _wait_for_file(f"{args.start_file}.all")
            if not args.no_spawn:
                await _spawn_all(rt, args, ids)
                for sid in naps:
                    # --wake-in: a due time counted from the spawn, however slow the start
                    wake_at = time.time() + args.wake_in if args.wake_in else args.wake_at
                    await rt.spawn(nap, {"wake_at": wake_at}, saga_id=sid)
            _say(READY)
            with anyio.fail_after(args.timeout):
                await _wait_all(rt, ids + naps)
            _say(f"STATS lease_lapses={store.lease_lapses} batches={store.batches_committed}")
            _say(DONE)
    finally:
        ledger.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--shuffle-seed", type=int, required=True)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("--max-pause", type=float, default=0.01)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-recoveries", type=int, default=5)
    parser.add_argument("--no-spawn", action="store_true")
    parser.add_argument("--start-file", default=None)
    parser.add_argument("--share", type=_share, default=None, help="INDEX/COUNT, with --start-file")
    parser.add_argument("--naps", type=int, default=0)
    parser.add_argument("--wake-at", type=float, default=0.0)
    parser.add_argument("--wake-in", type=float, default=0.0)
    parser.add_argument("--keep-warm", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    anyio.run(_run, args)


if __name__ == "__main__":
    # Run the module's own copy, so that error types carry their importable names.
    from tests.runtime.pg_child import main as canonical_main

    canonical_main(sys.argv[1:])
