"""`python -m runtime`: look into a Sagaloop SQLite database (read-only).

    python -m runtime list orders.db [--status waiting] [--saga checkout] [--limit 50]
    python -m runtime show orders.db order-42

It reads the file while a runtime may be using it (WAL readers never block
the writer). To resume a suspended saga, call `Runtime.resume` from the
application that has its definition.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path


def _connect(database: str) -> sqlite3.Connection:
    path = Path(database)
    if not path.exists():
        raise SystemExit(f"no such database: {database}")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def list_sagas(database: str, status: str | None, saga: str | None, limit: int) -> int:
    clauses, params = [], []
    for column, value in (("status", status), ("saga_name", saga)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    with _connect(database) as conn:
        rows = conn.execute(
            "SELECT saga_id, saga_name, status, seq, waiting_for, wake_at, error FROM sagas "
            f"{where} ORDER BY saga_id LIMIT ?",
            [*params, limit],
        ).fetchall()
    print(f"{'saga_id':<24} {'saga':<16} {'status':<13} {'seq':>4}  waiting_for / error")
    for saga_id, name, row_status, seq, waiting_for, wake_at, error in rows:
        detail = error or waiting_for or ("" if wake_at is None else f"wakes at {wake_at:.0f}")
        print(f"{saga_id:<24} {name:<16} {row_status:<13} {seq:>4}  {detail}")
    return 0


def show(database: str, saga_id: str) -> int:
    with _connect(database) as conn:
        row = conn.execute(
            "SELECT saga_name, status, input, snapshot, error FROM sagas WHERE saga_id = ?",
            (saga_id,),
        ).fetchone()
        if row is None:
            print(f"no saga with id {saga_id!r}", file=sys.stderr)
            return 1
        history = conn.execute(
            "SELECT seq, event FROM history WHERE saga_id = ? ORDER BY seq", (saga_id,)
        ).fetchall()
        inbox = conn.execute(
            "SELECT kind, name, key FROM inbox WHERE saga_id = ? ORDER BY id", (saga_id,)
        ).fetchall()
    name, status, input_text, snapshot, error = row
    print(f"saga {saga_id} ({name}): {status}" + (f"  [{error}]" if error else ""))
    print(f"input: {input_text}")
    print(f"snapshot: {snapshot}")
    for seq, event in history:
        print(f"  #{seq:<4} {json.dumps(json.loads(event), sort_keys=True)}")
    for kind, item, key in inbox:
        print(f"  inbox: {kind} {item!r}" + (f" key={key}" if key else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list sagas")
    listing.add_argument("database")
    listing.add_argument("--status")
    listing.add_argument("--saga")
    listing.add_argument("--limit", type=int, default=100)
    showing = commands.add_parser("show", help="one saga: snapshot, history, inbox")
    showing.add_argument("database")
    showing.add_argument("saga_id")
    args = parser.parse_args(argv)
    if args.command == "list":
        return list_sagas(args.database, args.status, args.saga, args.limit)
    return show(args.database, args.saga_id)


if __name__ == "__main__":
    raise SystemExit(main())
