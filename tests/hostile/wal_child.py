"""A runtime whose `-wal` file is deleted under it: prints each spawn's fate, then waits
for its SIGKILL (tests/hostile/test_lost_files.py)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import anyio

from runtime import Runtime
from saga import Saga, StoreError, WaitForSignal

PARKED = Saga("parked", [WaitForSignal("go")])
"""Writes once when spawned, then waits: nothing else touches the database."""
READY = "READY"


def _say(line: str) -> None:
    print(line, flush=True)


async def _run(args: argparse.Namespace) -> None:
    async with Runtime(args.db, sagas=[PARKED]) as rt:
        for n in range(args.before):
            await rt.spawn(PARKED, None, saga_id=f"before-{n}")
            _say(f"ACK before-{n}")
        os.unlink(f"{args.db}-wal")
        for n in range(args.after):
            try:
                await rt.spawn(PARKED, None, saga_id=f"after-{n}")
            except StoreError as exc:
                _say(f"REFUSED after-{n} {exc}")
            else:
                _say(f"ACK after-{n}")
        _say(READY)
        await anyio.sleep_forever()  # until the SIGKILL


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True)
    parser.add_argument("--before", type=int, required=True)
    parser.add_argument("--after", type=int, required=True)
    anyio.run(_run, parser.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
