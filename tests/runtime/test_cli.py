from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from runtime import Runtime
from runtime.__main__ import main
from saga import NonRetryableError, Saga, Step, StepContext


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
