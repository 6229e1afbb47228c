from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from runtime import Runtime
from runtime.__main__ import main, printable
from saga import NonRetryableError, Saga, SagaStatus, Step, StepContext

from .long_running_helpers import until_status


async def ok(ctx: StepContext, value: int) -> int:
    return value * 2


async def refuse(ctx: StepContext, value: int) -> int:
    raise NonRetryableError("no")


async def undo(ctx: StepContext, value: int, result: object) -> None:
    return None


SAGA = Saga("cli", [Step("double", ok, compensate=undo), Step("refuse", refuse)], input_type=int)


async def test_list_and_show_read_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "cli.db"
    async with Runtime(db, sagas=[SAGA]) as rt:
        for saga_id in ("a", "b"):
            handle = await rt.spawn(SAGA, 21, saga_id=saga_id)
            with pytest.raises(Exception, match="compensated"):
                await handle.result(timeout=10)
    assert main(["list", str(db), "--status", "compensated"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in listing[1:]] == [
        ["a", "cli", "compensated"],
        ["b", "cli", "compensated"],
    ]
    assert main(["show", str(db), "a"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("saga a (cli): compensated")
    assert '"event": "compensation_succeeded"' in shown
    assert main(["show", str(db), "missing"]) == 1
    assert "no saga with id 'missing'" in capsys.readouterr().err


async def test_the_cli_reads_beside_a_running_runtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "cli.db"
    async with Runtime(db, sagas=[SAGA]) as rt:
        with pytest.raises(Exception, match="compensated"):
            await (await rt.spawn(SAGA, 1, saga_id="a")).result(timeout=10)
        assert await anyio.to_thread.run_sync(main, ["list", str(db)]) == 0
        assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["a", "cli", "compensated"]
        # The CLI closing its connection left the runtime's locks and WAL alone.
        with pytest.raises(Exception, match="compensated"):
            await (await rt.spawn(SAGA, 2, saga_id="b")).result(timeout=10)
    assert main(["list", str(db), "--status", "compensated"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_a_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no such database"):
        main(["list", str(tmp_path / "nope.db")])


async def test_list_show_and_runtimes_read_a_postgresql_database(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # main() runs its own event loop: call it from a worker thread.
    def cli(*args: str) -> int:
        return main(list(args))

    async with Runtime(pg_dsn, sagas=[SAGA]) as rt:
        handle = await rt.spawn(SAGA, 21, saga_id="a")
        with pytest.raises(Exception, match="compensated"):
            await handle.result(timeout=10)
        assert await anyio.to_thread.run_sync(cli, "runtimes", pg_dsn) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 2  # the header and this runtime, its lease running
        assert lines[1].split()[0] == rt.store.runtime_id  # type: ignore[attr-defined]
        assert lines[1].split()[-1] == "0"  # a compensated saga has no owner
    assert await anyio.to_thread.run_sync(cli, "list", pg_dsn, "--status", "compensated") == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in listing[1:]] == [["a", "cli", "compensated"]]
    assert await anyio.to_thread.run_sync(cli, "show", pg_dsn, "a") == 0
    assert '"event": "compensation_succeeded"' in capsys.readouterr().out
    assert await anyio.to_thread.run_sync(cli, "runtimes", pg_dsn) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1  # it left cleanly: no runtime


def test_runtimes_on_a_sqlite_file_says_there_is_only_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runtimes", str(tmp_path / "any.db")]) == 1
    assert "one SQLite file serves one runtime" in capsys.readouterr().err


async def compensated_database(db: Path, *saga_ids: str) -> Path:
    async with Runtime(db, sagas=[SAGA]) as rt:
        for saga_id in saga_ids:
            with pytest.raises(Exception, match="compensated"):
                await (await rt.spawn(SAGA, 1, saga_id=saga_id)).result(timeout=10)
    return db


def edit(db: Path, sql: str, params: tuple[object, ...] = ()) -> None:
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


def files_in(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


@pytest.mark.parametrize("name", ["odd#name%20.db", "odd?mode=rwc.db"])
async def test_a_path_with_uri_characters_is_read_as_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    db = await compensated_database(tmp_path / name, "a")
    assert main(["list", str(db)]) == 0
    assert [line.split()[:3] for line in capsys.readouterr().out.splitlines()[1:]] == [
        ["a", "cli", "compensated"]
    ]
    # Not `odd`, the path before `#` or `?`; a WAL reader may leave the file's -wal and -shm.
    assert {path.name for path in files_in(tmp_path)} <= {name, f"{name}-wal", f"{name}-shm"}


@pytest.mark.parametrize("name", ["x?mode=rwc.db", "x#y.db", "x?mode=rwc#.db"])
def test_a_missing_path_that_looks_like_a_uri_creates_nothing(tmp_path: Path, name: str) -> None:
    with pytest.raises(SystemExit, match="no such database"):
        main(["list", str(tmp_path / name)])
    assert files_in(tmp_path) == set()


def not_a_database(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.db"
    if kind == "text":
        path.write_text("not a database, just notes\n" * 100)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "another-application":
        edit(path, "CREATE TABLE accounts (id INTEGER PRIMARY KEY)")
    elif kind == "folder":
        path.mkdir()
    else:
        path = Path("/dev/null")
    return path


@pytest.mark.parametrize("kind", ["text", "empty", "another-application", "folder", "dev-null"])
def test_what_is_not_a_sagaloop_database_is_refused_untouched(tmp_path: Path, kind: str) -> None:
    path = not_a_database(tmp_path, kind)
    before = path.read_bytes() if path.is_file() else None
    listing = files_in(tmp_path)
    for command in (["list", str(path)], ["show", str(path), "a"]):
        with pytest.raises(SystemExit, match="is not a Sagaloop database") as raised:
            main(command)
        assert str(raised.value).startswith(str(path))
    assert (path.read_bytes() if path.is_file() else None) == before
    assert files_in(tmp_path) == listing


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://ops:s3cret@127.0.0.1:1/x",
        "postgresql://ops@127.0.0.1:1/x?password=s3cret",
        "postgres://ops:s3cret@127.0.0.1:notaport/x",
    ],
)
@pytest.mark.parametrize("command", ["list", "runtimes"])
def test_an_unreachable_postgresql_is_a_clear_error_without_the_password(
    dsn: str, command: str
) -> None:
    # No server: nothing listens on port 1.
    with pytest.raises(SystemExit) as raised:
        main([command, dsn])
    message = str(raised.value)
    assert message.startswith("cannot reach PostgreSQL at postgres")
    assert "ops@127.0.0.1:" in message
    assert "s3cret" not in message
    assert "\n" not in message


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What argparse prints when `argv` is refused as a usage error (exit code 2)."""
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    return capsys.readouterr().err


def test_a_bad_schema_is_an_argument_error(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["list", "postgresql://127.0.0.1:1/x", "--schema", 'x"; DROP'], capsys)
    assert "schema must be a lowercase identifier" in err


async def test_show_prints_unreadable_history_escaped_and_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = await compensated_database(tmp_path / "cli.db", "a")
    edit(db, "UPDATE history SET event = ? WHERE saga_id = 'a' AND seq = 2", ('{"event": ',))
    edit(db, "UPDATE history SET event = ? WHERE saga_id = 'a' AND seq = 3", ("\x1b[2J\n",))
    edit(db, "UPDATE sagas SET input = ?, snapshot = ? WHERE saga_id = 'a'", ("1\n2", "{\x1b[31m"))
    before = db.read_bytes()
    assert main(["show", str(db), "a"]) == 0
    shown = capsys.readouterr().out
    lines = shown.splitlines()
    assert "input: 1\\n2" in lines
    assert "snapshot: {\\x1b[31m" in lines
    assert '  #2    <unreadable: {"event": >' in lines
    assert "  #3    <unreadable: \\x1b[2J\\n>" in lines
    assert '"event": "compensation_succeeded"' in shown  # the entries after it
    assert "\x1b" not in shown
    assert db.read_bytes() == before


def test_a_bad_status_is_an_argument_error_naming_the_valid_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = usage_error(["list", str(tmp_path / "any.db"), "--status", "bogus"], capsys)
    assert "invalid choice: 'bogus'" in err
    assert all(f"'{status.value}'" in err for status in SagaStatus)


@pytest.mark.parametrize("limit", ["-1", "0", "ten", ""])
def test_a_limit_that_is_not_positive_is_an_argument_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], limit: str
) -> None:
    err = usage_error(["list", str(tmp_path / "any.db"), "--limit", limit], capsys)
    assert "argument --limit: must be a positive integer" in err


async def test_a_huge_limit_lists_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = await compensated_database(tmp_path / "cli.db", "a")
    assert main(["list", str(db), "--limit", str(10**30)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_printable_escapes_what_a_terminal_would_act_on() -> None:
    assert printable("order-42 café") == "order-42 café"
    assert printable("evil\n\x1b[31mred\t") == "evil\\n\\x1b[31mred\\t"
    assert printable("\u202eexe.txt") == "\\u202eexe.txt"  # right-to-left override
    lone = printable("a\ud800b")
    assert lone == "a\\ud800b"
    lone.encode("utf-8")  # printing it cannot raise UnicodeEncodeError
    assert printable(b"\x1b") == "b'\\x1b'"
    assert printable(7) == "7"


EVIL = "evil\n\x1b[31mred"
COLUMNS = "saga_name, status, seq, input, snapshot, wake_at, owner, epoch, error, created_at, " + (
    "updated_at, runnable, waiting_for"
)


async def test_text_from_the_database_is_printed_escaped_one_saga_a_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = await compensated_database(tmp_path / "cli.db", "a")
    copy = (
        f"INSERT INTO sagas (saga_id, {COLUMNS}) SELECT ?, {COLUMNS} FROM sagas WHERE saga_id='a'"
    )
    edit(db, copy, (EVIL,))
    edit(
        db,
        "UPDATE sagas SET saga_name = ?, error = ? WHERE saga_id = ?",
        ("c\tli", "\x1b[0m!", EVIL),
    )
    # Not UTF-8 (the bytes of a lone surrogate), and a waiting_for with a newline.
    edit(db, copy.replace("?", "CAST(X'62adeda080' AS TEXT)", 1))
    edit(db, "UPDATE sagas SET waiting_for = ? WHERE saga_id = 'a'", ("go\nnow",))
    edit(
        db,
        "INSERT INTO inbox (saga_id, kind, name, payload, key, at) VALUES (?, ?, ?, ?, ?, 0)",
        (EVIL, "signal", "go\x1b[2J", "null", "k\ney"),
    )
    assert main(["list", str(db)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 4  # the header and three sagas
    assert "\x1b" not in out
    *row, _seq, version, detail = lines[1].split()
    assert version == "v1"
    assert [*row, detail] == ["a", "cli", "compensated", "go\\nnow"]
    assert lines[2].split()[:2] == ["b\\xad\\xed\\xa0\\x80", "cli"]
    *row, _seq, _version, detail = lines[3].split()
    assert [*row, detail] == ["evil\\n\\x1b[31mred", "c\\tli", "compensated", "\\x1b[0m!"]

    assert main(["show", str(db), EVIL]) == 0
    shown = capsys.readouterr().out
    assert "\x1b" not in shown
    assert shown.startswith("saga evil\\n\\x1b[31mred (c\\tli): compensated  [\\x1b[0m!]\n")
    assert "  inbox: signal 'go\\x1b[2J' key=k\\ney" in shown.splitlines()


HANG_ENTERED: dict[str, anyio.Event] = {}


async def hang(ctx: StepContext, value: int) -> int:
    HANG_ENTERED[ctx.saga_id].set()
    await anyio.sleep_forever()
    return value


HANGS = Saga("hangs", [Step("hang", hang)], input_type=int)


async def test_list_gives_the_reason_a_saga_was_suspended(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "cli.db"
    HANG_ENTERED["s"] = anyio.Event()
    async with Runtime(db, sagas=[HANGS]) as rt:
        await rt.spawn(HANGS, 1, saga_id="s")
        with anyio.fail_after(10):
            await HANG_ENTERED["s"].wait()
    # The step was interrupted; with no recovery allowed the next runtime suspends the saga.
    async with Runtime(db, sagas=[HANGS], max_recoveries=0) as rt:
        reason = (await until_status(rt, "s", SagaStatus.SUSPENDED)).suspended_reason
    assert reason
    assert main(["list", str(db), "--status", "suspended"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[1].split()[:3] == ["s", "hangs", "suspended"]
    assert lines[1].endswith(f"  {printable(reason)}")
