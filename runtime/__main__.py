"""`python -m runtime`: look into a Sagaloop database, SQLite or PostgreSQL (read-only).

    python -m runtime list orders.db [--status waiting] [--saga checkout] [--version 2] [--limit 50]
    python -m runtime show orders.db order-42
    python -m runtime runtimes postgresql://host/db     # runtimes, leases, sagas owned
    python -m runtime check-replay orders.db --sagas shop.sagas:checkout  # before a deploy
    python -m runtime prune orders.db --older-than 30d [--dry-run] [--status failed]

DATABASE is a SQLite path or a postgresql:// DSN (`--schema`, default
sagaloop). A SQLite file is opened read-only on exactly the path given: it is
never created nor written (SQLite may leave the -wal and -shm files a WAL
reader needs beside it); PostgreSQL is read in read-only transactions. It
reads while runtimes use the database (WAL readers never block the writer;
PostgreSQL's readers neither). `prune` is the one command that writes: it
deletes ended sagas a page per short transaction, safe while a runtime runs.
What the database holds is printed escaped, one saga a line. To resume a
suspended saga, call `Runtime.resume` from the application that has its
definition.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from saga import SagaStatus

_POSTGRES = ("postgresql://", "postgres://")
_MAX_LIMIT = 2**63 - 1  # SQLite's and PostgreSQL's LIMIT are 64-bit


def printable(value: object) -> str:
    """`value` as visible text on one line: control characters, ANSI escapes, surrogates escaped."""
    text = value if isinstance(value, str) else str(value)
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _decode(data: bytes) -> str:
    """SQLite text as str even when it is not UTF-8: one bad row must not hide the others."""
    return data.decode("utf-8", "backslashreplace")


def _query(database: str, sql: str, params: Sequence[object] = (), *, schema: str) -> list[Any]:
    """Rows of `sql` (with `?` placeholders) from a SQLite file or a PostgreSQL DSN."""
    if database.startswith(_POSTGRES):
        return _pg_query(database, sql, params, schema)
    path = Path(database)
    if not path.exists():
        raise SystemExit(f"no such database: {printable(database)}")
    if not path.is_file():  # a folder, a device, a pipe that would block the read
        raise SystemExit(f"{printable(database)} is not a Sagaloop database: not a file")
    # A URI built by hand would read `#` and `?` in the path as its fragment and query.
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        conn.text_factory = _decode
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:  # not SQLite, empty, another application's tables
        raise SystemExit(f"{printable(database)} is not a Sagaloop database: {exc}") from None


def without_password(dsn: str) -> str:
    """`dsn` with no password left in it, to show in messages."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparsable DSN>"
    userinfo, at, hosts = parts.netloc.rpartition("@")
    query = [
        (key, value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
        if "password" not in key
    ]
    netloc = userinfo.partition(":")[0] + at + hosts
    return printable(urlunsplit(parts._replace(netloc=netloc, query=urlencode(query))))


class _UnreadableError(Exception):
    """The message to exit with, raised inside the event loop and turned into SystemExit outside."""


def _pg_query(dsn: str, sql: str, params: Sequence[object], schema: str) -> list[Any]:
    import asyncio

    import asyncpg

    from .postgres._schema import check_schema_name

    search_path = f'"{check_schema_name(schema)}"'
    where = without_password(dsn)
    try:
        password = urlsplit(dsn).password
    except ValueError:
        password = None

    def reason(exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        return printable(text.replace(password, "***") if password else text)

    parts = sql.split("?")
    numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))

    async def fetch() -> list[Any]:
        try:
            conn = await asyncpg.connect(
                dsn, timeout=10, server_settings={"search_path": search_path}
            )
        # OSError covers TimeoutError (asyncio's too); ValueError a DSN asyncpg cannot parse.
        except (OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _UnreadableError(f"cannot reach PostgreSQL at {where}: {reason(exc)}") from exc
        try:
            async with conn.transaction(readonly=True):
                return [tuple(row) for row in await conn.fetch(numbered, *params)]
        except asyncpg.UndefinedTableError as exc:
            raise _UnreadableError(
                f"{where} (schema {schema}) is not a Sagaloop database: {reason(exc)}"
            ) from exc
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _UnreadableError(f"cannot read PostgreSQL at {where}: {reason(exc)}") from exc
        finally:
            await conn.close()

    try:
        return asyncio.run(fetch())
    except _UnreadableError as exc:
        raise SystemExit(str(exc)) from None


ENCRYPTED = "<encrypted>"


def opened(column: object, codec: Any) -> object:
    """A stored value as its JSON text: a sealed one opened with `codec` (`--key-file`),
    `<encrypted>` without one, `<undecodable: why>` if the key cannot open it."""
    from ._codec import is_sealed, unseal

    if not is_sealed(column):
        return column
    if codec is None:
        return ENCRYPTED
    try:
        return unseal("", column, codec, "value").decode("utf-8", "backslashreplace")  # type: ignore[arg-type]
    except Exception as exc:
        return f"<undecodable: {exc}>"


def _suspended_reason(snapshot: object, codec: Any = None) -> object:
    """The reason a runtime suspended the saga, from its snapshot; None if it cannot be read."""
    snapshot = opened(snapshot, codec)
    try:
        state = json.loads(snapshot) if isinstance(snapshot, str | bytes) else None
    except (ValueError, RecursionError):
        return None
    return state.get("suspended_reason") if isinstance(state, dict) else None


def _version_column(database: str, *, schema: str) -> str:
    """`version`, or `1` for a database written before versions had a column (read-only:
    the CLI never migrates)."""
    try:
        _query(database, "SELECT version FROM sagas LIMIT 0", schema=schema)
    except SystemExit:
        return "1"
    return "version"


def list_sagas(
    database: str,
    status: str | None,
    saga: str | None,
    limit: int,
    *,
    schema: str,
    version: int | None = None,
    codec: Any = None,
) -> int:
    version_column = _version_column(database, schema=schema)
    clauses, params = [], []
    for column, value in (("status", status), ("saga_name", saga), (version_column, version)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    # `error` holds a quarantined saga's reason; the runtime's own suspensions are in the snapshot.
    rows = _query(
        database,
        f"SELECT saga_id, saga_name, {version_column}, status, seq, waiting_for, wake_at, error, "
        "CASE WHEN status = 'suspended' THEN snapshot END FROM sagas "
        f"{where} ORDER BY saga_id LIMIT ?",
        [*params, limit],
        schema=schema,
    )
    print(f"{'saga_id':<24} {'saga':<16} {'status':<13} {'seq':>4} {'ver':>4}  waiting_for / error")
    for saga_id, name, saga_version, row_status, seq, waiting_for, wake_at, error, snap in rows:
        detail = error or _suspended_reason(snap, codec) or waiting_for
        if not detail and wake_at is not None:
            detail = f"wakes at {wake_at:.0f}" if isinstance(wake_at, float | int) else wake_at
        print(
            f"{printable(saga_id):<24} {printable(name):<16} {printable(row_status):<13} "
            f"{printable(seq):>4} {'v' + printable(saga_version):>4}  {printable(detail or '')}"
        )
    return 0


def _event_text(event: object, codec: Any = None) -> str:
    """A history entry as sorted JSON, or its raw text when it is not JSON."""
    event = opened(event, codec)
    if event == ENCRYPTED or (isinstance(event, str) and event.startswith("<undecodable")):
        return str(event)
    try:
        if isinstance(event, str | bytes):
            return json.dumps(json.loads(event), sort_keys=True)
    except (ValueError, RecursionError):
        pass
    return f"<unreadable: {printable(event)}>"


def show(database: str, saga_id: str, *, schema: str, codec: Any = None) -> int:
    version_column = _version_column(database, schema=schema)
    rows = _query(
        database,
        f"SELECT saga_name, status, input, snapshot, error, {version_column} FROM sagas "
        "WHERE saga_id = ?",
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
    name, status, input_text, snapshot, error, saga_version = rows[0]
    print(
        f"saga {printable(saga_id)} ({printable(name)}): {printable(status)}"
        + (f"  [{printable(error)}]" if error else "")
    )
    print(f"version: {printable(saga_version)}")
    print(f"input: {printable(opened(input_text, codec))}")
    print(f"snapshot: {printable(opened(snapshot, codec))}")
    for seq, event in history:
        print(f"  #{printable(seq):<4} {printable(_event_text(event, codec))}")
    for kind, item, key in inbox:
        print(
            f"  inbox: {printable(kind)} {item!r}"  # repr escapes
            + (f" key={printable(key)}" if key else "")
        )
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
        print(f"{printable(runtime_id):<24} {printable(name):<28} {lease:>10} {owned:>7}")
    return 0


def check_replay(database: str, specs: Sequence[str], *, schema: str, codec: Any = None) -> int:
    """Print one line per saga that would not replay; 1 if there is any, else 0."""
    from ._check_replay import check_replay as run

    report = run(database, specs, schema=schema, codec=codec)
    for problem in report:
        print(printable(str(problem)))
    skipped = "".join(
        f"; {count} {printable(name)} saga{'s' * (count != 1)} skipped (no definition given)"
        for name, count in sorted(report.skipped.items())
    )
    print(
        f"{report.checked} unfinished saga{'s' * (report.checked != 1)} checked, "
        f"{len(report)} would not replay{skipped}",
        file=sys.stderr,
    )
    return 1 if report else 0


def prune(
    database: str,
    older_than: str,
    statuses: Sequence[str],
    *,
    dry_run: bool,
    schema: str,
    codec: Any = None,
) -> int:
    from ._prune_command import parse_duration, prune_database
    from ._retention import DEFAULT_STATUSES, check_statuses

    try:
        seconds = parse_duration(older_than)
        values = check_statuses(statuses or DEFAULT_STATUSES)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if database.startswith(_POSTGRES):
        from .postgres._schema import SCHEMA_VERSION
    else:
        from .sqlite._schema import SCHEMA_VERSION
    # Read first: refuses a path that is no Sagaloop database before anything is written.
    version = _query(database, "SELECT max(version) FROM schema_version", schema=schema)[0][0]
    if database.startswith(_POSTGRES) and version != SCHEMA_VERSION:
        raise SystemExit(
            f"{without_password(database)} is at schema version {version}, this Sagaloop's "
            f"is {SCHEMA_VERSION}: start a runtime of this version on it first (it migrates)"
        )
    try:
        count = prune_database(
            database, seconds, values, dry_run=dry_run, schema=schema, codec=codec
        )
    except Exception as exc:  # the database failed under us: say so, as a command does
        raise SystemExit(f"prune failed: {printable(exc)}") from None
    verb = "would prune" if dry_run else "pruned"
    print(
        f"{verb} {count} saga{'' if count == 1 else 's'} ({', '.join(values)}) "
        f"that ended over {older_than} ago"
    )
    return 0


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return min(value, _MAX_LIMIT)  # more than any table holds: all of them


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list sagas")
    listing.add_argument("database")
    listing.add_argument("--status", choices=[status.value for status in SagaStatus])
    listing.add_argument("--saga")
    listing.add_argument("--limit", type=positive_int, default=100)
    listing.add_argument("--version", type=positive_int, help="definition version")
    showing = commands.add_parser("show", help="one saga: snapshot, history, inbox")
    showing.add_argument("database")
    showing.add_argument("saga_id")
    listing_runtimes = commands.add_parser(
        "runtimes", help="PostgreSQL: the runtimes, their leases and the sagas each owns"
    )
    listing_runtimes.add_argument("database")
    replaying = commands.add_parser(
        "check-replay",
        help="would the unfinished sagas replay on these definitions? (exit 1 if not)",
    )
    replaying.add_argument("database")
    replaying.add_argument(
        "--sagas",
        action="append",
        required=True,
        metavar="MODULE:ATTRIBUTE",
        help="a Saga or a list of them (repeatable)",
    )
    pruning = commands.add_parser(
        "prune", help="delete ended sagas older than a window (safe beside a runtime)"
    )
    pruning.add_argument("database")
    pruning.add_argument("--older-than", required=True, metavar="AGE", help="30d, 12h, 90m, 45s")
    pruning.add_argument(
        "--status",
        action="append",
        choices=["completed", "compensated", "failed"],
        help="repeatable; completed and compensated by default",
    )
    pruning.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    for command in (listing, showing, listing_runtimes, replaying, pruning):
        command.add_argument("--schema", default="sagaloop", help="PostgreSQL schema")
    for command in (listing, showing, replaying, pruning):
        command.add_argument(
            "--key-file", help="decode values a payload codec wrote (runtime.codecs.load_key_file)"
        )
    args = parser.parse_args(argv)
    codec = None
    if getattr(args, "key_file", None):
        from .codecs import load_key_file

        try:
            codec = load_key_file(args.key_file)
        except (ValueError, ImportError) as exc:
            raise SystemExit(printable(exc)) from None
    if args.database.startswith(_POSTGRES):
        try:
            from .postgres._schema import check_schema_name
        except ImportError:
            raise SystemExit(
                "reading PostgreSQL needs asyncpg: pip install 'sagaloop[postgres]'"
            ) from None
        try:
            check_schema_name(args.schema)
        except ValueError as exc:
            parser.error(str(exc))
    if args.command == "list":
        return list_sagas(
            args.database,
            args.status,
            args.saga,
            args.limit,
            schema=args.schema,
            version=args.version,
            codec=codec,
        )
    if args.command == "runtimes":
        return runtimes(args.database, schema=args.schema)
    if args.command == "prune":
        return prune(
            args.database,
            args.older_than,
            args.status or (),
            dry_run=args.dry_run,
            schema=args.schema,
            codec=codec,
        )
    if args.command == "check-replay":
        return check_replay(args.database, args.sagas, schema=args.schema, codec=codec)
    return show(args.database, args.saga_id, schema=args.schema, codec=codec)


if __name__ == "__main__":
    raise SystemExit(main())
