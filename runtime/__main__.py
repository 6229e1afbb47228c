"""`python -m runtime`: look into a Sagaloop database, SQLite or PostgreSQL (read-only).

    python -m runtime list orders.db [--status waiting] [--saga checkout] [--limit 50]
    python -m runtime show orders.db order-42
    python -m runtime runtimes postgresql://host/db     # runtimes, leases, sagas owned

DATABASE is a SQLite path or a postgresql:// DSN (`--schema`, default
sagaloop). It reads while runtimes use the database (WAL readers never block
the writer; PostgreSQL's readers neither). To resume a suspended saga, call
`Runtime.resume` from the application that has its definition.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_POSTGRES = ("postgresql://", "postgres://")


def _query(database: str, sql: str, params: Sequence[object] = (), *, schema: str) -> list[Any]:
    """Rows of `sql` (with `?` placeholders) from a SQLite file or a PostgreSQL DSN."""
    if database.startswith(_POSTGRES):
        return _pg_query(database, sql, params, schema)
    path = Path(database)
    if not path.exists():
        raise SystemExit(f"no such database: {database}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _pg_query(dsn: str, sql: str, params: Sequence[object], schema: str) -> list[Any]:
    import asyncio

    import asyncpg

    from .postgres._schema import check_schema_name

    parts = sql.split("?")
    numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))

    async def fetch() -> list[Any]:
        conn = await asyncpg.connect(
            dsn, server_settings={"search_path": f'"{check_schema_name(schema)}"'}
        )
        try:
            async with conn.transaction(readonly=True):
                return [tuple(row) for row in await conn.fetch(numbered, *params)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def list_sagas(
    database: str, status: str | None, saga: str | None, limit: int, *, schema: str
) -> int:
    clauses, params = [], []
    for column, value in (("status", status), ("saga_name", saga)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = _query(
        database,
        "SELECT saga_id, saga_name, status, seq, waiting_for, wake_at, error FROM sagas "
        f"{where} ORDER BY saga_id LIMIT ?",
        [*params, limit],
        schema=schema,
    )
    print(f"{'saga_id':<24} {'saga':<16} {'status':<13} {'seq':>4}  waiting_for / error")
    for saga_id, name, row_status, seq, waiting_for, wake_at, error in rows:
        detail = error or waiting_for or ("" if wake_at is None else f"wakes at {wake_at:.0f}")
        print(f"{saga_id:<24} {name:<16} {row_status:<13} {seq:>4}  {detail}")
    return 0


def show(database: str, saga_id: str, *, schema: str) -> int:
    rows = _query(
        database,
        "SELECT saga_name, status, input, snapshot, error FROM sagas WHERE saga_id = ?",
        (saga_id,),
        schema=schema,
    )
    if not rows:
        print(f"no saga with id {saga_id!r}", file=sys.stderr)
        return 1
    history = _query(
        database,
        "SELECT seq, event FROM history WHERE saga_id = ? ORDER BY seq",
        (saga_id,),
        schema=schema,
    )
    inbox = _query(
        database,
        "SELECT kind, name, key FROM inbox WHERE saga_id = ? ORDER BY id",
        (saga_id,),
        schema=schema,
    )
    name, status, input_text, snapshot, error = rows[0]
    print(f"saga {saga_id} ({name}): {status}" + (f"  [{error}]" if error else ""))
    print(f"input: {input_text}")
    print(f"snapshot: {snapshot}")
    for seq, event in history:
        print(f"  #{seq:<4} {json.dumps(json.loads(event), sort_keys=True)}")
    for kind, item, key in inbox:
        print(f"  inbox: {kind} {item!r}" + (f" key={key}" if key else ""))
    return 0


def runtimes(database: str, *, schema: str) -> int:
    if not database.startswith(_POSTGRES):
        print("one SQLite file serves one runtime: nothing to list", file=sys.stderr)
        return 1
    rows = _query(
        database,
        "SELECT r.runtime_id, r.name, "
        "extract(epoch FROM r.lease_until - clock_timestamp())::float8, "
        "(SELECT count(*) FROM sagas s WHERE s.owner = r.runtime_id) "
        "FROM runtimes r ORDER BY r.started_at",
        schema=schema,
    )
    print(f"{'runtime_id':<24} {'name':<28} {'lease':>10} {'sagas':>7}")
    for runtime_id, name, remaining, owned in rows:
        lease = f"{remaining:.1f} s" if remaining >= 0 else "lapsed"
        print(f"{runtime_id:<24} {name:<28} {lease:>10} {owned:>7}")
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
    listing_runtimes = commands.add_parser(
        "runtimes", help="PostgreSQL: the runtimes, their leases and the sagas each owns"
    )
    listing_runtimes.add_argument("database")
    for command in (listing, showing, listing_runtimes):
        command.add_argument("--schema", default="sagaloop", help="PostgreSQL schema")
    args = parser.parse_args(argv)
    if args.command == "list":
        return list_sagas(args.database, args.status, args.saga, args.limit, schema=args.schema)
    if args.command == "runtimes":
        return runtimes(args.database, schema=args.schema)
    return show(args.database, args.saga_id, schema=args.schema)


if __name__ == "__main__":
    raise SystemExit(main())
